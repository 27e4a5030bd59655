"""SAR-safe augmentation of training images: the one implementation that corpus and source datasets share.

* **Geometry** (random resized crop of 80-100% of the area, horizontal and vertical flips, 90-degree rotations) is
  safe for a SAR chip whose caption says *what* is there, and false for one that says *where*: "a ship in the upper
  left" is wrong after a flip. Callers pass ``geometric=False`` when a caption of the pair carries a position
  (:data:`POSITIONAL_STYLES`). Flips and rotations also cover the arbitrary look direction of SAR targets (MSTAR
  chips are collected over all azimuths).
* **Intensity** (``db_jitter``): a random gain of up to ``db_jitter`` dB on the image, i.e. a multiplication of the
  magnitude values. Speckle is multiplicative, so a gain keeps its statistics (a contrast or gamma change would not);
  values are clipped back to [0, 1]. It models calibration and incidence-angle differences between acquisitions.

Every draw comes from the ``random.Random`` passed in, in a fixed order, so a seeded item is the same item whatever
the worker (see :mod:`lightning_sarclip.data.samplers`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

__all__ = ["POSITIONAL_STYLES", "ChipAugment"]

#: caption styles that name positions in the image (see :mod:`lightning_sarclip.data.captions`)
POSITIONAL_STYLES = frozenset({"absolute", "relative"})


@dataclass(frozen=True)
class ChipAugment:
    """Random augmentation of a ``(C, H, W)`` image in [0, 1] (see the module docstring).

    Args:
        crop_scale: range of the kept area fraction of the random resized crop (``(1, 1)``: no crop).
        flips: random horizontal and vertical flips (``True``), ``"horizontal"`` only (a flip across the range
            direction keeps a radar shadow on its side of the target), or ``False``.
        rot90: random rotation by a multiple of 90 degrees.
        db_jitter: maximum gain in dB (0: none); drawn uniformly in ``[-db_jitter, db_jitter]``.
    """

    crop_scale: tuple[float, float] = (0.8, 1.0)
    flips: bool | str = True
    rot90: bool = True
    db_jitter: float = 0.0

    def __post_init__(self) -> None:
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"ChipAugment crop_scale: expected 0 < low <= high <= 1, got {self.crop_scale}")
        if self.flips not in (True, False, "horizontal"):
            raise ValueError(f"ChipAugment flips: expected true, false or 'horizontal', got {self.flips!r}")
        if self.db_jitter < 0:
            raise ValueError(f"ChipAugment db_jitter: expected a gain in dB >= 0, got {self.db_jitter}")

    def __call__(self, image: np.ndarray, rng: random.Random, geometric: bool = True) -> np.ndarray:
        if geometric:
            image = self._geometry(image, rng)
        if self.db_jitter > 0:
            gain = 10.0 ** (rng.uniform(-self.db_jitter, self.db_jitter) / 20.0)  # dB of power: 20 log10 of magnitude
            image = np.clip(image * np.float32(gain), 0.0, 1.0)
        return np.ascontiguousarray(image)

    def _geometry(self, image: np.ndarray, rng: random.Random) -> np.ndarray:
        _, h, w = image.shape
        area = rng.uniform(*self.crop_scale) * h * w
        side_h = min(h, max(1, round((area * h / w) ** 0.5)))
        side_w = min(w, max(1, round((area * w / h) ** 0.5)))
        top, left = rng.randint(0, h - side_h), rng.randint(0, w - side_w)
        image = image[:, top : top + side_h, left : left + side_w]
        if self.flips:
            if rng.random() < 0.5:
                image = image[:, :, ::-1]
            if self.flips is True and rng.random() < 0.5:
                image = image[:, ::-1, :]
        if self.rot90:
            image = np.rot90(image, k=rng.randint(0, 3), axes=(1, 2))
        return image

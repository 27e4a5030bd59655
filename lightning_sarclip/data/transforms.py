"""From a :class:`~lightning_sarclip.data.io.SARImage` to model input: ``float32 (C, H, W)`` in [0, 1].

Each source chooses a conversion policy (its data card says which and why); users can override it per source.
The three policies cover what SAR/RS CLIP codebases do:

* :class:`DBWindow` - to decibels, then a fixed window mapped linearly to [0, 1] (CAESAR-SARCLIP's convention,
  comparable across images, keeps the VV/VH ratio);
* :class:`PercentileStretch` - per image and channel, the ``low``..``high`` percentiles to [0, 1] (robust
  min-max, close to SARVLM's per-image min-max stretch);
* :class:`IntegerScale` - 8/16-bit display images divided by their type's maximum (already-scaled chips).

Complex SLC data become amplitude first. :func:`to_model_channels` then picks or maps channels to ``in_chans``
and :func:`resize_square` brings the image to the model's size. The model side (channel replication to RGB and
normalisation) is :class:`~lightning_sarclip.models.sar_stem.SARInputAdapter`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lightning_sarclip.data.io import SARImage

_EPS = 1e-10


def to_db(image: SARImage) -> np.ndarray:
    """Decibels of an amplitude, intensity, complex or dB image (float32, ``(H, W, C)``)."""
    data = image.data
    if image.kind == "db":
        return data.astype(np.float32, copy=False)
    if image.kind == "complex":
        return (20 * np.log10(np.abs(data) + _EPS)).astype(np.float32)
    if image.kind == "amplitude":
        return (20 * np.log10(np.abs(data.astype(np.float32)) + _EPS)).astype(np.float32)
    if image.kind == "intensity":
        return (10 * np.log10(np.maximum(data.astype(np.float32), 0) + _EPS)).astype(np.float32)
    raise ValueError(
        f"DBWindow: cannot convert {image.kind!r} pixels to dB; use IntegerScale for 8/16-bit images or "
        "PercentileStretch for floats of unknown meaning"
    )


@dataclass(frozen=True)
class DBWindow:
    """``[low_db, high_db]`` -> [0, 1], clipped."""

    low_db: float = -25.0
    high_db: float = 5.0

    def __call__(self, image: SARImage) -> np.ndarray:
        db = to_db(image)
        unit = (db - self.low_db) / (self.high_db - self.low_db)
        return np.clip(unit, 0.0, 1.0).transpose(2, 0, 1).astype(np.float32)


@dataclass(frozen=True)
class PercentileStretch:
    """Per channel: the ``low``..``high`` percentiles (of dB for radiometric data, of raw values otherwise) to [0, 1]."""

    low: float = 1.0
    high: float = 99.0
    in_db: bool = True

    def __call__(self, image: SARImage) -> np.ndarray:
        if self.in_db and image.kind in ("amplitude", "intensity", "db", "complex"):
            data = to_db(image)
        else:
            data = np.abs(image.data).astype(np.float32) if image.kind == "complex" else image.data.astype(np.float32)
        flat = data.reshape(-1, data.shape[2])
        lo = np.percentile(flat, self.low, axis=0)
        hi = np.percentile(flat, self.high, axis=0)
        scale = np.where(hi > lo, hi - lo, 1.0)
        return np.clip((data - lo) / scale, 0.0, 1.0).transpose(2, 0, 1).astype(np.float32)


@dataclass(frozen=True)
class IntegerScale:
    """uint8 / 16 by the type's maximum; floats already in [0, 1] are clipped (for pre-scaled rasters)."""

    def __call__(self, image: SARImage) -> np.ndarray:
        data = image.data
        if image.kind == "uint8":
            out = data.astype(np.float32) / 255.0
        elif image.kind == "uint16":
            out = data.astype(np.float32) / 65535.0
        elif image.kind == "float":
            out = np.clip(data.astype(np.float32), 0.0, 1.0)
        else:
            raise ValueError(f"IntegerScale: expected 8/16-bit pixels, got {image.kind!r}; use DBWindow")
        return out.transpose(2, 0, 1)


POLICIES = {"db_window": DBWindow, "percentile": PercentileStretch, "integer": IntegerScale}


def build_policy(spec: str | dict | None, default=None):
    """A policy from a name (``db_window``), a dict (``{"name": "db_window", "low_db": -30}``) or ``None``."""
    if spec is None:
        return default if default is not None else IntegerScale()
    if callable(spec):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in POLICIES:
        raise ValueError(f"conversion policy: expected one of {sorted(POLICIES)}, got {name!r}")
    return POLICIES[name](**spec)


def to_model_channels(array: np.ndarray, in_chans: int, name: str = "image") -> np.ndarray:
    """Bring ``(C, H, W)`` to ``in_chans`` channels: a single-pol model takes the first (co-pol) channel,
    3 equal display channels collapse to 1; a dual-pol model needs two channels."""
    channels = array.shape[0]
    if channels == in_chans:
        return array
    if in_chans == 1:
        return array[:1]
    if in_chans == 2 and channels > 2:
        return array[:2]
    raise ValueError(f"{name}: the model takes {in_chans} channels but the image has {channels}")


def resize_square(array: np.ndarray, size: int) -> torch.Tensor:
    """``(C, H, W)`` -> ``(C, size, size)`` float tensor (bilinear with antialiasing; aspect ratio not kept,
    as chips are near-square and detection images are captioned as a whole)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if tensor.shape[-2:] == (size, size):
        return tensor
    return F.interpolate(tensor[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]

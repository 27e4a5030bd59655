"""From a :class:`~lightning_sarclip.data.io.SARImage` to model input: ``float32 (C, H, W)`` in [0, 1].

Each source chooses a conversion policy (its data card says which and why); users can override it per source.
The three policies cover what SAR/RS CLIP codebases do:

* :class:`DBWindow` - to decibels, then a fixed window mapped linearly to [0, 1] (CAESAR-SARCLIP's convention,
  comparable across images, keeps the VV/VH ratio);
* :class:`PercentileStretch` - per image and channel, the ``low``..``high`` percentiles to [0, 1] (robust
  min-max, close to SARVLM's per-image min-max stretch);
* :class:`IntegerScale` - 8/16-bit display images divided by their type's maximum (already-scaled chips).

Every policy takes ``center_crop``: keep only the central part of the image before converting it (``64``: the
central 64 x 64 pixels, or the whole side where the image is smaller; ``0.5``: the central half of each side).
Target chips centre their target (MSTAR's 128 x 128 chips hold a vehicle of about 40 x 40 pixels in clutter): the
crop keeps the target at full resolution where a resize to the model's size would halve it, and drops clutter
that differs between collections. Being part of the policy, it reaches every path that reads the source
(training, ``evaluate``, ``predict``, ``embed``, ``build-corpus``) with the same setting.

Every policy takes ``nonfinite``: what to do with NaN/inf pixel values (:data:`NONFINITE`). The default ``"error"``
raises :class:`~lightning_sarclip.data.image.SARReadError` naming the file and the count; ``"zero"`` replaces them
with 0 before the conversion and adds the count to ``image.meta["nonfinite_replaced"]`` (``build-corpus`` sums it).
A policy never returns a non-finite value.

Complex SLC data become amplitude first. :func:`to_model_channels` then picks or maps channels to ``in_chans``
and :func:`resize_square` brings the image to the model's size. Three channels mean two different things: a
polarimetric stack (HH, HV, VV ...) gives a single-pol model its first, co-pol channel, while a colour image (an
optical RS picture, an RGB JPEG: the reader marks it, :func:`~lightning_sarclip.data.image.is_colour`) gives it
its luminance (ITU-R BT.601, as torchvision's ``rgb_to_grayscale``), and a dual-pol model that luminance twice
(as a single-pol image in a dual-pol run). :func:`model_array` is policy plus channels, with that choice made
from the image itself: every path that reads images uses it. The model side (channel replication to RGB and
normalisation) is :class:`~lightning_sarclip.models.sar_stem.SARInputAdapter`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lightning_sarclip.data.image import is_colour
from lightning_sarclip.data.io import SARImage, SARReadError

_EPS = 1e-10
#: values of every policy's ``nonfinite`` setting
NONFINITE = ("error", "zero")
#: values of ``IntegerScale(out_of_range=...)`` for float pixels outside [0, 1]
OUT_OF_RANGE = ("error", "clip")


def _check_choice(policy: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{policy}: {name} must be one of {choices}, got {value!r}")


def finite_image(image: SARImage, nonfinite: str = "error") -> SARImage:
    """``image`` with no NaN/inf values: refused (``"error"``) or replaced by 0 and counted (``"zero"``)."""
    data = image.data
    if data.dtype.kind not in "fc":
        return image  # integers are always finite
    bad = ~np.isfinite(data)
    count = int(np.count_nonzero(bad))
    if count == 0:
        return image
    if nonfinite != "zero":
        raise SARReadError(
            f"{image.name}: {count} of {data.size} pixel values are NaN or infinite; the conversion policy refuses "
            "them (set the policy's nonfinite: zero to replace them with 0 and count them)"
        )
    image.meta["nonfinite_replaced"] = int(image.meta.get("nonfinite_replaced", 0)) + count
    return SARImage(np.where(bad, np.zeros((), data.dtype), data), image.kind, image.meta, image.name)


def _check_center_crop(policy: str, value: int | float | None) -> None:
    if value is None:
        return
    ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 1) or (
        isinstance(value, float) and 0.0 < value <= 1.0)
    if not ok:
        raise ValueError(f"{policy}: center_crop must be null, a side in pixels >= 1 (an integer) or a fraction of "
                         f"each side in (0, 1] (a float), got {value!r}")


def center_cropped(image: SARImage, value: int | float | None) -> SARImage:
    """``image`` cut to its central ``value`` x ``value`` pixels (a fraction: of each side); never padded."""
    if value is None:
        return image
    height, width = image.data.shape[:2]
    if isinstance(value, float):
        keep_h, keep_w = max(1, round(height * value)), max(1, round(width * value))
    else:
        keep_h, keep_w = min(value, height), min(value, width)
    top, left = (height - keep_h) // 2, (width - keep_w) // 2
    if (keep_h, keep_w) == (height, width):
        return image
    return SARImage(image.data[top:top + keep_h, left:left + keep_w], image.kind, image.meta, image.name)


def _finite_output(out: np.ndarray, image: SARImage, policy: str) -> np.ndarray:
    """The last guard: a conversion that produced NaN/inf from finite input (overflow) is an error, not an image."""
    if not np.isfinite(out).all():
        raise SARReadError(f"{image.name}: {policy} produced {int(np.count_nonzero(~np.isfinite(out)))} non-finite "
                           f"values from finite {image.kind!r} pixels (overflow); choose another policy")
    return out


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
    raise SARReadError(
        f"{image.name}: DBWindow: cannot convert {image.kind!r} pixels to dB; use IntegerScale for 8/16-bit images or "
        "PercentileStretch for floats of unknown meaning"
    )


@dataclass(frozen=True)
class DBWindow:
    """``[low_db, high_db]`` -> [0, 1], clipped."""

    low_db: float = -25.0
    high_db: float = 5.0
    nonfinite: str = "error"
    center_crop: int | float | None = None

    def __post_init__(self) -> None:
        _check_choice("DBWindow", "nonfinite", self.nonfinite, NONFINITE)
        _check_center_crop("DBWindow", self.center_crop)
        if not (math.isfinite(self.low_db) and math.isfinite(self.high_db) and self.low_db < self.high_db):
            raise ValueError(f"DBWindow: expected finite low_db < high_db, got {self.low_db}, {self.high_db}")

    def __call__(self, image: SARImage) -> np.ndarray:
        image = finite_image(center_cropped(image, self.center_crop), self.nonfinite)
        db = to_db(image)
        unit = (db - self.low_db) / (self.high_db - self.low_db)
        return _finite_output(np.clip(unit, 0.0, 1.0).transpose(2, 0, 1).astype(np.float32), image, "DBWindow")


@dataclass(frozen=True)
class PercentileStretch:
    """Per channel: the ``low``..``high`` percentiles (of dB for radiometric data, of raw values otherwise) to [0, 1]."""

    low: float = 1.0
    high: float = 99.0
    in_db: bool = True
    nonfinite: str = "error"
    center_crop: int | float | None = None

    def __post_init__(self) -> None:
        _check_choice("PercentileStretch", "nonfinite", self.nonfinite, NONFINITE)
        _check_center_crop("PercentileStretch", self.center_crop)
        if not 0.0 <= self.low < self.high <= 100.0:
            raise ValueError(f"PercentileStretch: expected 0 <= low < high <= 100, got {self.low}, {self.high}")

    def __call__(self, image: SARImage) -> np.ndarray:
        image = finite_image(center_cropped(image, self.center_crop), self.nonfinite)
        if self.in_db and image.kind in ("amplitude", "intensity", "db", "complex"):
            data = to_db(image)
        else:
            data = np.abs(image.data).astype(np.float32) if image.kind == "complex" else image.data.astype(np.float32)
        flat = data.reshape(-1, data.shape[2])
        lo = np.percentile(flat, self.low, axis=0)
        hi = np.percentile(flat, self.high, axis=0)
        scale = np.where(hi > lo, hi - lo, 1.0)
        out = np.clip((data - lo) / scale, 0.0, 1.0).transpose(2, 0, 1).astype(np.float32)
        return _finite_output(out, image, "PercentileStretch")


@dataclass(frozen=True)
class IntegerScale:
    """Display integers by their type's maximum; floats that are already in [0, 1] as they are.

    * ``uint8``/``uint16`` (and other unsigned integers) are divided by the type's maximum (255, 65535 ...).
    * Signed integers (``int16`` rasters ...) are divided by their type's maximum (32767 ...) when no value is
      negative; a negative value is an error (signed data is not a display image: use ``percentile``).
    * Floats must lie in [0, 1] (pre-scaled rasters). Values outside are an error by default, because clipping
      amplitudes of 0-500 to [0, 1] gives a white image; ``out_of_range: clip`` clips them on purpose.
    * Complex data is refused (use ``db_window``).
    """

    nonfinite: str = "error"
    out_of_range: str = "error"
    center_crop: int | float | None = None

    def __post_init__(self) -> None:
        _check_choice("IntegerScale", "nonfinite", self.nonfinite, NONFINITE)
        _check_center_crop("IntegerScale", self.center_crop)
        _check_choice("IntegerScale", "out_of_range", self.out_of_range, OUT_OF_RANGE)

    def __call__(self, image: SARImage) -> np.ndarray:
        image = finite_image(center_cropped(image, self.center_crop), self.nonfinite)
        data = image.data
        if image.kind == "complex" or data.dtype.kind == "c":
            raise SARReadError(f"{image.name}: IntegerScale: expected 8/16-bit or [0, 1] pixels, got complex "
                               "samples; use the db_window policy")
        if data.dtype.kind in "ui":
            if data.dtype.kind == "i" and data.size and int(data.min()) < 0:
                raise SARReadError(
                    f"{image.name}: IntegerScale: signed {data.dtype} pixels with negative values (min "
                    f"{int(data.min())}) are not display integers; use the percentile or db_window policy"
                )
            out = data.astype(np.float32) / float(np.iinfo(data.dtype).max)
        else:
            out = data.astype(np.float32)
            if out.size and (float(out.min()) < 0.0 or float(out.max()) > 1.0):
                if self.out_of_range != "clip":
                    outside = int(np.count_nonzero((out < 0.0) | (out > 1.0)))
                    raise SARReadError(
                        f"{image.name}: IntegerScale: {outside} of {out.size} float pixel values lie outside [0, 1] "
                        f"(min {float(out.min()):.4g}, max {float(out.max()):.4g}); clipping would saturate them. "
                        "Use the percentile or db_window policy for amplitudes/intensities, or set "
                        "out_of_range: clip"
                    )
                out = np.clip(out, 0.0, 1.0)
        return _finite_output(out.transpose(2, 0, 1), image, "IntegerScale")


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


#: ITU-R BT.601 luma weights of R, G, B (what torchvision's ``rgb_to_grayscale`` and Pillow's ``convert("L")`` use)
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def luminance(array: np.ndarray) -> np.ndarray:
    """``(3, H, W)`` R, G, B in [0, 1] -> ``(1, H, W)`` luminance (float32)."""
    red, green, blue = LUMA_WEIGHTS
    return (red * array[0] + green * array[1] + blue * array[2])[None].astype(np.float32)


def to_model_channels(array: np.ndarray, in_chans: int, name: str = "image", colour: bool = False) -> np.ndarray:
    """Bring ``(C, H, W)`` to ``in_chans`` channels.

    A colour image (``colour``: its reader said R, G, B) becomes its luminance for a one-channel model, and that
    luminance twice for a dual-pol one; a 3-channel model takes it as it is. Otherwise the channels are bands: a
    single-pol model takes the first (co-pol) one, a dual-pol model the first two.
    """
    channels = array.shape[0]
    if channels == in_chans:
        return array
    if colour and channels == 3 and in_chans in (1, 2):
        grey = luminance(array)
        return grey if in_chans == 1 else np.concatenate([grey, grey])
    if in_chans == 1:
        return array[:1]
    if in_chans == 2 and channels > 2:
        return array[:2]
    raise ValueError(f"{name}: the model takes {in_chans} channels but the image has {channels}")


def model_array(image: SARImage, policy, in_chans: int) -> np.ndarray:
    """``image`` converted by ``policy`` and brought to ``in_chans`` channels, as colour or as bands by what its
    reader found (the one step from a read image to a model array; sizing is :func:`resize_square`)."""
    return to_model_channels(policy(image), in_chans, image.name, colour=is_colour(image))


def resize_square(array: np.ndarray, size: int) -> torch.Tensor:
    """``(C, H, W)`` -> ``(C, size, size)`` float tensor (bilinear with antialiasing; aspect ratio not kept,
    as chips are near-square and detection images are captioned as a whole)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if tensor.shape[-2:] == (size, size):
        return tensor
    return F.interpolate(tensor[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]

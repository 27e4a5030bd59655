"""Size limits checked *before* anything is decoded or inflated: the defence against small files that ask for
huge amounts of memory (decompression bombs, headers that lie about the image size).

Two settings, both process-wide (like Pillow's ``Image.MAX_IMAGE_PIXELS``):

``max_image_pixels``   height x width of one image, read from the header of every format (PNG/JPEG/BMP, TIFF,
                       raw MSTAR, MATLAB ``.mat``) before any array is allocated. Default 89,478,485 pixels,
                       Pillow's own default (about 0.36 GB as float32 for one band).
``max_member_bytes``   the uncompressed size of one zip member read into memory (a chip, a nested scene zip),
                       taken from the archive's directory before inflating. Default 1 GiB.

Change them with :func:`set_limits` (``None`` removes a limit) or, for every process of a run including data loader
workers started with ``spawn``, with the environment variables ``SARCLIP_MAX_IMAGE_PIXELS`` and
``SARCLIP_MAX_MEMBER_BYTES`` (an integer, or ``none``). Over a limit the reader raises
:class:`~lightning_sarclip.data.image.SARReadError` naming the file, its size and the setting to change.
See ``docs/security.md`` for the threat model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from lightning_sarclip.data.image import SARReadError

__all__ = ["Limits", "check_image_pixels", "check_member_bytes", "get_limits", "set_limits"]

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS
DEFAULT_MAX_MEMBER_BYTES = 1 << 30

_ENV = {"max_image_pixels": "SARCLIP_MAX_IMAGE_PIXELS", "max_member_bytes": "SARCLIP_MAX_MEMBER_BYTES"}


@dataclass(frozen=True)
class Limits:
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
    max_member_bytes: int | None = DEFAULT_MAX_MEMBER_BYTES


def _from_env(name: str, default: int) -> int | None:
    text = os.environ.get(_ENV[name])
    if text is None or not text.strip():
        return default
    if text.strip().lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"environment variable {_ENV[name]}: expected an integer or 'none', got {text!r}") from None
    if value < 1:
        raise ValueError(f"environment variable {_ENV[name]}: expected an integer >= 1 or 'none', got {text!r}")
    return value


_overrides: dict[str, int | None] = {}


def get_limits() -> Limits:
    """The limits in force: :func:`set_limits` overrides, then the environment, then the defaults."""
    base = Limits(
        max_image_pixels=_from_env("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS),
        max_member_bytes=_from_env("max_member_bytes", DEFAULT_MAX_MEMBER_BYTES),
    )
    return replace(base, **_overrides)


def set_limits(**limits: int | None) -> Limits:
    """Override limits for this process (``set_limits(max_image_pixels=None)`` removes the pixel limit).

    Returns the previous :class:`Limits`, so a caller can restore them. Unknown names are refused.
    """
    previous = get_limits()
    for name, value in limits.items():
        if name not in _ENV:
            raise ValueError(f"set_limits: unknown limit {name!r}; known: {sorted(_ENV)}")
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"set_limits: {name} must be an integer >= 1 or None, got {value!r}")
        _overrides[name] = value
    return previous


def check_image_pixels(name: str, height: int, width: int, bands: int = 1) -> None:
    """Refuse an image whose header announces more than ``max_image_pixels`` (height x width) pixels."""
    limit = get_limits().max_image_pixels
    if limit is not None and int(height) * int(width) > limit:
        raise SARReadError(
            f"{name}: the header announces a {width} x {height} image ({int(height) * int(width):,} pixels"
            f"{f' x {bands} bands' if bands > 1 else ''}), over the limit max_image_pixels = {limit:,}; if the "
            f"file is trusted, raise it with {_ENV['max_image_pixels']} or lightning_sarclip.data.limits.set_limits"
        )


def check_member_bytes(name: str, size: int) -> None:
    """Refuse a zip member whose uncompressed size is over ``max_member_bytes`` (checked before inflating)."""
    limit = get_limits().max_member_bytes
    if limit is not None and int(size) > limit:
        raise SARReadError(
            f"{name}: the archive member inflates to {int(size):,} bytes, over the limit max_member_bytes = "
            f"{limit:,}; if the archive is trusted, raise it with {_ENV['max_member_bytes']} or "
            "lightning_sarclip.data.limits.set_limits"
        )


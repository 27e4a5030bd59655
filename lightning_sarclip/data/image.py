"""What a read SAR image is (:class:`SARImage`: pixels and the *kind* of their values) and the format registry.

The bottom of the image-reading stack: format readers (:mod:`lightning_sarclip.data.formats` and the built-in ones
in :mod:`lightning_sarclip.data.io`) import this module to register themselves, and :func:`~lightning_sarclip.data.io.read_sar`
looks formats up here. The value kinds are described in :mod:`lightning_sarclip.data.io`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from lightning_sarclip.data.records import MEMBER_SEP, ImageRef

KINDS = ("uint8", "uint16", "amplitude", "intensity", "db", "complex", "float")
#: ``SARImage.meta`` key a format reader sets to ``"rgb"`` when the file says its three channels are red, green and
#: blue (a Pillow RGB/palette image, a TIFF with RGB photometric). Only the file knows: a 3-band raster could as well
#: be a polarimetric stack (HH, HV, VV), whose first channel is the co-pol one.
COLOUR_KEY = "colour"


class SARReadError(ValueError):
    """An image could not be read; the message names the file (and member) and what was expected."""


@dataclass
class SARImage:
    """Pixels ``(H, W, C)``, their meaning, and the file they came from (``name``, for error messages)."""

    data: np.ndarray
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    name: str = "image"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"SARImage.kind: expected one of {KINDS}, got {self.kind!r}")
        if self.data.ndim == 2:
            self.data = self.data[:, :, None]
        if self.data.ndim != 3:
            raise ValueError(f"SARImage.data: expected (H, W) or (H, W, C), got shape {self.data.shape}")

    @property
    def height(self) -> int:
        return int(self.data.shape[0])

    @property
    def width(self) -> int:
        return int(self.data.shape[1])

    @property
    def channels(self) -> int:
        return int(self.data.shape[2])


def is_colour(image: SARImage) -> bool:
    """Whether ``image`` holds red, green and blue channels (see :data:`COLOUR_KEY`), not a stack of bands."""
    return image.meta.get(COLOUR_KEY) == "rgb" and image.channels == 3


Reader = Callable[[bytes, ImageRef], SARImage]
_READERS: dict[str, Reader] = {}
_SUFFIXES: dict[str, str] = {}
_NO_BYTES: set[str] = set()


def register_format(
    name: str, suffixes: tuple[str, ...] = (), needs_bytes: bool = True
) -> Callable[[Reader], Reader]:
    """Decorator: register ``reader(data: bytes, ref: ImageRef) -> SARImage`` under ``name`` and file suffixes.

    ``needs_bytes=False`` is for generated images (the synthetic source): the reader gets ``b""`` and the ref.
    """

    def decorate(reader: Reader) -> Reader:
        _READERS[name] = reader
        if not needs_bytes:
            _NO_BYTES.add(name)
        for suffix in suffixes:
            _SUFFIXES[suffix.lower()] = name
        return reader

    return decorate


def format_of(ref: ImageRef) -> str:
    if ref.format:
        if ref.format not in _READERS:
            raise SARReadError(f"{ref.name}: unknown image format {ref.format!r}; known: {sorted(_READERS)}")
        return ref.format
    name = (ref.member.split(MEMBER_SEP)[-1] if ref.member else ref.path).lower()
    suffix = PurePosixPath(name).suffix
    if suffix not in _SUFFIXES:
        raise SARReadError(
            f"{ref.name}: cannot tell the image format from suffix {suffix!r}; known suffixes: {sorted(_SUFFIXES)} "
            "(or set ImageRef.format)"
        )
    return _SUFFIXES[suffix]


def kind_of_integer(array: np.ndarray, name: str) -> str:
    if array.dtype == np.uint8:
        return "uint8"
    if array.dtype == np.uint16:
        return "uint16"
    if np.issubdtype(array.dtype, np.complexfloating):
        return "complex"
    if np.issubdtype(array.dtype, np.floating):
        return "float"
    if np.issubdtype(array.dtype, np.integer):
        return "float"  # int16/int32 rasters: numeric values, meaning set by the source's policy
    raise SARReadError(f"{name}: unsupported pixel type {array.dtype}")


def list_formats() -> list[str]:
    """The registered image formats (``ImageRef.format`` values), like timm's ``list_models``."""
    return sorted(_READERS)


def reader_for(name: str) -> tuple[Reader, bool]:
    """The reader registered under ``name`` and whether it needs the file's bytes."""
    return _READERS[name], name not in _NO_BYTES

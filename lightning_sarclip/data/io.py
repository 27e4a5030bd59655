"""Reading SAR pixels: ``read_sar(ImageRef) -> SARImage``, with one reader per file format.

Readers receive the file's bytes (from disk or from inside a possibly nested zip archive) and return
:class:`SARImage`: a ``(H, W, C)`` array plus what its values *are* (``kind``), so that the conversion to model
input (:mod:`lightning_sarclip.data.transforms`) can treat amplitude, intensity, dB, 8-bit and complex data
correctly. Formats register themselves with :func:`register_format`; the built-in ones are PNG/JPEG/BMP (Pillow)
and TIFF/GeoTIFF (tifffile). Every failure raises :class:`SARReadError` naming the file.

Value kinds:

``uint8`` / ``uint16``   display-scaled integers (JPEG chips, ``Patch_Uint8``)
``amplitude``            linear magnitude |s| (MSTAR raw, SLC magnitude)
``intensity``            linear power |s|^2 or calibrated sigma0 in linear units
``db``                   10 log10 of intensity (SEN12MS, calibrated Sentinel-1 products in dB)
``complex``              complex SLC samples (converted to amplitude by the policies)
``float``                float data of unknown meaning (the policy must say what to do)
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from lightning_sarclip.data.records import MEMBER_SEP, ImageRef

KINDS = ("uint8", "uint16", "amplitude", "intensity", "db", "complex", "float")


class SARReadError(ValueError):
    """An image could not be read; the message names the file (and member) and what was expected."""


@dataclass
class SARImage:
    """Pixels ``(H, W, C)`` and their meaning."""

    data: np.ndarray
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)

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


def safe_member(member: str, archive: str) -> str:
    """Refuse archive member paths that are absolute or climb out with ``..`` (zip-slip)."""
    path = PurePosixPath(member.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or member.startswith(("/", "\\")):
        raise SARReadError(f"{archive}: refusing unsafe archive member path {member!r}")
    return str(path)


def read_bytes(ref: ImageRef) -> bytes:
    """The file's bytes, following ``member`` through nested zip archives."""
    path = Path(ref.path)
    if not path.exists():
        raise SARReadError(f"image file not found: {path}")
    if not ref.member:
        return path.read_bytes()
    data: bytes | None = None
    container: Any = path
    parts = ref.member.split(MEMBER_SEP)
    where = str(path)
    for i, part in enumerate(parts):
        part = safe_member(part, where)
        try:
            with zipfile.ZipFile(container) as archive:
                data = archive.read(part)
        except KeyError as err:
            raise SARReadError(f"{where}: archive has no member {part!r}") from err
        except zipfile.BadZipFile as err:
            raise SARReadError(f"{where}: not a readable zip archive ({err})") from err
        where = f"{where}{MEMBER_SEP}{part}"
        if i < len(parts) - 1:
            container = io.BytesIO(data)
    assert data is not None
    return data


def read_sar(ref: ImageRef) -> SARImage:
    """Read the image ``ref`` points at, keep ``bands``, apply ``window``."""
    fmt = format_of(ref)
    reader = _READERS[fmt]
    data = b"" if fmt in _NO_BYTES else read_bytes(ref)
    try:
        image = reader(data, ref)
    except SARReadError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure is reported with the file's name
        raise SARReadError(f"{ref.name}: could not decode as {format_of(ref)} ({type(err).__name__}: {err})") from err
    if ref.bands is not None:
        if max(ref.bands) >= image.channels:
            raise SARReadError(f"{ref.name}: asked for bands {ref.bands} but the image has {image.channels}")
        image.data = image.data[:, :, list(ref.bands)]
    if ref.window is not None:
        image.data = crop_window(image.data, ref.window, ref.name)
    return image


def crop_window(data: np.ndarray, window: tuple[int, int, int, int], name: str = "image") -> np.ndarray:
    """Crop ``(x0, y0, x1, y1)``, clipped to the image; an empty result is an error."""
    x0, y0, x1, y1 = (int(round(v)) for v in window)
    h, w = data.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 <= x0 or y1 <= y0:
        raise SARReadError(f"{name}: crop window {window} lies outside the {w}x{h} image")
    return data[y0:y1, x0:x1]


def _kind_of_integer(array: np.ndarray, name: str) -> str:
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


@register_format("pillow", suffixes=(".png", ".jpg", ".jpeg", ".bmp"))
def _read_pillow(data: bytes, ref: ImageRef) -> SARImage:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr"):
            image = image.convert("RGB")
        if image.mode == "I;16":
            array = np.asarray(image, dtype=np.uint16)
        else:
            array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 3 and _is_grey(array):
        array = array[:, :, :1]  # SAR chips saved as RGB with three equal channels
    return SARImage(array, _kind_of_integer(array, ref.name))


def _is_grey(array: np.ndarray) -> bool:
    return bool(np.array_equal(array[:, :, 0], array[:, :, 1]) and np.array_equal(array[:, :, 0], array[:, :, 2]))


@register_format("tiff", suffixes=(".tif", ".tiff"))
def _read_tiff(data: bytes, ref: ImageRef) -> SARImage:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        array = tif.asarray()
        meta = {}
        if tif.is_geotiff:
            meta["geotiff"] = True
    if array.ndim == 3 and array.shape[0] < array.shape[-1] and array.shape[0] <= 4:
        array = np.moveaxis(array, 0, -1)  # band-first (C, H, W) rasters
    return SARImage(array, _kind_of_integer(array, ref.name), meta)

# Extra formats (raw MSTAR, MATLAB .mat) register themselves on import.
import lightning_sarclip.data.formats  # noqa: E402,F401

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
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

import lightning_sarclip.data.formats  # noqa: F401  (registers raw MSTAR and MATLAB .mat)
from lightning_sarclip.data.image import (
    KINDS,
    SARImage,
    SARReadError,
    format_of,
    kind_of_integer,
    list_formats,
    reader_for,
    register_format,
)
from lightning_sarclip.data.records import MEMBER_SEP, ImageRef

__all__ = ["KINDS", "SARImage", "SARReadError", "crop_window", "format_of", "list_formats", "read_bytes", "read_sar",
           "register_format", "safe_member"]

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
    reader, needs_bytes = reader_for(fmt)
    data = read_bytes(ref) if needs_bytes else b""
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
    return SARImage(array, kind_of_integer(array, ref.name))


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
    return SARImage(array, kind_of_integer(array, ref.name), meta)


"""Reading SAR pixels: ``read_sar(ImageRef) -> SARImage``, with one reader per file format.

Readers receive the file's bytes (from disk or from inside a possibly nested zip archive) and return
:class:`SARImage`: a ``(H, W, C)`` array plus what its values *are* (``kind``), so that the conversion to model
input (:mod:`lightning_sarclip.data.transforms`) can treat amplitude, intensity, dB, 8-bit and complex data
correctly. Formats register themselves with :func:`register_format`; the built-in ones are PNG/JPEG/BMP (Pillow)
and TIFF/GeoTIFF (tifffile). Every failure raises :class:`SARReadError` naming the file.

Three channels are either a colour image or a stack of bands, and only the file can tell: a reader marks colour
images with ``meta[COLOUR_KEY] = "rgb"`` (Pillow's RGB, palette, CMYK and YCbCr images; TIFFs whose photometric
tag says RGB), so that a one-channel model gets their luminance rather than their red channel
(:func:`~lightning_sarclip.data.transforms.to_model_channels`). Grey images saved as RGB (three equal channels)
are read as one channel. Picking ``bands`` other than ``(0, 1, 2)`` drops the mark.

Value kinds:

``uint8`` / ``uint16``   display-scaled integers (JPEG chips, ``Patch_Uint8``)
``amplitude``            linear magnitude |s| (MSTAR raw, SLC magnitude)
``intensity``            linear power |s|^2 or calibrated sigma0 in linear units
``db``                   10 log10 of intensity (SEN12MS, calibrated Sentinel-1 products in dB)
``complex``              complex SLC samples (converted to amplitude by the policies)
``float``                float data of unknown meaning (the policy must say what to do)
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO

import numpy as np

import lightning_sarclip.data.formats  # noqa: F401  (registers raw MSTAR and MATLAB .mat)
from lightning_sarclip.data.image import (
    COLOUR_KEY,
    KINDS,
    SARImage,
    SARReadError,
    format_of,
    kind_of_integer,
    list_formats,
    reader_for,
    register_format,
)
from lightning_sarclip.data.limits import check_image_pixels, check_member_bytes, get_limits
from lightning_sarclip.data.records import MEMBER_SEP, ImageRef

__all__ = ["COLOUR_KEY", "KINDS", "SARImage", "SARReadError", "crop_window", "format_of", "list_formats", "open_member", "read_bytes", "ZIP_ERRORS",
           "read_sar", "register_format", "safe_member"]

def safe_member(member: str, archive: str) -> str:
    """Refuse archive member paths that are absolute or climb out with ``..`` (zip-slip)."""
    path = PurePosixPath(member.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or member.startswith(("/", "\\")):
        raise SARReadError(f"{archive}: refusing unsafe archive member path {member!r}")
    return str(path)


#: what ``zipfile`` raises on a damaged archive (bad offsets seek before the start: ``OSError``; bad compressed data:
#: ``zlib.error``; an unsupported method or encryption: ``NotImplementedError``/``RuntimeError``)
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError, RuntimeError)

#: nested archives up to this size are held in memory while open; larger ones are spooled to a temporary file
SPOOL_IN_MEMORY_BYTES = 64 << 20


def open_member(archive: zipfile.ZipFile, member: str, where: str) -> IO[bytes]:
    """A seekable file object for ``member`` of ``archive``, for opening a *nested* zip without inflating it whole
    into memory: a stored (uncompressed) member is read in place; a compressed one is inflated in chunks into a
    temporary file that stays in memory up to :data:`SPOOL_IN_MEMORY_BYTES` and spills to disk beyond. The member's
    uncompressed size is checked against ``max_member_bytes`` (:mod:`~lightning_sarclip.data.limits`) first.

    ``where`` names the archive in errors (``outer.zip`` or ``outer.zip!/scene.zip``). The caller closes the result.
    """
    member = safe_member(member, where)
    try:
        info = archive.getinfo(member)
    except KeyError as err:
        raise SARReadError(f"{where}: archive has no member {member!r}") from err
    check_member_bytes(f"{where}{MEMBER_SEP}{member}", info.file_size)
    window = _stored_member_window(archive, info)
    if window is not None:
        return window
    handle = archive.open(info)
    if info.compress_type == zipfile.ZIP_STORED and handle.seekable():
        return handle
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES)
    try:
        with handle:
            shutil.copyfileobj(handle, spool, 1 << 20)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool


class _FileWindow(io.RawIOBase):
    """Bytes ``start .. start + size`` of a file on disk as a seekable file of their own (a stored zip member).

    Python 3.11's member handle re-reads a stored member from its start on every backward seek, and a zip reader
    seeks back and forth (central directory at the end, members before it); a window seeks in the file itself.
    """

    def __init__(self, path: str, start: int, size: int) -> None:
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._start, self._size, self._pos = start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self._size - self._pos)
        if count <= 0:
            return 0
        self._file.seek(self._start + self._pos)
        data = self._file.read(count)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


def _stored_member_window(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> IO[bytes] | None:
    """A window on a stored, unencrypted member of a zip that is a file on disk; ``None`` otherwise."""
    path = archive.filename
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1 or not path or not Path(path).is_file():
        return None
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        header = handle.read(30)  # the member's local header: signature, ..., name length, extra length
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        return None  # let zipfile report the damage
    start = info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
    return io.BufferedReader(_FileWindow(path, start, info.file_size), buffer_size=1 << 16)


def _read_member(archive: zipfile.ZipFile, member: str, where: str) -> bytes:
    """The bytes of one member, its uncompressed size checked against ``max_member_bytes`` before inflating."""
    try:
        info = archive.getinfo(member)
    except KeyError as err:
        raise SARReadError(f"{where}: archive has no member {member!r}") from err
    check_member_bytes(f"{where}{MEMBER_SEP}{member}", info.file_size)
    return archive.read(info)


def read_bytes(ref: ImageRef) -> bytes:
    """The file's bytes, following ``member`` through nested zip archives (each member's size checked first;
    nested archives are opened through :func:`open_member`, never inflated whole into memory)."""
    path = Path(ref.path)
    if not path.exists():
        raise SARReadError(f"image file not found: {path}")
    if not ref.member:
        return path.read_bytes()
    parts = [safe_member(part, ref.path) for part in ref.member.split(MEMBER_SEP)]
    where = str(path)
    with contextlib.ExitStack() as stack:
        try:
            archive = stack.enter_context(zipfile.ZipFile(path))
            for part in parts[:-1]:
                nested = stack.enter_context(open_member(archive, part, where))
                where = f"{where}{MEMBER_SEP}{part}"
                archive = stack.enter_context(zipfile.ZipFile(nested))
            return _read_member(archive, parts[-1], where)
        except ZIP_ERRORS as err:
            raise SARReadError(f"{where}: not a readable zip archive ({type(err).__name__}: {err})") from err


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
    image.name = ref.name
    if image.data.size == 0:
        raise SARReadError(f"{ref.name}: the file holds an empty image (shape {image.data.shape})")
    if ref.bands is not None:
        if max(ref.bands) >= image.channels:
            raise SARReadError(f"{ref.name}: asked for bands {ref.bands} but the image has {image.channels}")
        image.data = image.data[:, :, list(ref.bands)]
        if tuple(ref.bands) != (0, 1, 2):
            image.meta.pop(COLOUR_KEY, None)  # picked bands are bands, not a colour image any more
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

    # One limit for every format: Pillow's own bomb check (at open: a warning over the limit, an error over twice
    # the limit) follows ours, and ours runs on the header before load().
    limit = get_limits().max_image_pixels
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise SARReadError(f"{ref.name}: the image is over the limit max_image_pixels = {limit:,} ({err}); if the file "
                           "is trusted, raise it with SARCLIP_MAX_IMAGE_PIXELS or "
                           "lightning_sarclip.data.limits.set_limits") from err
    with image:
        check_image_pixels(ref.name, image.size[1], image.size[0], len(image.getbands()))
        image.load()
        if image.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr"):
            image = image.convert("RGB")
        if image.mode == "I;16":
            array = np.asarray(image, dtype=np.uint16)
        else:
            array = np.asarray(image)
    meta = {}
    if array.ndim == 3 and array.shape[2] == 3:
        if _is_grey(array):
            array = array[:, :, :1]  # SAR chips saved as RGB with three equal channels
        else:
            meta[COLOUR_KEY] = "rgb"  # Pillow's 3 channels are always R, G, B (palette and YCbCr converted above)
    return SARImage(array, kind_of_integer(array, ref.name), meta)


def _is_grey(array: np.ndarray) -> bool:
    return bool(np.array_equal(array[:, :, 0], array[:, :, 1]) and np.array_equal(array[:, :, 0], array[:, :, 2]))


#: ``ImageRef`` option ``band_axis``: where a 3-D raster keeps its bands when the file does not say.
BAND_AXES = ("first", "last")
#: page stacks up to this many pages are read as bands without being told (HH/HV/VH/VV at most)
MAX_IMPLICIT_PAGE_BANDS = 4


def band_axis_of_tiff(axes: str, shape: tuple[int, ...], ref: ImageRef) -> str | None:
    """``"first"``/``"last"`` for a 3-D TIFF series, ``None`` for 2-D; refuses a shape the file leaves ambiguous.

    tifffile names each axis: ``YXS`` is pixel-interleaved bands (band-last), ``SYX`` planar bands (band-first);
    those are unambiguous. A leading ``Q``/``I``/``C``/``Z``... axis is a stack of pages, which a writer may have
    meant as bands or not (``tifffile.imwrite`` of a ``(64, 64, 5)`` array without ``planarconfig`` writes 64 pages
    of 64 x 5). Up to four pages are bands (polarisation channels); more must be stated with ``band_axis``.
    """
    stated = ref.option("band_axis")
    if stated is not None and stated not in BAND_AXES:
        raise SARReadError(f"{ref.name}: option band_axis: expected one of {BAND_AXES}, got {stated!r}")
    if len(shape) == 2:
        return None
    if len(shape) != 3:
        raise SARReadError(f"{ref.name}: expected a 2-D or 3-D raster, found a series of shape {shape} "
                           f"(axes {axes!r})")
    if stated is not None:
        return stated
    if axes.endswith("S"):
        return "last"
    if axes.startswith("S") or shape[0] <= MAX_IMPLICIT_PAGE_BANDS:
        return "first"
    raise SARReadError(
        f"{ref.name}: ambiguous raster of shape {shape} (tifffile axes {axes!r}, a stack of {shape[0]} pages): "
        f"the file does not say which axis holds the bands; set the ImageRef option band_axis to 'first' "
        "(pages are bands) or 'last', or write the file with planarconfig 'separate' or 'contig'"
    )


@register_format("tiff", suffixes=(".tif", ".tiff"))
def _read_tiff(data: bytes, ref: ImageRef) -> SARImage:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        series = tif.series[0]
        shape = tuple(int(n) for n in series.shape)
        band_axis = band_axis_of_tiff(series.axes, shape, ref)
        height, width = (shape[1:] if band_axis == "first" else shape[:2])
        bands = 1 if band_axis is None else (shape[0] if band_axis == "first" else shape[2])
        check_image_pixels(ref.name, height, width, bands)  # from the header, before any array is allocated
        array = series.asarray()
        meta = {}
        if tif.is_geotiff:
            meta["geotiff"] = True
        if series.keyframe.photometric == tifffile.PHOTOMETRIC.RGB and bands == 3:
            meta[COLOUR_KEY] = "rgb"  # the file says so; a 3-band SAR stack is written MINISBLACK
    if band_axis == "first":
        array = np.moveaxis(array, 0, -1)
    return SARImage(array, kind_of_integer(array, ref.name), meta)

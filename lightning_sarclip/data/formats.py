"""Extra image formats for :func:`~lightning_sarclip.data.io.read_sar`: MSTAR "Phoenix" raw chips and MATLAB ``.mat``.

``mstar_raw``
    The AFRL/Sandia MSTAR format: an ASCII header of ``Key= value`` lines between ``[PhoenixHeaderVer01.0N]`` and
    ``[EndofPhoenixHeader]``, then, at byte ``PhoenixHeaderLength + native_header_length``, a block of
    ``NumberOfRows x NumberOfColumns`` big-endian float32 magnitudes followed by a phase block (radians) of the
    same size. Magnitude is returned as ``kind="amplitude"``; the option ``("mstar_part", "complex")`` returns
    ``mag * exp(i * phase)``. Files whose values are 16-bit (clutter scenes) are refused: how their integers map to
    magnitude is not confirmed. :func:`parse_mstar_header` parses only the header, so sources can fill metadata
    from the first few kilobytes of each file.

``mat``
    MATLAB files, v5 (``scipy.io.loadmat``) and v7.3 (HDF5, ``h5py``), holding SAR rasters: FAIR-CSAR SLC
    (``data``), SAMPLE (``complex_img``), ATRNet-STAR slant-range chips (``data_hh`` ...). The option
    ``("mat_key", name)`` picks a variable, ``("mat_key", (n1, n2, ...))`` stacks several 2-D variables as
    channels; without it the file must hold exactly one 2-D/3-D numeric image.

Importing this module registers both formats (the source readers that need them import it).
"""

from __future__ import annotations

import io
import os
import re
from typing import Any

import numpy as np

from lightning_sarclip.data.image import SARImage, SARReadError, kind_of_integer, register_format
from lightning_sarclip.data.limits import check_image_pixels
from lightning_sarclip.data.matv5 import check_mat_v5
from lightning_sarclip.data.records import ImageRef

# --------------------------------------------------------------------------------------------------- MSTAR raw

_PHOENIX_START = re.compile(rb"\[PhoenixHeaderVer(\d+\.\d+)\]")
_PHOENIX_END = b"[EndofPhoenixHeader]"
#: Fields without which the pixel blocks cannot be located.
MSTAR_REQUIRED = ("PhoenixHeaderLength", "native_header_length", "NumberOfColumns", "NumberOfRows")
#: Fields kept as text although they may look numeric (ids, dates and times with meaningful leading zeros).
_TEXT_FIELDS = frozenset(
    {"TargetSerNum", "Filename", "ParentScene", "Chip_MD5_CheckSum", "CollectionDate", "CollectionTime",
     "HeaderVersionNumber", "CollectionName"}
)
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")


def _typed(key: str, value: str) -> Any:
    """``"01977"`` -> 1977, ``"162.95"`` -> 162.95; text (``"9.599000 GHz"``, ``"HH"``, serials) stays text."""
    if key in _TEXT_FIELDS:
        return value
    if _INT.fullmatch(value):
        return int(value)
    if _FLOAT.fullmatch(value):
        return float(value)
    return value


#: The Phoenix version tag is looked for in this many leading bytes.
PHOENIX_SNIFF_BYTES = 4096


def is_mstar_raw(path: str | os.PathLike) -> bool:
    """Whether the file starts like a raw MSTAR Phoenix file (the tag in its first bytes); unreadable -> False."""
    try:
        with open(path, "rb") as handle:
            return _PHOENIX_START.search(handle.read(PHOENIX_SNIFF_BYTES)) is not None
    except OSError:
        return False


def parse_mstar_header(data: bytes, name: str) -> dict[str, Any]:
    """Parse the Phoenix header at the start of ``data`` (the whole file or just its first kilobytes).

    The version tag is searched for rather than assumed on line 1 (files start with a newline). Values are typed
    (ints, floats) where they are plain numbers; ``PhoenixVersion`` is added from the tag and ``HeaderEnd`` is the
    byte offset just after ``[EndofPhoenixHeader]``.

    Raises:
        SARReadError: no version tag, no end tag (truncated header), or a required field missing / not an integer.
    """
    start = _PHOENIX_START.search(data[:PHOENIX_SNIFF_BYTES])
    if start is None:
        raise SARReadError(f"{name}: not an MSTAR Phoenix file (no [PhoenixHeaderVer..] tag in the first 4 KB)")
    end = data.find(_PHOENIX_END, start.end())
    if end < 0:
        raise SARReadError(f"{name}: truncated MSTAR header: no {_PHOENIX_END.decode()} after the version tag")
    header: dict[str, Any] = {"PhoenixVersion": start.group(1).decode()}
    text = data[start.end():end].decode("latin-1")
    for line in text.splitlines():
        if "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip()
        if key:
            header[key] = _typed(key, value.strip())
    for field in MSTAR_REQUIRED:
        if field not in header:
            raise SARReadError(f"{name}: MSTAR header lacks the required field {field!r}")
        if not isinstance(header[field], int) or header[field] < 0:
            raise SARReadError(f"{name}: MSTAR header field {field!r}: expected a non-negative integer, "
                               f"found {header[field]!r}")
    if header["NumberOfRows"] == 0 or header["NumberOfColumns"] == 0:
        raise SARReadError(f"{name}: MSTAR header gives an empty image "
                           f"({header['NumberOfRows']}x{header['NumberOfColumns']})")
    header["HeaderEnd"] = end + len(_PHOENIX_END)
    return header


@register_format("mstar_raw")
def read_mstar_raw(data: bytes, ref: ImageRef) -> SARImage:
    """Magnitude (``amplitude``) or complex chip of an MSTAR Phoenix file; ``meta["header"]`` is the header."""
    header = parse_mstar_header(data, ref.name)
    part = ref.option("mstar_part", "magnitude")
    if part not in ("magnitude", "complex"):
        raise SARReadError(f"{ref.name}: option mstar_part: expected 'magnitude' or 'complex', got {part!r}")
    rows, cols = header["NumberOfRows"], header["NumberOfColumns"]
    check_image_pixels(ref.name, rows, cols)
    offset = header["PhoenixHeaderLength"] + header["native_header_length"]
    if header["PhoenixHeaderLength"] < header["HeaderEnd"]:
        raise SARReadError(f"{ref.name}: MSTAR header field 'PhoenixHeaderLength' = {header['PhoenixHeaderLength']}"
                           f" ends before the header text does (byte {header['HeaderEnd']})")
    body = len(data) - offset
    if isinstance(header.get("PhoenixSigSize"), int) and header["PhoenixSigSize"] > offset:
        value_size = (header["PhoenixSigSize"] - offset) / (2 * rows * cols)
        if value_size == 2:
            raise SARReadError(f"{ref.name}: 16-bit MSTAR data (clutter scene) is not supported: the scaling of its "
                               "integers is unconfirmed; only float32 target chips are read")
    expected = 2 * rows * cols * 4
    if body < expected:
        raise SARReadError(f"{ref.name}: MSTAR body too short for {rows}x{cols} float32 magnitude + phase blocks: "
                           f"expected {expected} bytes after offset {offset}, found {max(body, 0)}")
    n = rows * cols
    magnitude = np.frombuffer(data, ">f4", count=n, offset=offset).reshape(rows, cols).astype(np.float32)
    meta = {"header": header}
    if part == "magnitude":
        return SARImage(magnitude, "amplitude", meta)
    phase = np.frombuffer(data, ">f4", count=n, offset=offset + 4 * n).reshape(rows, cols).astype(np.float32)
    return SARImage((magnitude * np.exp(1j * phase)).astype(np.complex64), "complex", meta)


# --------------------------------------------------------------------------------------------------------- MAT

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _is_hdf5(data: bytes) -> bool:
    """v7.3 files are HDF5 with a 512-byte MATLAB preamble (the signature sits at 0, 512, 1024 ...)."""
    return data[:8] == _HDF5_SIGNATURE or data[512:520] == _HDF5_SIGNATURE


def _check_mat_shape(name: str, key: str, shape: tuple[int, ...]) -> None:
    """Pixel limit for one MATLAB variable, from its declared shape (before its data is read or inflated)."""
    if len(shape) >= 2:
        dims = sorted((int(n) for n in shape), reverse=True)
        check_image_pixels(f"{name} (variable {key!r})", dims[0], dims[1], int(np.prod(dims[2:], dtype=np.int64)))


def _mat_v5_arrays(data: bytes, name: str) -> dict[str, np.ndarray]:
    from scipy.io import loadmat

    # SciPy's C reader trusts declared sizes (a malformed file could crash the process); the structural check also
    # holds every variable to the pixel limit from its dimensions, before anything is inflated.
    check_mat_v5(data, name)
    raw = loadmat(io.BytesIO(data), squeeze_me=False)
    return {k: v for k, v in raw.items() if not k.startswith("__") and isinstance(v, np.ndarray)}


def _mat_v73_arrays(data: bytes, name: str) -> dict[str, np.ndarray]:
    """Top-level numeric datasets of a v7.3 file, transposed back to MATLAB's (row, column, ...) order."""
    import h5py

    out: dict[str, np.ndarray] = {}
    with h5py.File(io.BytesIO(data), "r") as handle:
        for key, item in handle.items():
            if key.startswith("#") or not isinstance(item, h5py.Dataset):
                continue
            matlab_class = item.attrs.get("MATLAB_class", b"")
            matlab_class = matlab_class.decode() if isinstance(matlab_class, bytes) else str(matlab_class)
            if matlab_class in ("char", "cell", "struct", "logical"):
                out[key] = np.array(matlab_class)  # listed as a key, never picked as an image
                continue
            _check_mat_shape(name, key, tuple(item.shape))
            array = item[()]
            if array.dtype.names and {"real", "imag"} <= set(array.dtype.names):
                array = array["real"] + 1j * array["imag"]
            out[key] = np.asarray(array).T
    return out


def _is_image(array: np.ndarray) -> bool:
    numeric = np.issubdtype(array.dtype, np.number) and not np.issubdtype(array.dtype, np.bool_)
    return bool(numeric and array.ndim in (2, 3) and array.shape[0] > 1 and array.shape[1] > 1)


def _as_image_dtype(array: np.ndarray) -> np.ndarray:
    if np.issubdtype(array.dtype, np.complexfloating):
        return array.astype(np.complex64)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    return array


@register_format("mat", suffixes=(".mat",))
def read_mat(data: bytes, ref: ImageRef) -> SARImage:
    """The image variable(s) of a MATLAB file; ``meta["mat_key"]`` says which were read."""
    arrays = _mat_v73_arrays(data, ref.name) if _is_hdf5(data) else _mat_v5_arrays(data, ref.name)
    keys = ref.option("mat_key")
    if keys is None:
        candidates = [k for k, v in arrays.items() if _is_image(v)]
        if len(candidates) != 1:
            raise SARReadError(
                f"{ref.name}: cannot choose the image variable: {len(candidates)} 2-D/3-D numeric arrays "
                f"({candidates}) among the keys {sorted(arrays)}; set ImageRef option ('mat_key', name)"
            )
        keys = candidates[0]
    names = (keys,) if isinstance(keys, str) else tuple(keys)
    for key in names:
        if key not in arrays:
            raise SARReadError(f"{ref.name}: no variable {key!r}; available keys: {sorted(arrays)}")
        if not _is_image(arrays[key]):
            raise SARReadError(f"{ref.name}: variable {key!r} is not a 2-D/3-D numeric image "
                               f"(dtype {arrays[key].dtype}, shape {arrays[key].shape})")
    if len(names) == 1:
        array = arrays[names[0]]
    else:
        shapes = {arrays[k].shape for k in names}
        if len(shapes) != 1 or arrays[names[0]].ndim != 2:
            raise SARReadError(f"{ref.name}: variables {names} must be 2-D with equal shapes to be stacked, "
                               f"found shapes {[arrays[k].shape for k in names]}")
        array = np.stack([arrays[k] for k in names], axis=-1)
    array = _as_image_dtype(np.asarray(array))
    return SARImage(array, kind_of_integer(array, ref.name), {"mat_key": names if len(names) > 1 else names[0]})

"""A structural check of MATLAB v5 ``.mat`` files before SciPy's reader sees them.

SciPy's v5 reader (``scipy.io.loadmat``, written in C/Cython) trusts the sizes a file declares: fuzzing it with
byte-level mutations of a valid file crashes the whole process within seconds (segmentation faults and bus errors
in ``_mio5_utils``, SciPy 1.17), which in a data loader worker or an evaluation run means a dead job with no file
name. This module walks the file's element tree in pure Python and refuses, with a
:class:`~lightning_sarclip.data.image.SARReadError` naming the file and the element, anything whose declared
sizes do not fit: an element longer than what contains it, a matrix whose data holds a different number of values
than its dimensions say, a compressed element that does not inflate, or inflates past ``max_member_bytes``.

Layout checked (MATLAB's "MAT-File Format", level 5): a 128-byte header ending in the endian mark ``IM``/``MI``,
then data elements, each an 8-byte tag ``(type, byte count)`` (or a 4-byte "small element" tag with the data in
the other 4 bytes) padded to 8 bytes. ``miCOMPRESSED`` holds one zlib-compressed element; ``miMATRIX`` holds array
flags, dimensions, a name and, by class, the real/imaginary data, cells, struct fields or sparse indices.
"""

from __future__ import annotations

import struct
import zlib

from lightning_sarclip.data.image import SARReadError
from lightning_sarclip.data.limits import check_image_pixels, get_limits

__all__ = ["check_mat_v5"]

HEADER_BYTES = 128
MI_MATRIX, MI_COMPRESSED = 14, 15
#: bytes per value of each data type (miINT8 ... miUTF32); miMATRIX/miCOMPRESSED hold elements
TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8, 16: 1, 17: 2, 18: 4}
NUMERIC_CLASSES = set(range(6, 16))  # double, single, int8 ... uint64
CELL, STRUCT, OBJECT, CHAR, SPARSE = 1, 2, 3, 4, 5
OPAQUE_CLASSES = {16, 17}  # function handles and MATLAB objects (string arrays ...): inside their element's bounds
COMPLEX_FLAG = 0x0800
MAX_DEPTH = 32  # cells of structs of cells ...: deeper than any real file, shallow enough for the stack


class _Reader:
    def __init__(self, data: bytes, order: str, name: str) -> None:
        self.data, self.order, self.name = data, order, name

    def fail(self, where: str, problem: str) -> SARReadError:
        return SARReadError(f"{self.name}: malformed MATLAB v5 file at {where}: {problem}")

    def tag(self, at: int, end: int, where: str) -> tuple[int, int, int, int]:
        """``(type, byte count, data start, next element)`` of the element at ``at``, inside ``[at, end)``."""
        if at + 8 > end:
            raise self.fail(where, f"an element tag needs 8 bytes at offset {at}, only {max(end - at, 0)} left")
        first, second = struct.unpack_from(self.order + "II", self.data, at)
        if first >> 16:  # small data element: type in the low half, byte count in the high half, data in 4 bytes
            kind, count = first & 0xFFFF, first >> 16
            if count > 4:
                raise self.fail(where, f"a small element declares {count} bytes (at most 4)")
            return kind, count, at + 4, at + 8
        kind, count, start = first, second, at + 8
        stop = start + count
        padded = stop if kind == MI_COMPRESSED else start + (count + 7) // 8 * 8
        if stop > end:
            raise self.fail(where, f"element of type {kind} declares {count} bytes, only {end - start} left")
        return kind, count, start, min(padded, end)


def check_mat_v5(data: bytes, name: str) -> None:
    """Refuse a v5 ``.mat`` file whose element sizes are inconsistent (see the module docstring)."""
    if len(data) < HEADER_BYTES:
        raise SARReadError(f"{name}: not a MATLAB v5 file: {len(data)} bytes, the header alone is {HEADER_BYTES}")
    mark = data[126:128]
    if mark not in (b"IM", b"MI"):
        raise SARReadError(f"{name}: not a MATLAB v5 file: endian mark {mark!r} at byte 126, expected b'IM' or b'MI'")
    reader = _Reader(data, "<" if mark == b"IM" else ">", name)
    at, index = HEADER_BYTES, 0
    while at < len(data):
        if len(data) - at < 8 and not any(data[at:]):
            break  # trailing zero padding
        kind, count, start, after = reader.tag(at, len(data), f"element {index}")
        where = f"element {index}"
        if kind == MI_COMPRESSED:
            _check_compressed(reader, start, count, where)
        elif kind == MI_MATRIX:
            _check_matrix(reader, start, start + count, where, 0)
        at, index = after, index + 1


#: inflated first, to read a compressed matrix's dimensions before the rest is inflated
HEAD_BYTES = 1 << 16


def _check_compressed(reader: _Reader, start: int, count: int, where: str) -> None:
    limit = get_limits().max_member_bytes
    inflater = zlib.decompressobj()
    try:
        inner = inflater.decompress(reader.data[start:start + count], HEAD_BYTES)
        if len(inner) >= HEAD_BYTES and len(inner) >= 8:  # more to come: the dimensions first, against the limit
            kind = struct.unpack_from(reader.order + "I", inner, 0)[0]
            if kind == MI_MATRIX:  # the element itself continues past the head: only its header is read here
                _matrix_header(_Reader(inner, reader.order, reader.name), 8, len(inner), f"{where} (inflated)")
        budget = 0 if limit is None else max(limit - len(inner), 1)
        inner += inflater.decompress(inflater.unconsumed_tail, budget)
    except zlib.error as err:
        raise reader.fail(where, f"compressed element does not inflate ({err})") from err
    if limit is not None and (inflater.unconsumed_tail or len(inner) > limit):
        raise reader.fail(where, f"compressed element inflates past max_member_bytes = {limit:,} (raise it with "
                                 "SARCLIP_MAX_MEMBER_BYTES if the file is trusted)")
    nested = _Reader(inner, reader.order, reader.name)
    kind, count, body, _ = nested.tag(0, len(inner), f"{where} (inflated)")
    if kind == MI_MATRIX:
        _check_matrix(nested, body, body + count, f"{where} (inflated)", 0)


def _matrix_header(reader: _Reader, start: int, end: int, where: str) -> tuple[int, bool, tuple[int, ...], int, int]:
    """``(class, complex, dims, values, offset after the name)`` of a matrix; numeric and text arrays are held to
    ``max_image_pixels`` from their dimensions here, before their data is looked at."""
    kind, count, body, at = reader.tag(start, end, f"{where} array flags")
    if kind != 6 or count < 4:
        raise reader.fail(where, f"array flags must be a uint32 element, found type {kind} of {count} bytes")
    flags = struct.unpack_from(reader.order + "I", reader.data, body)[0]
    array_class, is_complex = flags & 0xFF, bool(flags & COMPLEX_FLAG)
    kind, count, body, at = reader.tag(at, end, f"{where} dimensions")
    if kind != 5 or count % 4 or count < 8:
        raise reader.fail(where, f"dimensions must be 2 or more int32 values, found type {kind} of {count} bytes")
    dims = struct.unpack_from(f"{reader.order}{count // 4}i", reader.data, body)
    if min(dims) < 0:
        raise reader.fail(where, f"negative dimension in {dims}")
    values = 1
    for n in dims:
        values *= n
    kind, count, body, at = reader.tag(at, end, f"{where} name")
    if kind not in (1, 2, 16):
        raise reader.fail(where, f"the array name must be a text element, found type {kind}")
    if array_class in NUMERIC_CLASSES or array_class == CHAR:
        variable = reader.data[body:body + count].decode("latin-1")
        largest = sorted(dims, reverse=True)
        check_image_pixels(f"{reader.name} (variable {variable!r})", largest[0], largest[1],
                           values // max(largest[0] * largest[1], 1) or 1)
    return array_class, is_complex, dims, values, at


def _check_matrix(reader: _Reader, start: int, end: int, where: str, depth: int) -> None:
    """One ``miMATRIX`` element's content ``[start, end)``; an empty one (a blank cell entry) is valid."""
    if start == end:
        return
    if depth > MAX_DEPTH:
        raise reader.fail(where, f"matrices nested deeper than {MAX_DEPTH} levels")
    array_class, is_complex, dims, values, at = _matrix_header(reader, start, end, where)
    if array_class in NUMERIC_CLASSES or array_class == CHAR:
        parts = ("real part", "imaginary part") if is_complex else ("real part",)
        for part in parts:
            kind, count, body, at = reader.tag(at, end, f"{where} {part}")
            size = TYPE_SIZES.get(kind)
            if size is None:
                raise reader.fail(where, f"{part}: data type {kind} is not a numeric type")
            if array_class == CHAR and kind in (16, 17, 18):  # UTF-encoded text: a character takes 1-4 bytes
                if count > values * 4:
                    raise reader.fail(where, f"{count} bytes of text for {values} characters")
            elif count != values * size:
                raise reader.fail(where, f"{part}: {count} bytes of type {kind} for {values} values "
                                         f"(dimensions {dims}) need {values * size}")
    elif array_class == CELL:
        for item in range(values):
            kind, count, body, at = reader.tag(at, end, f"{where} cell {item}")
            if kind != MI_MATRIX:
                raise reader.fail(where, f"cell {item} is type {kind}, expected a matrix")
            _check_matrix(reader, body, body + count, f"{where} cell {item}", depth + 1)
    elif array_class in (STRUCT, OBJECT):
        if array_class == OBJECT:
            kind, count, body, at = reader.tag(at, end, f"{where} class name")
        kind, count, body, at = reader.tag(at, end, f"{where} field name length")
        length = struct.unpack_from(reader.order + "i", reader.data, body)[0] if count >= 4 else 0
        kind, count, body, at = reader.tag(at, end, f"{where} field names")
        if length <= 0 or count % length:
            raise reader.fail(where, f"{count} bytes of field names do not divide into names of {length} bytes")
        for item in range(values * (count // length)):
            kind, count, body, at = reader.tag(at, end, f"{where} field {item}")
            if kind != MI_MATRIX:
                raise reader.fail(where, f"field {item} is type {kind}, expected a matrix")
            _check_matrix(reader, body, body + count, f"{where} field {item}", depth + 1)
    elif array_class == SPARSE:
        for part in ("row indices", "column indices", "real part") + (("imaginary part",) if is_complex else ()):
            kind, count, body, at = reader.tag(at, end, f"{where} {part}")
            if kind not in TYPE_SIZES or count % TYPE_SIZES[kind]:
                raise reader.fail(where, f"{part}: {count} bytes of type {kind}")
    elif array_class not in OPAQUE_CLASSES:
        raise reader.fail(where, f"unknown array class {array_class}")

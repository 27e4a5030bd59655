"""lightning_sarclip.data.matv5: valid MATLAB v5 files pass the structural check, inconsistent ones are refused
before SciPy's C reader (which a malformed file can crash) sees them."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from scipy.io import savemat

from lightning_sarclip.data.image import SARReadError
from lightning_sarclip.data.limits import set_limits
from lightning_sarclip.data.matv5 import HEADER_BYTES, check_mat_v5

RNG = np.random.default_rng(0)
VARIABLES = {
    "complex_img": RNG.normal(size=(9, 7)) + 1j * RNG.normal(size=(9, 7)),
    "az": np.array([[12.5]]), "name": "t72", "cell": np.array([[1, "a"]], dtype=object),
    "s": {"a": 1, "b": np.ones((2, 3), np.float32)}, "mask": np.eye(3, dtype=bool), "counts": np.arange(6, dtype=np.int16),
}


def _mat(compress: bool, variables: dict | None = None) -> bytes:
    buffer = io.BytesIO()
    savemat(buffer, variables or VARIABLES, do_compression=compress)
    return buffer.getvalue()


@pytest.mark.parametrize("compress", [False, True])
def test_valid_files_pass(compress: bool) -> None:
    check_mat_v5(_mat(compress), "ok.mat")


def test_a_truncated_file_is_refused_naming_the_element() -> None:
    data = _mat(False, {"img": VARIABLES["complex_img"]})  # what crashed SciPy 1.17 in fuzzing: a cut complex matrix
    with pytest.raises(SARReadError, match=r"bad\.mat: malformed MATLAB v5 file at element 0: element of type 14 "
                                           r"declares 1064 bytes, only 1024 left"):
        check_mat_v5(data[: len(data) - 40], "bad.mat")


def test_an_imaginary_part_shorter_than_its_dimensions_is_refused() -> None:
    data = bytearray(_mat(False, {"img": VARIABLES["complex_img"]}))
    imaginary = data.rindex(struct.pack("<II", 9, 63 * 8))  # the last miDOUBLE tag of 504 bytes
    data[imaginary + 4:imaginary + 8] = struct.pack("<I", 8 * 8)
    with pytest.raises(SARReadError, match=r"at element 0: imaginary part: 64 bytes of type 9 for 63 values"):
        check_mat_v5(bytes(data), "imag.mat")


def test_data_that_does_not_match_the_dimensions_is_refused() -> None:
    data = bytearray(_mat(False, {"img": np.zeros((4, 5))}))
    dims = struct.pack("<ii", 4, 5)
    at = data.index(dims, HEADER_BYTES)
    data[at:at + 8] = struct.pack("<ii", 400, 5)  # dims now claim 100x the values the data holds
    with pytest.raises(SARReadError, match=r"real part: 160 bytes of type 9 for 2000 values"):
        check_mat_v5(bytes(data), "dims.mat")


def test_an_element_longer_than_the_file_is_refused() -> None:
    data = bytearray(_mat(False, {"img": np.zeros((4, 5))}))
    data[HEADER_BYTES + 4:HEADER_BYTES + 8] = struct.pack("<I", 10**9)
    with pytest.raises(SARReadError, match="declares 1000000000 bytes"):
        check_mat_v5(bytes(data), "long.mat")


def test_a_compressed_element_is_inflated_within_the_member_limit() -> None:
    data = _mat(True, {"img": np.zeros((300, 300))})  # 720 KB inflated, a few KB on disk
    previous = set_limits(max_member_bytes=100_000)
    try:
        with pytest.raises(SARReadError, match="inflates past max_member_bytes = 100,000"):
            check_mat_v5(data, "zip.mat")
    finally:
        set_limits(max_member_bytes=previous.max_member_bytes)
    check_mat_v5(data, "zip.mat")


@pytest.mark.parametrize("data", [b"", b"MATLAB 5.0" + b" " * 200, b"\x00" * 127])
def test_not_a_v5_file(data: bytes) -> None:
    with pytest.raises(SARReadError, match="not a MATLAB v5 file"):
        check_mat_v5(data, "x.mat")

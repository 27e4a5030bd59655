"""The ``mstar_raw`` and ``mat`` image formats (lightning_sarclip.data.formats)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

import lightning_sarclip.data.formats  # noqa: F401  (registers the formats)
from lightning_sarclip.data.formats import parse_mstar_header
from lightning_sarclip.data.io import SARReadError, read_sar
from lightning_sarclip.data.records import ImageRef
from lightning_sarclip.data.transforms import build_policy
from tests.conftest import FIXTURES, REAL_SAR
from tests.data.mstar.data import chip_fields, phoenix_bytes

FIXTURE = (FIXTURES / "mstar/sdms/MSTAR_PUBLIC_TARGETS_CHIPS_T72_BMP2_BTR70_SLICY/TARGETS/TRAIN/"
           "17_DEG/BMP2/SN_9563/HB03333.000")
REAL_RAW = REAL_SAR / "mstar_raw_sample_huangshaoyin" / "viewchip" / "HB14931.015"


def _phoenix(tmp_path: Path, edit=None, rows: int = 3, cols: int = 4) -> tuple[Path, np.ndarray, np.ndarray]:
    fields = chip_fields("t72_tank", "132", 33.5, 17)
    fields.update(NumberOfRows=rows, NumberOfColumns=cols)
    magnitude = np.arange(rows * cols, dtype=np.float32).reshape(rows, cols) + 0.5
    phase = np.linspace(-3, 3, rows * cols, dtype=np.float32).reshape(rows, cols)
    data = phoenix_bytes(fields, magnitude, phase)
    if edit is not None:
        data = edit(data)
    path = tmp_path / "HB00001.000"
    path.write_bytes(data)
    return path, magnitude, phase


def test_mstar_raw_fixture_magnitude_and_typed_header() -> None:
    image = read_sar(ImageRef(str(FIXTURE), format="mstar_raw"))
    assert image.kind == "amplitude" and image.data.shape == (6, 8, 1) and image.data.dtype == np.float32
    header = image.meta["header"]
    assert header["NumberOfRows"] == 6 and header["NumberOfColumns"] == 8
    assert header["TargetType"] == "bmp2_tank" and header["TargetSerNum"] == "9563"
    assert header["TargetAz"] == pytest.approx(123.45) and isinstance(header["DesiredDepression"], int)
    assert header["PhoenixHeaderLength"] + 2 * 6 * 8 * 4 == FIXTURE.stat().st_size
    unit = build_policy({"name": "db_window", "low_db": -40, "high_db": 10})(image)
    assert unit.dtype == np.float32 and unit.shape == (1, 6, 8) and 0 <= unit.min() and unit.max() <= 1


def test_mstar_raw_blocks_row_major_and_complex(tmp_path: Path) -> None:
    path, magnitude, phase = _phoenix(tmp_path)
    image = read_sar(ImageRef(str(path), format="mstar_raw"))
    np.testing.assert_array_equal(image.data[:, :, 0], magnitude)
    complex_image = read_sar(ImageRef(str(path), format="mstar_raw", options=(("mstar_part", "complex"),)))
    assert complex_image.kind == "complex" and complex_image.data.dtype == np.complex64
    np.testing.assert_allclose(np.abs(complex_image.data[:, :, 0]), magnitude, rtol=1e-5)
    np.testing.assert_allclose(np.angle(complex_image.data[:, :, 0]), phase, atol=1e-5)
    with pytest.raises(SARReadError, match="mstar_part"):
        read_sar(ImageRef(str(path), format="mstar_raw", options=(("mstar_part", "phase"),)))


def test_parse_header_from_first_bytes_only() -> None:
    head = FIXTURE.read_bytes()[:1024]
    header = parse_mstar_header(head, "x")
    assert header["PhoenixVersion"] == "01.04" and header["Polarization"] == "HH"
    assert header["CenterFrequency"] == "9.599000 GHz" and header["CollectionDate"] == "19950905"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d[: d.index(b"[EndofPhoenixHeader]") - 5], "truncated MSTAR header"),
        (lambda d: d.replace(b"NumberOfRows= 3\n", b""), "NumberOfRows"),
        (lambda d: d.replace(b"NumberOfColumns= 4", b"NumberOfColumns= x"), "NumberOfColumns"),
        (lambda d: d[:-5], r"expected 96 bytes"),
        (lambda d: d[:-48], r"expected 96 bytes"),
        (lambda d: d.replace(b"[PhoenixHeaderVer01.04]", b"[SomethingElse]"), "not an MSTAR Phoenix file"),
    ],
)
def test_mstar_raw_malformed(tmp_path: Path, edit, message: str) -> None:
    path, _, _ = _phoenix(tmp_path, edit)
    with pytest.raises(SARReadError, match=message) as info:
        read_sar(ImageRef(str(path), format="mstar_raw"))
    assert str(path) in str(info.value)


def test_mstar_raw_refuses_16bit_clutter(tmp_path: Path) -> None:
    def as_uint16(data: bytes) -> bytes:
        start = data.index(b"PhoenixSigSize= ") + len(b"PhoenixSigSize= ")
        header_length = int(data[data.index(b"PhoenixHeaderLength= ") + 21:].split(b"\n")[0])
        size = header_length + 2 * 3 * 4 * 2
        return data[:start] + f"{size:010d}".encode() + data[start + 10:]

    path, _, _ = _phoenix(tmp_path, as_uint16)
    with pytest.raises(SARReadError, match="16-bit"):
        read_sar(ImageRef(str(path), format="mstar_raw"))


@pytest.mark.real_data
@pytest.mark.skipif(not REAL_RAW.exists(), reason="real MSTAR raw chip not available")
def test_real_mstar_raw_chip() -> None:
    image = read_sar(ImageRef(str(REAL_RAW), format="mstar_raw"))
    assert image.data.shape == (54, 54, 1) and image.kind == "amplitude"
    header = image.meta["header"]
    assert header["PhoenixHeaderLength"] == 1977 and header["TargetType"] == "slicey"
    assert header["DesiredDepression"] == 15 and header["TargetAz"] == pytest.approx(162.952271)
    assert 1.8 < float(image.data.max()) < 2.0
    head = REAL_RAW.read_bytes()[:4096]
    assert parse_mstar_header(head, str(REAL_RAW))["NumberOfColumns"] == 54


# ------------------------------------------------------------------------------------------------------------ mat


def _slc(rows: int = 5, cols: int = 7) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.normal(size=(rows, cols)) + 1j * rng.normal(size=(rows, cols))).astype(np.complex64)


def test_mat_v5_single_complex_image(tmp_path: Path) -> None:
    slc = _slc()
    path = tmp_path / "scene.mat"
    scipy.io.savemat(path, {"data": slc, "azimuth": np.array([[13.0]]), "name": "t72"})
    image = read_sar(ImageRef(str(path)))
    assert image.kind == "complex" and image.data.shape == (5, 7, 1) and image.meta["mat_key"] == "data"
    np.testing.assert_allclose(image.data[:, :, 0], slc)
    unit = build_policy("db_window")(image)
    assert unit.shape == (1, 5, 7) and unit.dtype == np.float32


def test_mat_v5_key_choice_and_stacking(tmp_path: Path) -> None:
    path = tmp_path / "quad.mat"
    arrays = {f"data_{p}": _slc(4, 4) * (i + 1) for i, p in enumerate(("hh", "hv", "vh", "vv"))}
    scipy.io.savemat(path, arrays)
    with pytest.raises(SARReadError, match=r"data_hh.*mat_key") as info:
        read_sar(ImageRef(str(path)))
    assert str(path) in str(info.value)
    one = read_sar(ImageRef(str(path), options=(("mat_key", "data_vh"),)))
    np.testing.assert_allclose(one.data[:, :, 0], arrays["data_vh"])
    quad = read_sar(ImageRef(str(path), options=(("mat_key", ("data_hh", "data_hv", "data_vh", "data_vv")),)))
    assert quad.data.shape == (4, 4, 4) and quad.kind == "complex"
    np.testing.assert_allclose(quad.data[:, :, 3], arrays["data_vv"])
    with pytest.raises(SARReadError, match=r"no variable 'data'; available keys: \['data_hh'"):
        read_sar(ImageRef(str(path), options=(("mat_key", "data"),)))


def test_mat_v5_real_and_integer_images(tmp_path: Path) -> None:
    path = tmp_path / "amp.mat"
    scipy.io.savemat(path, {"amp": np.ones((3, 4, 2)), "img8": np.full((3, 4), 7, np.uint8)})
    amp = read_sar(ImageRef(str(path), options=(("mat_key", "amp"),)))
    assert amp.kind == "float" and amp.data.dtype == np.float32 and amp.data.shape == (3, 4, 2)
    img8 = read_sar(ImageRef(str(path), options=(("mat_key", "img8"),)))
    assert img8.kind == "uint8"


def test_mat_no_image_or_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "meta.mat"
    scipy.io.savemat(path, {"azimuth": np.array([[13.0]]), "name": "x"})
    with pytest.raises(SARReadError, match=r"0 2-D/3-D numeric arrays"):
        read_sar(ImageRef(str(path)))
    with pytest.raises(SARReadError, match="not a 2-D/3-D numeric image"):
        read_sar(ImageRef(str(path), options=(("mat_key", "azimuth"),)))
    bad = tmp_path / "bad.mat"
    bad.write_bytes(b"MATLAB 5.0 MAT-file" + b"\x00" * 20)
    with pytest.raises(SARReadError, match="bad.mat"):
        read_sar(ImageRef(str(bad)))


def _write_v73(path: Path, variables: dict[str, np.ndarray]) -> None:
    """A MATLAB v7.3-style file: 512-byte text preamble, HDF5 datasets stored column-major (transposed),
    complex as a compound of ``real``/``imag``, ``MATLAB_class`` attributes."""
    with h5py.File(path, "w", userblock_size=512) as handle:
        for key, value in variables.items():
            if np.iscomplexobj(value):
                compound = np.dtype([("real", "<f4"), ("imag", "<f4")])
                stored = np.empty(value.T.shape, compound)
                stored["real"], stored["imag"] = value.T.real, value.T.imag
                handle.create_dataset(key, data=stored).attrs["MATLAB_class"] = np.bytes_("single")
            elif value.dtype.kind == "U":
                codes = np.array([[ord(c)] for c in str(value)], np.uint16)
                handle.create_dataset(key, data=codes).attrs["MATLAB_class"] = np.bytes_("char")
            else:
                handle.create_dataset(key, data=value.T).attrs["MATLAB_class"] = np.bytes_("double")
    with open(path, "r+b") as raw:
        raw.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(128, b" "))


def test_mat_v73_hdf5(tmp_path: Path) -> None:
    slc = _slc(3, 5)
    path = tmp_path / "v73.mat"
    _write_v73(path, {"data": slc, "label": np.array("ship"), "incidence": np.array([[30.0]])})
    image = read_sar(ImageRef(str(path)))
    assert image.kind == "complex" and image.data.shape == (3, 5, 1)
    np.testing.assert_allclose(image.data[:, :, 0], slc, rtol=1e-6)
    with pytest.raises(SARReadError, match=r"available keys: \['data', 'incidence', 'label'\]"):
        read_sar(ImageRef(str(path), options=(("mat_key", "missing"),)))

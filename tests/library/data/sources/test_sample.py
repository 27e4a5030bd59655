"""SAMPLE reader: .mat and PNG variants, name/.mat metadata, pairing ids, drift in the .mat variables."""

from __future__ import annotations

import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lightning_sarclip.data.io import SARReadError, read_sar
from lightning_sarclip.data.records import ImageRef
from lightning_sarclip.data.sources import DatasetNotFoundError, SourceFormatError, get_source
from lightning_sarclip.data.transforms import build_policy
from tests.conftest import FIXTURES
from tests.data.sample.data import mat_variables, savemat_fixed

DATA = FIXTURES / "sample"
SAMPLE = get_source("sample")
T72_REAL = "mat_files/real/t72/t72_real_A_elevDeg_016_azCenter_013_77_serial_812.mat"


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(DATA / "SAMPLE_dataset_public", tmp_path / "SAMPLE_dataset_public")
    return tmp_path / "SAMPLE_dataset_public"


def test_mat_records_labels_metadata_pairs() -> None:
    source = SAMPLE(DATA)
    records = list(source.records())
    assert len(records) == 4 and {r.split for r in records} == {"all"}
    assert Counter(r.label for r in records) == {"T72": 2, "2S1": 2}
    by_id = {r.source_id: r for r in records}
    real = by_id[T72_REAL]
    assert real.size == (8, 8) and real.image.format == "mat"
    meta = real.metadata
    assert meta["simulated"] is False and meta["serial"] == "812" and meta["band"] == "X"
    assert meta["azimuth_deg"] == pytest.approx(13.2) and meta["depression_deg"] == 16.0  # exact .mat angles
    assert meta["center_frequency_hz"] == pytest.approx(9.6e9) and meta["range_resolution_m"] == pytest.approx(0.3)
    assert meta["source_mstar_file"] == "HB00000.000" and meta["target_name"] == "t72"
    synth = by_id[T72_REAL.replace("real", "synth")]
    assert synth.metadata["simulated"] is True and synth.metadata["pair_id"] == meta["pair_id"]
    assert len({r.metadata["pair_id"] for r in records}) == 2
    assert [r.source_id for r in SAMPLE(DATA / "SAMPLE_dataset_public").records()] == list(by_id)


def test_images_read_and_convert() -> None:
    for image, kind in (("mat", "complex"), ("png_decibel", "uint8"), ("png_qpm", "uint8")):
        source = SAMPLE(DATA, image=image)
        policy = build_policy(source.default_policy)
        for record in source.records():
            pixels = read_sar(record.image)
            assert pixels.kind == kind and pixels.data.shape == (8, 8, 1)
            unit = policy(pixels)
            assert unit.dtype == np.float32 and unit.shape == (1, 8, 8) and 0 <= unit.min() <= unit.max() <= 1
    assert SAMPLE(DATA, image="png_qpm").default_policy == "integer"


def test_png_records_take_metadata_from_the_mat_or_the_name() -> None:
    with_mat = {r.source_id: r for r in SAMPLE(DATA, image="png_decibel", subsets=("synth",)).records()}
    record = with_mat["png_images/decibel/synth/2s1/2s1_synth_A_elevDeg_017_azCenter_045_22_serial_b01.png"]
    assert record.metadata["azimuth_deg"] == pytest.approx(45.6) and record.size == (8, 8)
    name_only = next(iter(SAMPLE(DATA, image="png_decibel", subsets=("synth",), read_mat_metadata=False).records()))
    assert name_only.metadata["azimuth_deg"] == 45.0 and name_only.size is None
    assert "center_frequency_hz" not in name_only.metadata


def test_extra_or_missing_mat_variables_are_rejected(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    variables = mat_variables("t72", 16, 13.2, np.ones((8, 8), np.complex64))
    variables["mask_vbjs"] = np.ones((8, 8))  # the explanation text names it, the release lacks it
    savemat_fixed(root / T72_REAL, variables)
    with pytest.raises(SourceFormatError, match=r"t72_real.*field 'variables'.*extra \['mask_vbjs'\]"):
        list(SAMPLE(root).records())
    del variables["mask_vbjs"], variables["elevation"]
    savemat_fixed(root / T72_REAL, variables)
    with pytest.raises(SourceFormatError, match=r"missing \['elevation'\]"):
        list(SAMPLE(root).records())


def test_malformed_names_folders_and_scalars(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    bad = root / "mat_files" / "real" / "t72" / "t72_real_elev16.mat"
    shutil.copy(root / T72_REAL, bad)
    with pytest.raises(SourceFormatError, match=r"t72_real_elev16.mat: field 'file name'"):
        list(SAMPLE(root).records())
    bad.unlink()
    moved = root / "mat_files" / "real" / "t72" / "bmp2_real_A_elevDeg_016_azCenter_013_77_serial_812.mat"
    shutil.copy(root / T72_REAL, moved)
    with pytest.raises(SourceFormatError, match=r"field 'file name': expected class 't72'"):
        list(SAMPLE(root).records())
    moved.unlink()
    (root / "mat_files" / "real" / "m1a2").mkdir()
    with pytest.raises(SourceFormatError, match=r"m1a2: field 'class folder'"):
        list(SAMPLE(root).records())
    (root / "mat_files" / "real" / "m1a2").rmdir()
    variables = mat_variables("t72", 16, 13.2, np.ones((8, 8), np.complex64))
    variables["azimuth"] = np.array([[1.0, 2.0]])
    savemat_fixed(root / T72_REAL, variables)
    with pytest.raises(SourceFormatError, match=r"field 'azimuth': expected a 1x1 value"):
        list(SAMPLE(root).records())


def test_missing_root_tree_and_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"mat_files/\{real,synth\}"):
        SAMPLE(tmp_path / "nope")
    with pytest.raises(DatasetNotFoundError, match="png_images/qpm"):
        SAMPLE(tmp_path, image="png_qpm")
    with pytest.raises(ValueError, match="split"):
        SAMPLE(DATA, split="train")
    with pytest.raises(ValueError, match="subsets"):
        SAMPLE(DATA, subsets=("simulated",))


def test_missing_or_corrupt_images(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / T72_REAL).write_bytes(b"MATLAB 5.0 MAT-file garbage")
    with pytest.raises(SourceFormatError, match=r"field 'MATLAB file'"):
        list(SAMPLE(root).records())
    record = next(r for r in SAMPLE(root, read_mat_metadata=False).records() if r.source_id == T72_REAL)
    with pytest.raises(SARReadError, match="t72_real"):
        read_sar(record.image)
    (root / T72_REAL).unlink()
    with pytest.raises(SARReadError, match="image file not found"):
        read_sar(record.image)
    archive = tmp_path / "sample.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("../evil.mat", b"")
    with pytest.raises(SARReadError, match="unsafe archive member"):
        read_sar(ImageRef(str(archive), member="../evil.mat"))

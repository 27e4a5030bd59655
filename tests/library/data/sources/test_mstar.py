"""MSTAR reader: SDMS CD trees (raw Phoenix chips), class-folder JPEG and raw redistributions, real chips."""

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
from lightning_sarclip.data.sources.mstar import SOC_CLASSES, canonical_class
from lightning_sarclip.data.transforms import build_policy
from tests.conftest import FIXTURES, REAL_SAR
from tests.data.mstar.data import chip_fields, phoenix_bytes

DATA = FIXTURES / "mstar"
MSTAR = get_source("mstar")
REAL_JPEG = REAL_SAR / "mstar_soc_hunterlew" / "classification" / "caffe" / "data" / "mstar"
REAL_RAW = REAL_SAR / "mstar_raw_sample_huangshaoyin" / "viewchip" / "HB14931.015"


def _records(root: Path, split: str = "all", **kwargs):
    source = MSTAR(root, split=split, **kwargs)
    return source, list(source.records())


def test_canonical_class_table() -> None:
    assert [canonical_class(t) for t in ("bmp2_tank", "zsu23-4_gun", "brdm2_truck", "BTR_60", "ZSU234", "slicey")] == [
        "BMP2", "ZSU_23_4", "BRDM_2", "BTR60", "ZSU_23_4", "SLICY"]
    assert canonical_class("m1_tank") is None


def test_sdms_soc_splits_labels_metadata() -> None:
    source, records = _records(DATA / "sdms")
    assert source.layout == "sdms" and source.default_policy["name"] == "db_window"
    by_id = {r.source_id: r for r in records}
    assert Counter(r.split for r in records) == {"train": 3, "test": 2}
    bmp2 = by_id["MSTAR_PUBLIC_TARGETS_CHIPS_T72_BMP2_BTR70_SLICY/TARGETS/TRAIN/17_DEG/BMP2/SN_9563/HB03333.000"]
    assert bmp2.labels == ["BMP2"] and bmp2.split == "train" and bmp2.size == (8, 6)
    assert bmp2.metadata["serial"] == "9563" and bmp2.metadata["azimuth_deg"] == pytest.approx(123.45)
    assert bmp2.metadata["depression_deg"] == 17 and bmp2.metadata["measured_depression_deg"] == pytest.approx(17.13)
    assert bmp2.metadata["polarization"] == "HH" and bmp2.metadata["band"] == "X"
    assert bmp2.metadata["resolution_m"] == 0.3 and bmp2.metadata["center_frequency_ghz"] == pytest.approx(9.599)
    zsu = by_id["MSTAR_PUBLIC_MIXED_TARGETS_CD2/17_DEG/COL2/SCENE1/ZSU_23_4/HB14990.026"]
    assert zsu.labels == ["ZSU_23_4"] and zsu.metadata["serial"] == "d08"
    assert {r.label for r in records if r.split == "test"} == {"2S1", "BMP2"}
    # decoys, the 30 deg chip, the SLICY chip and the off-protocol BMP2 serial are skipped and counted
    assert source.skipped["side file (.JPG/.HTM/.hdr ...)"] == 2
    assert source.skipped["not in the SOC protocol (depression 30 deg)"] == 1
    assert source.skipped["not an SOC class (SLICY)"] == 1 and source.skipped["not an SOC serial (BMP2 9566)"] == 1
    assert [r.source_id for r in _records(DATA / "sdms")[1]] == [r.source_id for r in records]  # stable ids


def test_sdms_split_selection_and_protocols() -> None:
    assert {r.split for r in _records(DATA / "sdms", "train")[1]} == {"train"}
    test = _records(DATA / "sdms", "test", protocol="soc_all_serials")[1]
    assert Counter(r.label for r in test) == {"BMP2": 2, "2S1": 1}
    everything = _records(DATA / "sdms", protocol="all")[1]
    assert len(everything) == 8 and {r.split for r in everything} == {"all"}
    assert "SLICY" in {r.label for r in everything}
    with pytest.raises(ValueError, match="split='all'"):
        MSTAR(DATA / "sdms", split="train", protocol="all")
    # a single CD folder can be the root as well
    single = _records(DATA / "sdms" / "MSTAR_PUBLIC_MIXED_TARGETS_CD2")[1]
    assert [r.source_id for r in single] == ["17_DEG/COL2/SCENE1/2S1/HB14931.000",
                                             "17_DEG/COL2/SCENE1/ZSU_23_4/HB14990.026"]


def test_sdms_images_read_and_convert() -> None:
    source, records = _records(DATA / "sdms")
    policy = build_policy(source.default_policy)
    for record in records:
        image = read_sar(record.image)
        assert image.kind == "amplitude" and (image.width, image.height) == record.size
        unit = policy(image)
        assert unit.dtype == np.float32 and unit.shape == (1, 6, 8) and 0 <= unit.min() <= unit.max() <= 1
        # the bright 1.5 "target" (+3.5 dB) lands at (3.52 + 40) / 50 in the -40..10 dB window
        assert unit.max() == pytest.approx((20 * np.log10(1.5) + 40) / 50, abs=1e-4)


def test_jpeg_folders_index_classes() -> None:
    source, records = _records(DATA / "jpeg_folders")
    assert source.layout == "jpeg_folders" and source.default_policy == "integer"
    assert Counter((r.split, r.label) for r in records) == {
        ("train", "BMP2"): 2, ("train", "ZSU_23_4"): 2, ("test", "BMP2"): 2, ("test", "ZSU_23_4"): 2}
    record = next(r for r in records if r.split == "test")
    assert record.source_id == "val/1/10000.jpeg" and record.metadata["depression_deg"] == 15
    unit = build_policy(source.default_policy)(read_sar(record.image))
    assert unit.shape == (1, 16, 16) and unit.dtype == np.float32 and 0 <= unit.min() <= unit.max() <= 1


def test_raw_folders() -> None:
    source, records = _records(DATA / "raw_folders")
    assert source.layout == "raw_folders"
    assert [(r.split, r.label, r.metadata["depression_deg"]) for r in records] == [("test", "T72", 15),
                                                                                   ("train", "T72", 17)]


def test_missing_root_and_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="MSTAR_PUBLIC_MIXED_TARGETS_CD1"):
        MSTAR(tmp_path / "nope")
    (tmp_path / "something").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"train,test\|val"):
        MSTAR(tmp_path)


def test_ambiguous_layouts(tmp_path: Path) -> None:
    shutil.copytree(DATA / "jpeg_folders", tmp_path / "both")
    (tmp_path / "both" / "MSTAR_PUBLIC_MIXED_TARGETS_CD1").mkdir()
    with pytest.raises(DatasetNotFoundError, match="layout="):
        MSTAR(tmp_path / "both")
    assert MSTAR(tmp_path / "both", layout="jpeg_folders").layout == "jpeg_folders"
    shutil.copytree(DATA / "jpeg_folders", tmp_path / "tv")
    shutil.copytree(DATA / "jpeg_folders" / "val", tmp_path / "tv" / "test")
    with pytest.raises(DatasetNotFoundError, match="both test/ and val/"):
        MSTAR(tmp_path / "tv")


def test_malformed_headers_and_folders(tmp_path: Path) -> None:
    chip = tmp_path / "MSTAR_PUBLIC_MIXED_TARGETS_CD2" / "17_DEG" / "COL2" / "SCENE1" / "M1" / "HB00001.000"
    chip.parent.mkdir(parents=True)
    fields = chip_fields("m1_tank", "x", 1.0, 17)
    fields.update(NumberOfRows=2, NumberOfColumns=2)
    chip.write_bytes(phoenix_bytes(fields, np.ones((2, 2)), np.zeros((2, 2))))
    with pytest.raises(SourceFormatError, match=r"HB00001.000: field 'TargetType'.*found 'm1_tank'"):
        list(MSTAR(tmp_path, split="all").records())
    chip.write_bytes(b"\n[PhoenixHeaderVer01.04]\nPhoenixHeaderLength= 00100\n")
    with pytest.raises(SourceFormatError, match=r"HB00001.000: field 'Phoenix header'.*truncated"):
        list(MSTAR(tmp_path, split="all").records())
    folders = tmp_path / "folders"
    shutil.copytree(DATA / "jpeg_folders", folders)
    (folders / "train" / "1").rename(folders / "train" / "12")
    with pytest.raises(SourceFormatError, match=r"train/12: field 'class folder'"):
        list(MSTAR(folders, split="train").records())


def test_raw_folder_label_mismatch(tmp_path: Path) -> None:
    shutil.copytree(DATA / "raw_folders", tmp_path / "raw")
    (tmp_path / "raw" / "train" / "T72").rename(tmp_path / "raw" / "train" / "T62")
    with pytest.raises(SourceFormatError, match=r"field 'TargetType': expected a T62 chip"):
        list(MSTAR(tmp_path / "raw", split="train").records())
    chip = tmp_path / "raw" / "test" / "T72" / "HB01501.000"
    chip.write_bytes(chip.read_bytes().replace(b"NumberOfRows= 6\n", b""))
    with pytest.raises(SourceFormatError, match=r"HB01501.000: field 'Phoenix header'.*NumberOfRows"):
        list(MSTAR(tmp_path / "raw", split="test").records())


def test_corrupt_image_and_unsafe_member(tmp_path: Path) -> None:
    shutil.copytree(DATA / "jpeg_folders", tmp_path / "j")
    target = tmp_path / "j" / "train" / "1" / "10000.jpeg"
    target.write_bytes(b"\xff\xd8 broken")
    record = next(r for r in MSTAR(tmp_path / "j").records() if r.image.path == str(target))
    with pytest.raises(SARReadError, match="10000.jpeg"):
        read_sar(record.image)
    archive = tmp_path / "chips.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("../HB03333.000", (DATA / "sdms" / "MSTAR_PUBLIC_MIXED_TARGETS_CD2" / "17_DEG" / "COL2" /
                                           "SCENE1" / "2S1" / "HB14931.000").read_bytes())
    with pytest.raises(SARReadError, match="unsafe archive member"):
        read_sar(ImageRef(str(archive), member="../HB03333.000", format="mstar_raw"))


@pytest.mark.real_data
@pytest.mark.skipif(not REAL_JPEG.exists(), reason="real MSTAR JPEG chips not available")
def test_real_jpeg_chips_map_to_soc_classes() -> None:
    source, records = _records(REAL_JPEG)
    assert source.layout == "jpeg_folders" and len(records) == 1200 and not source.skipped
    counts = Counter((r.split, r.label) for r in records)
    assert counts == {(split, name): 60 for split in ("train", "test") for name in SOC_CLASSES}
    index_of = {r.source_id: r.label for r in records}
    assert index_of["train/0/00001.jpeg"] == "2S1" and index_of["val/9/190001.jpeg"] == "ZSU_23_4"
    policy = build_policy(source.default_policy)
    for record in records[::200]:
        unit = policy(read_sar(record.image))
        assert unit.shape == (1, 128, 128) and unit.dtype == np.float32 and 0 <= unit.min() <= unit.max() <= 1


@pytest.mark.real_data
@pytest.mark.skipif(not REAL_RAW.exists(), reason="real MSTAR raw chip not available")
def test_real_raw_chip_in_an_sdms_tree(tmp_path: Path) -> None:
    cd = tmp_path / "MSTAR_PUBLIC_MIXED_TARGETS_CD1" / "15_DEG" / "COL2" / "SCENE1" / "SLICY"
    cd.mkdir(parents=True)
    (cd / REAL_RAW.name).symlink_to(REAL_RAW)
    with pytest.raises(SourceFormatError, match="allowed_roots"):  # the link leaves the root
        _records(tmp_path, protocol="all")
    source, records = _records(tmp_path, protocol="all", allowed_roots=[REAL_RAW.parent])
    assert len(records) == 1 and records[0].labels == ["SLICY"] and records[0].size == (54, 54)
    assert records[0].metadata["depression_deg"] == 15 and records[0].metadata["azimuth_deg"] == pytest.approx(162.952271)
    assert read_sar(records[0].image).data.shape == (54, 54, 1)
    soc = MSTAR(tmp_path, split="all", allowed_roots=[REAL_RAW.parent])
    assert list(soc.records()) == [] and soc.skipped["not an SOC class (SLICY)"] == 1

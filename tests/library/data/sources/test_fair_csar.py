"""FAIR-CSAR reader on the tiny fixture (tests/data/fair_csar/data.py): SLC .mat refs, DOTA boxes, METAXml."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from lightning_sarclip.data.io import SARReadError, read_sar
from lightning_sarclip.data.sources import DatasetNotFoundError, SourceFormatError, get_source
from lightning_sarclip.data.transforms import build_policy
from tests.conftest import FIXTURES

FIXTURE = FIXTURES / "fair_csar"
FAIR = get_source("fair_csar")
TRAIN_STEM = "GF3_KAS_SL_000001_E0.0_N0.0_20220101_L1A_HH_L10000000001_00000_00000"


def _records(root: Path, split: str = "all", **kwargs) -> list:
    return list(FAIR(root, split, **kwargs).records())


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE / "FAIR-CSAR", tmp_path / "FAIR-CSAR")
    return tmp_path / "FAIR-CSAR"


def test_records_ids_and_image_refs() -> None:
    assert len(_records(FIXTURE, "train")) == 1 and len(_records(FIXTURE, "test")) == 1
    train, test = _records(FIXTURE)
    assert (train.split, train.source_id) == ("train", f"train/{TRAIN_STEM}")
    assert test.source_id.startswith("test/GF3_KAS_SL_000002_")
    assert train.image.format == "mat" and train.image.option("mat_key") == "data"
    assert train.image.path.endswith(f"train/SLCMats/{TRAIN_STEM}.mat")
    assert train.size == (16, 16) and train.labels == []


def test_rotated_boxes_from_dota_lines() -> None:
    boxes = _records(FIXTURE, "train")[0].boxes  # the 'imagesize 16 16' header line is skipped
    assert [b.label for b in boxes] == ["Boeing737", "Oil_Tanker"]
    plane, tanker = boxes
    assert (plane.x0, plane.y0, plane.x1, plane.y1, plane.angle, plane.difficult) == (2, 2, 8, 5, 0.0, False)
    # corners (10,9) (14,13) (12,15) (8,11): centre (11,12), w = 4*sqrt(2) along 45 degrees, h = 2*sqrt(2)
    assert tanker.center == pytest.approx((11.0, 12.0)) and tanker.angle == pytest.approx(45.0)
    assert (tanker.width, tanker.height) == (pytest.approx(4 * math.sqrt(2)), pytest.approx(2 * math.sqrt(2)))
    assert tanker.difficult


def test_metadata_from_meta_xml_and_stem() -> None:
    meta = _records(FIXTURE, "train")[0].metadata
    assert meta["sensor"] == "Gaofen-3" and meta["band"] == "C" and meta["polarization"] == "HH"
    assert meta["imaging_mode"] == "spotlight" and meta["subset"] == "SL"
    assert meta["resolution_m"] == 1.0 and meta["incidence_deg"] == 35.5 and meta["look_direction"] == "R"
    assert meta["acquisition_date"] == "2022-01-01" and meta["sub_category"] == "Boeing737"
    assert meta["azimuth_start"] == 0 and meta["center_frequency"] == 5.4
    assert meta["corners"][0] == (139.70, 35.50) and "width" not in meta
    assert set(FAIR.caption_fields) <= set(meta)


def test_slc_and_png_images_read_and_convert() -> None:
    train = _records(FIXTURE, "train")[0]
    image = read_sar(train.image)
    assert image.kind == "complex" and (image.width, image.height) == (16, 16)
    array = build_policy(FAIR.default_policy)(image)
    assert array.shape == (1, 16, 16) and array.dtype == np.float32 and 0 <= array.min() and array.max() <= 1
    source = FAIR(FIXTURE, "train", image="png")
    (record,) = list(source.records())
    png = build_policy(source.default_policy)(read_sar(record.image))
    assert record.image.format is None and png.shape == (1, 16, 16) and png.max() <= 1
    assert record.source_id == train.source_id


def test_mdnet_style_trainval_annfiles(copy: Path) -> None:
    (copy / "train").rename(copy / "trainval")
    (copy / "trainval" / "Annotations").rename(copy / "trainval" / "annfiles")
    (record,) = _records(copy.parent, "train")
    assert record.split == "train" and record.source_id == f"trainval/{TRAIN_STEM}" and len(record.boxes) == 2


def test_missing_root_layout_and_split(tmp_path: Path, copy: Path) -> None:
    with pytest.raises(ValueError, match="image"):
        FAIR(FIXTURE, "train", image="tif")
    with pytest.raises(DatasetNotFoundError, match="SLCMats"):
        FAIR(tmp_path / "none", "train")
    shutil.rmtree(copy / "test")
    assert len(_records(copy, "train")) == 1
    with pytest.raises(DatasetNotFoundError, match="no test/"):
        _records(copy, "test")


def test_malformed_annotation_lines(copy: Path) -> None:
    path = copy / "train" / "Annotations" / f"{TRAIN_STEM}.txt"
    path.write_text("2 2 8 2 8 5 2 5 Boeing999 0\n")
    with pytest.raises(SourceFormatError, match=r"\.txt: field 'line 1 class'.*Boeing999"):
        _records(copy, "train")
    path.write_text("2 2 8 2 8 5 Boeing737 0\n")
    with pytest.raises(SourceFormatError, match=r"\.txt: field 'line 1'"):
        _records(copy, "train")


def test_meta_xml_missing_or_malformed(copy: Path) -> None:
    meta = copy / "train" / "METAXmls" / f"{TRAIN_STEM}.xml"
    meta.write_text("<root><width>sixteen</width></root>")
    with pytest.raises(SourceFormatError, match=r"\.xml: field 'width'"):
        _records(copy, "train")
    meta.unlink()
    source = FAIR(copy, "train")
    (record,) = list(source.records())
    assert record.size is None and source.skipped == {"patch without METAXml": 1}


def test_annotation_whose_image_is_missing_and_corrupt_mat(copy: Path) -> None:
    mat = copy / "train" / "SLCMats" / f"{TRAIN_STEM}.mat"
    mat.write_bytes(b"MATLAB 5.0 nonsense")
    (record,) = _records(copy, "train")
    with pytest.raises(SARReadError, match=f"{TRAIN_STEM}.mat"):
        read_sar(record.image)
    mat.unlink()
    with pytest.raises(SourceFormatError, match=rf"{TRAIN_STEM}\.txt: field 'image'.*SLCMats"):
        _records(copy, "train")

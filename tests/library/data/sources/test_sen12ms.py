"""SEN12MS reader: official lists, multi-label IGBP from the lc raster, the damaged patch, and bad inputs."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tifffile

from lightning_sarclip.data.io import SARReadError, read_sar
from lightning_sarclip.data.records import ImageRef
from lightning_sarclip.data.sources import DatasetNotFoundError, SourceFormatError, get_source
from lightning_sarclip.data.sources.sen12ms import FULL_TO_SIMPLE, IGBP_FULL, IGBP_SIMPLE
from lightning_sarclip.data.transforms import build_policy
from tests.conftest import FIXTURES

FIXTURE = FIXTURES / "sen12ms"
DAMAGED = "known damaged S1 patch (NaN values), not in the official lists"
P1 = ["Water", "Urban/Built-up", "Grassland"]
P2 = ["Croplands", "Forest"]

SEN12MS = get_source("sen12ms")


def records(root: Path = FIXTURE, **kwargs):
    source = SEN12MS(root, **kwargs)
    return source, list(source.records())


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE, tmp_path / "sen12ms", ignore=shutil.ignore_patterns("*.py"))
    return tmp_path / "sen12ms"


def test_official_splits_and_labels():
    source, train = records(split="train")
    _, test = records(split="test")
    assert len(train) == 6 and len(test) == 2 and source.skipped == Counter({DAMAGED: 1})
    assert {r.metadata["season"] for r in test} == {"winter"} and all(r.split == "test" for r in test)
    assert [r.labels for r in train[:2]] == [P1, P2]
    assert train[0].source_id == "ROIs1158_spring/s1_1/ROIs1158_spring_s1_1_p1.tif"
    _, everything = records(split="all")
    assert Counter(r.split for r in everything) == Counter({"train": 6, "test": 2})
    assert [r.source_id for r in records(split="all")[1]] == [r.source_id for r in everything]


def test_metadata_and_fractions():
    record = records(split="train")[1][1]
    meta = record.metadata
    assert meta["land_cover_fractions"] == {"Croplands": 0.75, "Forest": 0.25}
    assert meta["unlabelled_fraction"] == 0.0 and meta["land_cover_scheme"] == "IGBP simplified"
    assert meta["sensor"] == "Sentinel-1" and meta["band"] == "C" and meta["polarization"] == "VV+VH"
    assert meta["resolution_m"] == 10.0 and meta["roi"] == "ROIs1158" and meta["season"] == "spring"
    assert meta["scene"] == 1 and meta["patch"] == 2 and meta["lc_file"] == "ROIs1158_spring/lc_1/ROIs1158_spring_lc_1_p2.tif"
    assert record.size == (16, 16) and all(key in meta for key in SEN12MS.caption_fields)


def test_full_scheme_and_threshold():
    full = records(split="test", scheme="full")
    assert full[0].classnames == IGBP_FULL and SEN12MS.classnames == IGBP_SIMPLE
    assert full[1][1].labels == ["Croplands", "Cropland/Natural Vegetation Mosaics", "Mixed Forests"]
    assert full[1][1].metadata["land_cover_fractions"]["Evergreen Needleleaf Forests"] == 0.0625
    assert records(split="test", threshold=0.2)[1][0].labels == ["Water", "Urban/Built-up"]
    assert records(split="test", threshold=0.9)[1][1].labels == ["Croplands"]  # the dominant class always
    assert sorted(set(FULL_TO_SIMPLE.values())) == list(range(10)) and len(FULL_TO_SIMPLE) == 17


def test_images_are_db_and_convert_to_unit_float():
    source, recs = records(split="all")
    policy = build_policy(source.default_policy)
    for record in recs:
        image = read_sar(record.image)
        assert image.kind == "db" and image.data.shape == (16, 16, 2) and image.data.dtype == np.float32
        array = policy(image)
        assert array.shape == (2, 16, 16) and array.dtype == np.float32 and 0.0 <= array.min() <= array.max() <= 1.0
    damaged = FIXTURE / "ROIs1868_summer" / "s1_146" / "ROIs1868_summer_s1_146_p202.tif"
    image = read_sar(ImageRef(str(damaged), format="sen12ms_s1"))
    assert image.meta["nonfinite_pixels"] == 32 and np.isfinite(policy(image)).all()


def test_without_lists_only_all(copy: Path):
    (copy / "train_list.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="train_list.txt"):
        records(copy, split="test")
    source, recs = records(copy, split="all")
    assert len(recs) == 8 and {r.split for r in recs} == {"all"} and source.skipped == Counter({DAMAGED: 1})


def test_missing_root_and_wrong_tree(tmp_path: Path):
    with pytest.raises(DatasetNotFoundError, match="ROIs"):
        SEN12MS(tmp_path / "missing")
    with pytest.raises(DatasetNotFoundError, match="ROIs"):
        records(tmp_path)
    with pytest.raises(ValueError, match="split"):
        SEN12MS(FIXTURE, split="val")


def test_malformed_lists_name_file_and_line(copy: Path):
    (copy / "test_list.txt").write_text("ROIs2017_winter_s2_1_p1.tif\nwinter p2\n")
    with pytest.raises(SourceFormatError, match="test_list.txt") as err:
        records(copy, split="test")
    assert err.value.field == "line 2"
    (copy / "test_list.txt").write_text("ROIs1158_spring_s2_1_p1.tif\n")
    with pytest.raises(SourceFormatError, match="one split list"):
        records(copy, split="test")


def test_missing_files_are_counted(copy: Path):
    (copy / "ROIs1158_spring" / "lc_1" / "ROIs1158_spring_lc_1_p1.tif").unlink()
    (copy / "ROIs1868_summer" / "s1_1" / "ROIs1868_summer_s1_1_p2.tif").unlink()
    source, recs = records(copy, split="train")
    assert len(recs) == 4
    assert source.skipped == Counter({DAMAGED: 1, "S1 patch without its lc patch": 1,
                                      "listed patch has no S1 file": 1})
    shutil.rmtree(copy / "ROIs1970_fall" / "lc_1")
    with pytest.raises(DatasetNotFoundError, match="ROIs1970_fall_lc.tar.gz"):
        records(copy, split="train")


def test_bad_land_cover_and_image(copy: Path):
    lc = copy / "ROIs2017_winter" / "lc_1" / "ROIs2017_winter_lc_1_p1.tif"
    tifffile.imwrite(lc, np.zeros((16, 16, 4), np.float32), photometric="minisblack", planarconfig="contig")
    with pytest.raises(SourceFormatError, match="IGBP") as err:
        records(copy, split="test")
    assert err.value.file == str(lc)
    lc.write_bytes(b"II*\x00not a tiff")
    with pytest.raises(SourceFormatError, match="ROIs2017_winter_lc_1_p1.tif"):
        records(copy, split="test")
    tifffile.imwrite(lc, np.full((16, 16, 4), 255, np.uint16), photometric="minisblack", planarconfig="contig")
    source, recs = records(copy, split="test")
    assert len(recs) == 1 and source.skipped["lc patch has no IGBP class 1-17"] == 1
    s1 = copy / "ROIs2017_winter" / "s1_1" / "ROIs2017_winter_s1_1_p2.tif"
    s1.write_bytes(b"II*\x00broken")
    with pytest.raises(SARReadError, match="ROIs2017_winter_s1_1_p2.tif"):
        read_sar(recs[0].image)
    tifffile.imwrite(s1, np.zeros((16, 16), np.float32))
    with pytest.raises(SARReadError, match="2 float bands"):
        read_sar(recs[0].image)


def test_source_dataset_items():
    from lightning_sarclip.data.source_dataset import SourceDataset

    dataset = SourceDataset("sen12ms", str(FIXTURE), split="test", image_size=8, in_chans=2, n_captions=1)
    item = dataset[0]
    assert len(dataset) == 2 and dataset.classnames == IGBP_SIMPLE
    assert item["image"].shape == (2, 8, 8) and item["label"] == -1  # multi-label: no single index

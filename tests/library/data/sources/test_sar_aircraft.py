"""SAR-AIRcraft-1.0 reader on the tiny VOC fixture (tests/data/sar_aircraft/data.py) and on broken copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lightning_sarclip.data.io import SARReadError, read_sar
from lightning_sarclip.data.records import Box
from lightning_sarclip.data.sources import DatasetNotFoundError, SourceFormatError, get_source
from lightning_sarclip.data.transforms import build_policy
from tests.conftest import FIXTURES

FIXTURE = FIXTURES / "sar_aircraft"
Aircraft = get_source("sar_aircraft")


def _records(root: Path, split: str = "all") -> list:
    return list(Aircraft(root, split).records())


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE / "SAR-AIRcraft-1.0", tmp_path / "SAR-AIRcraft-1.0")
    return tmp_path / "SAR-AIRcraft-1.0"


def test_counts_and_ids() -> None:
    assert {s: len(_records(FIXTURE, s)) for s in ("train", "val", "test")} == {"train": 2, "val": 1, "test": 1}
    records = _records(FIXTURE)
    assert [(r.split, r.source_id) for r in records] == [
        ("train", "JPEGImages/1.jpg"), ("train", "JPEGImages/2.jpg"), ("val", "JPEGImages/3.jpg"),
        ("test", "JPEGImages/4.jpg"),
    ]
    assert [r.source_id for r in _records(FIXTURE / "SAR-AIRcraft-1.0")] == [r.source_id for r in records]


def test_boxes_classes_and_metadata() -> None:
    source = Aircraft(FIXTURE, "all")
    first, second, third, fourth = list(source.records())
    assert first.boxes == [Box("A320/321", 2, 2, 12, 12), Box("Boeing737", 18, 4, 28, 14)]
    assert second.boxes == [Box("other", 20, 20, 30, 30, difficult=True)]
    assert third.boxes[1] == Box("ARJ21", 24, 26, 32, 32)  # clipped to the 32x32 image
    assert source.skipped == {"box clipped to image": 1}
    assert {b.label for r in (first, second, third, fourth) for b in r.boxes} == set(Aircraft.classnames)
    assert first.metadata == {"sensor": "Gaofen-3", "band": "C", "resolution_m": 1.0, "imaging_mode": "spotlight"}
    assert set(Aircraft.caption_fields) <= set(first.metadata)
    assert first.size == (32, 32) and first.labels == []


def test_images_read_and_convert() -> None:
    policy = build_policy(Aircraft.default_policy)
    for record in _records(FIXTURE):
        array = policy(read_sar(record.image))
        assert array.shape == (1, 32, 32) and array.dtype == np.float32 and 0 <= array.min() and array.max() <= 1


def test_missing_root_and_split_list(tmp_path: Path, copy: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"ImageSets/Main/\{train,val,test\}.txt"):
        Aircraft(tmp_path / "none", "train")
    (copy / "ImageSets" / "Main" / "val.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="val.txt"):
        _records(copy, "val")


def test_split_list_id_escaping_root(copy: Path) -> None:
    (copy / "ImageSets" / "Main" / "test.txt").write_text("../../outside\n")
    with pytest.raises(SourceFormatError, match=r"test\.txt: field 'line 1'"):
        _records(copy, "test")


def test_split_list_id_without_annotation(copy: Path) -> None:
    (copy / "ImageSets" / "Main" / "test.txt").write_text("4\n5\n")
    with pytest.raises(SourceFormatError, match=r"test\.txt: field 'line 2'.*'5'"):
        _records(copy, "test")


def test_unknown_class(copy: Path) -> None:
    path = copy / "Annotations" / "4.xml"
    path.write_text(path.read_text().replace("Boeing787", "Boeing747"))
    with pytest.raises(SourceFormatError, match=r"4\.xml: field 'object\[0\]/name'.*Boeing747"):
        _records(copy, "test")


def test_missing_and_corrupt_image(copy: Path) -> None:
    image = copy / "JPEGImages" / "4.jpg"
    image.write_bytes(b"\xff\xd8\xff")
    (record,) = _records(copy, "test")
    with pytest.raises(SARReadError, match="4.jpg"):
        read_sar(record.image)
    image.unlink()
    with pytest.raises(SourceFormatError, match=r"4\.xml: field 'image'"):
        _records(copy, "test")

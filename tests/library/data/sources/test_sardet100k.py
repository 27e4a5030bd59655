"""SARDet-100K reader on the tiny COCO fixture (tests/data/sardet100k/data.py) and on broken copies of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lightning_sarclip.data.io import SARReadError, read_sar
from lightning_sarclip.data.records import Box
from lightning_sarclip.data.sources import DatasetNotFoundError, SourceFormatError, get_source
from lightning_sarclip.data.transforms import build_policy
from tests.conftest import FIXTURES

FIXTURE = FIXTURES / "sardet100k"
SARDet = get_source("sardet100k")


def _records(root: Path, split: str = "all", **kwargs) -> list:
    return list(SARDet(root, split, **kwargs).records())


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE / "SARDet_100K", tmp_path / "SARDet_100K")
    return tmp_path / "SARDet_100K"


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_counts_splits_and_ids() -> None:
    counts = {split: len(_records(FIXTURE, split)) for split in ("train", "val", "test")}
    assert counts == {"train": 3, "val": 1, "test": 1}
    records = _records(FIXTURE)
    assert [r.source_id for r in records] == [
        "JPEGImages/train/0000001.jpg", "JPEGImages/train/0000002.png", "JPEGImages/train/0000003.bmp",
        "JPEGImages/val/0000004.jpg", "JPEGImages/test/0000005.png",
    ]
    # the wrapper folder and the dataset folder itself give the same, stable ids
    assert [r.source_id for r in _records(FIXTURE / "SARDet_100K")] == [r.source_id for r in records]
    assert all(r.source == "sardet100k" and r.labels == [] for r in records)


def test_boxes_ignore_and_clipping() -> None:
    source = SARDet(FIXTURE, "train")
    first, second, third = list(source.records())
    # the ignore=1 tank annotation is left out and counted
    assert first.boxes == [Box("ship", 2, 3, 8, 13), Box("ship", 20, 20, 28, 28)]
    assert first.size == (32, 32) and second.size == (32, 24)
    # 0-based ids: 1 -> aircraft, 2 -> car; the car box [26, 18, 10, 10] is clipped to the 32x24 image
    assert second.boxes == [Box("aircraft", 16, 4, 28, 14), Box("car", 26, 18, 32, 24)]
    assert third.boxes == []
    assert source.skipped == {"ignored annotation left out": 1, "box clipped to image": 1}
    assert first.metadata == {"coco_image_id": 1}
    val, test = _records(FIXTURE, "val")[0], _records(FIXTURE, "test")[0]
    assert [b.label for b in val.boxes] == ["bridge"] and [b.label for b in test.boxes] == ["harbor", "ship"]


def test_category_ids_come_from_the_json(copy: Path) -> None:
    def permute(data: dict) -> None:
        data["categories"] = [{"id": 5 - c["id"], "name": c["name"]} for c in data["categories"]]

    _edit_json(copy / "Annotations" / "train.json", permute)
    labels = [b.label for r in _records(copy, "train") for b in r.boxes]
    # category_id 0 now names 'harbor', 1 'bridge', 2 'tank'
    assert labels == ["harbor", "harbor", "bridge", "tank"]


def test_images_read_and_convert() -> None:
    policy = build_policy(SARDet.default_policy)
    for record in _records(FIXTURE):
        image = read_sar(record.image)
        assert (image.width, image.height) == record.size
        array = policy(image)
        assert array.dtype == np.float32 and array.min() >= 0 and array.max() <= 1


def test_flattened_jpegimages_layout(copy: Path) -> None:
    for path in (copy / "JPEGImages" / "val").iterdir():
        path.rename(copy / "JPEGImages" / path.name)
    (record,) = _records(copy, "val")
    assert record.source_id == "JPEGImages/0000004.jpg"


def test_missing_root_and_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="Annotations"):
        SARDet(tmp_path / "nope", "train")
    with pytest.raises(DatasetNotFoundError, match=r"JPEGImages/\{train,val,test\}"):
        _records(tmp_path, "train")


def test_missing_test_json(copy: Path) -> None:
    (copy / "Annotations" / "test.json").unlink()
    with pytest.raises(DatasetNotFoundError, match="test.json"):
        _records(copy, "test")
    source = SARDet(copy, "all")
    assert len(list(source.records())) == 4 and source.skipped["test.json not released in this copy"] == 1


def test_malformed_json(copy: Path) -> None:
    (copy / "Annotations" / "val.json").write_text("{not json")
    with pytest.raises(SourceFormatError, match=r"val\.json: field 'json'"):
        _records(copy, "val")


def test_malformed_bbox(copy: Path) -> None:
    _edit_json(copy / "Annotations" / "val.json", lambda d: d["annotations"][0].update(bbox=[1, 2, 3]))
    with pytest.raises(SourceFormatError, match=r"val\.json: field 'annotations\[0\]\.bbox'"):
        _records(copy, "val")


def test_unknown_category_id(copy: Path) -> None:
    _edit_json(copy / "Annotations" / "val.json", lambda d: d["annotations"][0].update(category_id=6))
    with pytest.raises(SourceFormatError, match=r"val\.json: field 'annotations\[0\]\.category_id'.*found 6"):
        _records(copy, "val")


def test_unknown_category_name(copy: Path) -> None:
    _edit_json(copy / "Annotations" / "val.json", lambda d: d["categories"][0].update(name="boat"))
    with pytest.raises(SourceFormatError, match="boat"):
        _records(copy, "val")


@pytest.mark.parametrize("name", ["../0000004.jpg", "/etc/passwd", "a/../../b.jpg"])
def test_file_name_escaping_root_refused(copy: Path, name: str) -> None:
    _edit_json(copy / "Annotations" / "val.json", lambda d: d["images"][0].update(file_name=name))
    with pytest.raises(SourceFormatError, match=r"val\.json: field 'image 4 file_name'"):
        _records(copy, "val")


def test_annotation_whose_image_is_missing(copy: Path) -> None:
    (copy / "JPEGImages" / "val" / "0000004.jpg").unlink()
    with pytest.raises(SourceFormatError, match=r"val\.json.*0000004\.jpg"):
        _records(copy, "val")


def test_corrupt_image(copy: Path) -> None:
    (copy / "JPEGImages" / "val" / "0000004.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (record,) = _records(copy, "val")
    with pytest.raises(SARReadError, match="0000004.jpg"):
        read_sar(record.image)

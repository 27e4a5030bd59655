"""HRSID reader on the tiny HRSID_JPG fixture (tests/data/hrsid/data.py) and on broken copies of it."""

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

FIXTURE = FIXTURES / "hrsid"
HRSID = get_source("hrsid")


def _records(root: Path, split: str = "all") -> list:
    return list(HRSID(root, split).records())


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE / "HRSID_JPG", tmp_path / "HRSID_JPG")
    return tmp_path / "HRSID_JPG"


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_counts_ids_and_metadata() -> None:
    assert len(_records(FIXTURE, "train")) == 2 and len(_records(FIXTURE, "test")) == 1
    with pytest.raises(ValueError, match="split"):
        HRSID(FIXTURE, "val")
    records = _records(FIXTURE)
    assert [(r.split, r.source_id) for r in records] == [
        ("train", "JPEGImages/P0001_0_800_7200_8000.jpg"),
        ("train", "JPEGImages/P0002_800_1600_0_800.jpg"),
        ("test", "JPEGImages/P0137_109.jpg"),
    ]
    assert records[0].metadata == {"coco_image_id": 1, "scene_id": "P0001", "tile_offsets": (0, 800, 7200, 8000)}
    assert records[2].metadata == {"coco_image_id": 3, "scene_id": "P0137"}
    assert all(r.size == (32, 32) and r.labels == [] for r in records)


def test_boxes_from_bbox_and_polygon() -> None:
    first, second, third = _records(FIXTURE)
    # category id 1 -> ship; bbox [x, y, w, h]
    assert first.boxes == [Box("ship", 4, 4, 12, 8), Box("ship", 18, 18, 28, 26)]
    # empty bbox: the polygon's extent
    assert second.boxes == [Box("ship", 10, 10, 16, 20)]
    assert third.boxes == [Box("ship", 2, 24, 8, 30)]


def test_images_read_and_convert() -> None:
    policy = build_policy(HRSID.default_policy)
    for record in _records(FIXTURE):
        array = policy(read_sar(record.image))
        assert array.shape == (1, 32, 32) and array.dtype == np.float32 and 0 <= array.min() and array.max() <= 1


def test_missing_root_and_annotation_file(tmp_path: Path, copy: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"annotations/\{train2017,test2017\}\.json"):
        HRSID(tmp_path / "none", "train")
    (copy / "annotations" / "test2017.json").unlink()
    with pytest.raises(DatasetNotFoundError, match="test2017.json"):
        _records(copy, "test")


def test_malformed_annotation(copy: Path) -> None:
    _edit_json(copy / "annotations" / "test2017.json", lambda d: d["annotations"][0].update(bbox=[], segmentation=[]))
    with pytest.raises(SourceFormatError, match=r"test2017\.json: field 'annotations\[0\]\.bbox'"):
        _records(copy, "test")
    _edit_json(copy / "annotations" / "test2017.json", lambda d: d.pop("images"))
    with pytest.raises(SourceFormatError, match=r"test2017\.json: field 'images'"):
        _records(copy, "test")


def test_unknown_category_and_image_id(copy: Path) -> None:
    path = copy / "annotations" / "test2017.json"
    _edit_json(path, lambda d: d["annotations"][0].update(category_id=0))
    with pytest.raises(SourceFormatError, match=r"test2017\.json: field 'annotations\[0\]\.category_id'.*found 0"):
        _records(copy, "test")
    _edit_json(path, lambda d: d["annotations"][0].update(category_id=1, image_id=99))
    with pytest.raises(SourceFormatError, match=r"annotations\[0\]\.image_id'.*found 99"):
        _records(copy, "test")


def test_file_name_escaping_root(copy: Path) -> None:
    _edit_json(copy / "annotations" / "test2017.json", lambda d: d["images"][0].update(file_name="../x.jpg"))
    with pytest.raises(SourceFormatError, match="without '..'"):
        _records(copy, "test")


def test_missing_and_corrupt_image(copy: Path) -> None:
    image = copy / "JPEGImages" / "P0137_109.jpg"
    image.write_bytes(b"\x00" * 10)
    (record,) = _records(copy, "test")
    with pytest.raises(SARReadError, match="P0137_109.jpg"):
        read_sar(record.image)
    image.unlink()
    with pytest.raises(SourceFormatError, match=r"test2017\.json.*P0137_109\.jpg"):
        _records(copy, "test")

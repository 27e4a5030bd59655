"""SSDD reader on the tiny Official-SSDD-OPEN fixture (tests/data/ssdd/data.py): BBox and RBox, bad inputs."""

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

FIXTURE = FIXTURES / "ssdd"
SSDD = get_source("ssdd")
VOC = Path("Official-SSDD-OPEN/BBox_SSDD/voc_style")


def _records(root: Path, split: str = "all", **kwargs) -> list:
    return list(SSDD(root, split, **kwargs).records())


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE / "Official-SSDD-OPEN", tmp_path / "Official-SSDD-OPEN")
    return tmp_path


def test_counts_ids_and_location() -> None:
    assert len(_records(FIXTURE, "train")) == 2 and len(_records(FIXTURE, "test")) == 2
    records = _records(FIXTURE)
    assert [(r.split, r.source_id) for r in records] == [
        ("train", "BBox_SSDD/voc_style/JPEGImages_train/000002.jpg"),
        ("train", "BBox_SSDD/voc_style/JPEGImages_train/000003.jpg"),
        ("test", "BBox_SSDD/voc_style/JPEGImages_test/000001.jpg"),
        ("test", "BBox_SSDD/voc_style/JPEGImages_test/000009.jpg"),
    ]
    assert [r.metadata.get("location") for r in records] == [None, None, "inshore", "offshore"]
    assert [r.source_id for r in _records(FIXTURE / "Official-SSDD-OPEN")] == [r.source_id for r in records]
    assert records[0].size == (32, 24) and records[2].size == (24, 32)


def test_horizontal_boxes() -> None:
    first = _records(FIXTURE, "train")[0]
    assert first.boxes == [Box("ship", 4, 4, 12, 8), Box("ship", 17, 12, 27, 20)]
    assert first.labels == [] and first.metadata["box_type"] == "bbox"


def test_rotated_boxes() -> None:
    records = _records(FIXTURE, box_type="rbox")
    second = records[0].boxes[1]
    assert second.angle == 30.0 and second.center == (22.0, 16.0)
    assert (second.width, second.height) == (10.0, 4.0)
    assert records[1].boxes[0] == Box("ship", 9, 10.5, 15, 13.5, angle=-45.0)
    assert records[0].source_id.startswith("RBox_SSDD/voc_style/JPEGImages_train/")


def test_images_read_and_convert() -> None:
    policy = build_policy(SSDD.default_policy)
    for record in _records(FIXTURE):
        image = read_sar(record.image)
        assert (image.width, image.height) == record.size and image.channels == 1  # grey saved as RGB
        array = policy(image)
        assert array.dtype == np.float32 and 0 <= array.min() and array.max() <= 1


def test_bad_arguments_and_layouts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="box_type"):
        SSDD(FIXTURE, "train", box_type="polygon")
    with pytest.raises(DatasetNotFoundError, match="BBox_SSDD/voc_style"):
        SSDD(tmp_path / "missing", "train")
    (tmp_path / "BBox_RBox_PSeg_SSDD" / "voc_style").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="combined BBox_RBox_PSeg_SSDD"):
        _records(tmp_path, "train")


def test_missing_split_folder(copy: Path) -> None:
    shutil.rmtree(copy / VOC / "Annotations_test")
    assert len(_records(copy, "train")) == 2
    with pytest.raises(DatasetNotFoundError, match="Annotations_test"):
        _records(copy, "test")


def test_malformed_xml(copy: Path) -> None:
    (copy / VOC / "Annotations_train" / "000003.xml").write_text("<annotation><object>")
    with pytest.raises(SourceFormatError, match=r"000003\.xml: field 'xml'"):
        _records(copy, "train")


def test_missing_coordinate(copy: Path) -> None:
    path = copy / VOC / "Annotations_train" / "000003.xml"
    path.write_text(path.read_text().replace("<xmin>9</xmin>", ""))
    with pytest.raises(SourceFormatError, match=r"000003\.xml: field 'object\[0\]/bndbox/xmin'"):
        _records(copy, "train")


def test_unknown_class_and_inverted_box(copy: Path) -> None:
    path = copy / VOC / "Annotations_train" / "000003.xml"
    text = path.read_text()
    path.write_text(text.replace("<name>ship</name>", "<name>boat</name>"))
    with pytest.raises(SourceFormatError, match=r"000003\.xml: field 'object\[0\]/name'.*'boat'"):
        _records(copy, "train")
    path.write_text(text.replace("<xmin>9</xmin>", "<xmin>20</xmin>"))
    with pytest.raises(SourceFormatError, match=r"000003\.xml: field 'box'"):
        _records(copy, "train")


def test_annotation_whose_image_is_missing(copy: Path) -> None:
    (copy / VOC / "JPEGImages_train" / "000003.jpg").unlink()
    with pytest.raises(SourceFormatError, match=r"000003\.xml: field 'image'.*000003\.jpg"):
        _records(copy, "train")


def test_corrupt_image(copy: Path) -> None:
    (copy / VOC / "JPEGImages_test" / "000009.jpg").write_bytes(b"garbage")
    record = _records(copy, "test")[1]
    with pytest.raises(SARReadError, match="000009.jpg"):
        read_sar(record.image)

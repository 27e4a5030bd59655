"""SAR-Ship-Dataset reader: YOLO fixture (tests/data/sar_ship_dataset/data.py), the older VOC release, bad inputs,
and the 12-chip VOC sample in ../shared/real_sar (skipped when absent)."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_sarclip.data.io import SARReadError, read_sar
from lightning_sarclip.data.records import Box
from lightning_sarclip.data.sources import DatasetNotFoundError, SourceFormatError, get_source
from lightning_sarclip.data.transforms import build_policy
from tests.conftest import FIXTURES, REAL_SAR

FIXTURE = FIXTURES / "sar_ship_dataset"
REAL = REAL_SAR / "sar_ship_dataset_sample_rcw024" / "Raw images"
Ships = get_source("sar_ship_dataset")


def _records(root: Path) -> list:
    return list(Ships(root).records())


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE / "ship_dataset_v0", tmp_path / "ship_dataset_v0")
    return tmp_path / "ship_dataset_v0"


def test_records_ids_and_metadata() -> None:
    with pytest.raises(ValueError, match="split"):
        Ships(FIXTURE, "train")
    records = _records(FIXTURE)
    assert [(r.split, r.source_id) for r in records] == [
        ("all", "Gao_ship_hh_0201608254401010021.jpg"), ("all", "Sen_ship_vv_0201701230102.jpg"),
        ("all", "newship0001.jpg"),
    ]
    assert [r.metadata for r in records] == [
        {"sensor": "Gaofen-3", "band": "C", "polarization": "HH"},
        {"sensor": "Sentinel-1", "band": "C", "polarization": "VV"},
        {},
    ]
    assert [r.source_id for r in _records(FIXTURE / "ship_dataset_v0")] == [r.source_id for r in records]


def test_normalised_boxes_to_pixels() -> None:
    source = Ships(FIXTURE)
    gao, sen, negative = list(source.records())
    assert gao.size == (32, 32)
    # '0 0.5 0.5 0.1 0.2' on 32x32
    assert gao.boxes == [Box("ship", pytest.approx(14.4), pytest.approx(12.8), pytest.approx(17.6),
                             pytest.approx(19.2))]
    assert sen.boxes[0] == Box("ship", 6, 4, 10, 12)
    assert sen.boxes[1].x1 == 32 and sen.boxes[1].x0 == pytest.approx(27.2)  # clipped at the right edge
    assert negative.boxes == [] and source.skipped == {"box clipped to image": 1}


def test_images_read_and_convert() -> None:
    policy = build_policy(Ships.default_policy)
    for record in _records(FIXTURE):
        array = policy(read_sar(record.image))
        assert array.shape == (1, 32, 32) and array.dtype == np.float32 and 0 <= array.min() and array.max() <= 1


def test_older_voc_release(tmp_path: Path) -> None:
    Image.new("L", (24, 16), 30).save(tmp_path / "Sen_ship_hv_001.jpg")
    (tmp_path / "labelXml").mkdir()
    (tmp_path / "labelXml" / "Sen_ship_hv_001.xml").write_text(
        "<annotation><size><width>24</width><height>16</height></size><object><name>ship</name>"
        "<Difficult>1</Difficult><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>9</xmax><ymax>8</ymax></bndbox>"
        "</object></annotation>"
    )
    (record,) = _records(tmp_path)
    assert record.boxes == [Box("ship", 2, 3, 9, 8, difficult=True)] and record.size == (24, 16)
    assert record.metadata["polarization"] == "HV"


def test_missing_root_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="YOLO"):
        Ships(tmp_path / "nope")
    with pytest.raises(DatasetNotFoundError, match="no label files"):
        _records(tmp_path)


@pytest.mark.parametrize(
    ("line", "field"),
    [("1 0.5 0.5 0.1 0.1", "line 1 class"), ("0 0.5 0.5 0.1", "line 1"), ("0 a 0.5 0.1 0.1", "line 1"),
     ("0 0.5 0.5 -0.1 0.1", "line 1")],
)
def test_malformed_label_lines(copy: Path, line: str, field: str) -> None:
    (copy / "newship0001.txt").write_text(line + "\n")
    with pytest.raises(SourceFormatError, match=rf"newship0001\.txt: field '{field}'"):
        _records(copy)


def test_label_whose_image_is_missing(copy: Path) -> None:
    (copy / "newship0001.jpg").unlink()
    with pytest.raises(SourceFormatError, match=r"newship0001\.txt: field 'image'"):
        _records(copy)


def test_corrupt_image_named_when_its_header_is_read(copy: Path) -> None:
    # the YOLO boxes need the image size, so a corrupt header fails while listing, naming the image
    (copy / "newship0001.jpg").write_bytes(b"not an image")
    with pytest.raises(SARReadError, match="newship0001.jpg"):
        _records(copy)


@pytest.mark.real_data
@pytest.mark.skipif(not REAL.is_dir(), reason="real SAR-Ship-Dataset sample not present")
def test_real_voc_sample() -> None:
    source = Ships(REAL)
    records = list(source.records())
    assert len(records) == 12 and sum(len(r.boxes) for r in records) == 68
    assert Counter(r.metadata.get("sensor") for r in records) == {"Gaofen-3": 6, "Sentinel-1": 4, None: 2}
    policy = build_policy(Ships.default_policy)
    for record in records:
        assert record.size == (256, 256)
        assert all(b.label == "ship" and 0 <= b.x0 < b.x1 <= 256 and 0 <= b.y0 < b.y1 <= 256 for b in record.boxes)
        array = policy(read_sar(record.image))
        assert array.shape == (1, 256, 256) and 0 <= array.min() and array.max() <= 1

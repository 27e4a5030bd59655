"""FUSAR-Ship reader: category/sub-category folders joined with meta.csv, label levels, and bad inputs."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lightning_sarclip.data.io import SARReadError, read_sar
from lightning_sarclip.data.sources import DatasetNotFoundError, SourceFormatError, get_source
from lightning_sarclip.data.sources.fusar_ship import CATEGORIES, readable
from lightning_sarclip.data.transforms import build_policy
from tests.conftest import FIXTURES

FIXTURE = FIXTURES / "fusar_ship"
LABELS = {
    "Cargo/AggregatesCarrier/Ship_C01S01N0001.tiff": ("Cargo", "AggregatesCarrier"),
    "Cargo/BulkCarrier/Ship_C01S02N0001.tiff": ("Cargo", "BulkCarrier"),
    "Cargo/BulkCarrier/Ship_C01S02N0002.tiff": ("Cargo", "BulkCarrier"),
    "Fishing/Fishing/Ship_C04S01N0001.tiff": ("Fishing", "Fishing"),
    "Tanker/CrudeOilTanker/Ship_C12S03N0001.tiff": ("Tanker", "CrudeOilTanker"),
}

FUSARShip = get_source("fusar_ship")


def records(root: Path = FIXTURE, **kwargs):
    source = FUSARShip(root, **kwargs)
    return source, list(source.records())


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE / "FUSAR_Ship1.0", tmp_path / "FUSAR_Ship1.0")
    return tmp_path


def test_records_labels_and_counts():
    source, recs = records()
    assert {r.source_id: (r.labels[0], r.metadata["subcategory"]) for r in recs} == LABELS
    assert all(r.split == "all" and r.source == "fusar_ship" for r in recs)
    assert source.skipped == Counter({"meta.csv row without an image": 1})
    assert source.incomplete == Counter({"chip without a meta.csv row (no AIS metadata)": 1})
    assert [r.source_id for r in records()[1]] == [r.source_id for r in recs]
    assert FUSARShip.classnames == CATEGORIES and len(CATEGORIES) == 15


def test_metadata_from_meta_csv():
    by_id = {r.source_id: r.metadata for r in records()[1]}
    first = by_id["Cargo/AggregatesCarrier/Ship_C01S01N0001.tiff"]
    assert first["mmsi"] == 477939300 and first["length_m"] == 138 and first["width_m"] == 26
    assert first["polar_mode"] == "DH" and first["look_angle_deg"] == pytest.approx(42.51)
    assert first["pixel_spacing_height_m"] == pytest.approx(1.702183)
    assert first["pixel_spacing_width_m"] == pytest.approx(1.124222)
    assert first["sensor"] == "Gaofen-3" and first["band"] == "C"
    assert first["subcategory_name"] == "aggregates carrier" and first["category_index"] == 1
    assert first["subcategory_index"] == 1 and first["sample_index"] == 1
    zero = by_id["Cargo/BulkCarrier/Ship_C01S02N0002.tiff"]
    assert zero["mmsi"] is None and zero["width_m"] is None  # MMSI 0 and an empty width
    assert "mmsi" not in by_id["Fishing/Fishing/Ship_C04S01N0001.tiff"]
    assert all(key in first for key in FUSARShip.caption_fields)
    assert readable("LawEnforce") == "law enforcement vessel" and readable("LPGTanker") == "lpg tanker"


def test_subcategory_labels():
    source, recs = records(label_level="subcategory")
    assert {r.source_id: r.labels[0] for r in recs} == {k: v[1] for k, v in LABELS.items()}
    assert source.classnames == [] and FUSARShip.classnames == CATEGORIES


def test_images_convert_to_unit_float():
    source, recs = records()
    policy = build_policy(source.default_policy)
    kinds = set()
    for record in recs:
        image = read_sar(record.image)
        kinds.add(image.kind)
        array = policy(image)
        assert array.shape == (1, 16, 16) and array.dtype == np.float32
        assert 0.0 <= array.min() and array.max() == pytest.approx(1.0)  # the centred ship is the brightest
    assert kinds == {"uint8", "uint16"}


def test_top_folder_itself_as_root_and_headerless_comma_csv(copy: Path):
    top = copy / "FUSAR_Ship1.0"
    lines = (top / "meta.csv").read_text().splitlines()[1:]
    (top / "meta.csv").write_text("\n".join(line.replace("\t", ",") for line in lines) + "\n")
    source, recs = records(top)
    assert {r.source_id for r in recs} == set(LABELS)
    assert {r.source_id: r.metadata.get("mmsi") for r in recs}["Cargo/BulkCarrier/Ship_C01S02N0001.tiff"] == 413000001


def test_missing_root_and_wrong_tree(tmp_path: Path):
    with pytest.raises(DatasetNotFoundError, match="FUSAR_Ship1.0/<Category>"):
        FUSARShip(tmp_path / "missing")
    (tmp_path / "Ships").mkdir()
    with pytest.raises(DatasetNotFoundError, match="FUSAR_Ship1.0/<Category>"):
        records(tmp_path)


def test_malformed_meta_csv_names_file_and_field(copy: Path):
    meta = copy / "FUSAR_Ship1.0" / "meta.csv"
    good = meta.read_text()
    meta.write_text(good.replace("polarMode", "polar"))
    with pytest.raises(SourceFormatError, match="meta.csv") as err:
        records(copy)
    assert err.value.field == "header"
    meta.write_text(good.replace("\t138\t26", "\t138"))
    with pytest.raises(SourceFormatError, match="line 2"):
        records(copy)
    meta.write_text(good.replace("Cargo\\AggregatesCarrier", "Tanker\\AggregatesCarrier"))
    with pytest.raises(SourceFormatError, match="path of Ship_C01S01N0001"):
        records(copy)


def test_unknown_folders_and_missing_meta_are_counted(copy: Path):
    top = copy / "FUSAR_Ship1.0"
    (top / "SeaClutter" / "Clutter").mkdir(parents=True)
    shutil.copy(top / "Fishing" / "Fishing" / "Ship_C04S01N0001.tiff", top / "SeaClutter" / "Clutter" / "x.tiff")
    (top / "Cargo" / "BulkCarrier" / "Thumbs.db").write_bytes(b"\x00")
    (top / "meta.csv").unlink()
    source, recs = records(copy)
    assert len(recs) == 5 and all("mmsi" not in r.metadata for r in recs)
    assert source.skipped == Counter({"folder 'SeaClutter' is not a confirmed FUSAR-Ship category": 1,
                                      "file not named Ship_CxxSyyNzzzz.tiff": 1})
    assert source.incomplete == Counter({"no meta.csv (no AIS metadata)": 1})


def test_corrupt_image_raises_read_error_naming_file(copy: Path):
    chip = copy / "FUSAR_Ship1.0" / "Cargo" / "BulkCarrier" / "Ship_C01S02N0001.tiff"
    chip.write_bytes(b"MM\x00*broken")
    record = {r.source_id: r for r in records(copy)[1]}["Cargo/BulkCarrier/Ship_C01S02N0001.tiff"]
    with pytest.raises(SARReadError, match="Ship_C01S02N0001.tiff"):
        read_sar(record.image)


def test_source_dataset_items():
    from lightning_sarclip.data.source_dataset import SourceDataset

    dataset = SourceDataset("fusar_ship", str(FIXTURE), split="all", image_size=8, n_captions=1)
    assert len(dataset) == 5 and dataset.classnames == CATEGORIES
    item = dataset[4]
    assert item["image"].shape == (1, 8, 8) and item["label"] == CATEGORIES.index("Tanker")

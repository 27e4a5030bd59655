"""ATRNet-STAR reader: ground-range TIFF + XML and slant-range .mat + XML chips, labels from the XML."""

from __future__ import annotations

import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lightning_sarclip.data.io import SARReadError, read_sar
from lightning_sarclip.data.records import Box, ImageRef
from lightning_sarclip.data.sources import DatasetNotFoundError, SourceFormatError, get_source
from lightning_sarclip.data.sources.atrnet_star import TYPES
from lightning_sarclip.data.transforms import build_policy
from tests.conftest import FIXTURES

DATA = FIXTURES / "atrnet_star"
ATRNET = get_source("atrnet_star")
CHEETAH = "SOC_40classes/train/Changfeng_Cheetah_CFA6473C/KU_HH_15_30_253994"


def _records(root: Path, split: str = "all", **kwargs):
    source = ATRNET(root, split=split, **kwargs)
    return source, list(source.records())


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(DATA / "ground", tmp_path / "ground")
    return tmp_path / "ground"


def test_soc40_counts_labels_metadata_boxes() -> None:
    source, records = _records(DATA / "ground")
    assert source.product == "ground_range" and source.default_policy == "integer" and len(TYPES) == 40
    assert Counter(r.split for r in records) == {"train": 3, "test": 2}
    assert {r.label for r in records if r.split == "test"} == {"Chery_Arrizo 5", "Buick_Excelle_GT"}
    assert "Chang'an_CS75_Plus" in {r.label for r in records}
    record = {r.source_id: r for r in records}[f"{CHEETAH}.tif"]
    assert record.labels == ["Changfeng_Cheetah_CFA6473C"] and record.size == (8, 8)
    assert record.boxes == [Box("Changfeng_Cheetah_CFA6473C", 2.0, 1.0, 6.0, 7.0)]
    meta = record.metadata
    assert meta["target_id"] == 13 and meta["category"] == "Car" and meta["subclass"] == "Medium_SUV"
    assert meta["length_m"] == 4.8 and meta["width_m"] == 1.79 and meta["height_m"] == 1.88
    assert meta["band"] == "Ku" and meta["polarization"] == "HH" and meta["scene"] == "sandstone"
    assert meta["depression_deg"] == 15.0 and meta["azimuth_deg"] == 30.0 and meta["resolution_m"] == 0.15
    assert meta["image_format"] == "ground_range_uint8" and "test_subset" not in meta
    assert [r.source_id for r in _records(DATA / "ground" / "SOC_40classes")[1]] == [r.source_id for r in records]
    assert [r.split for r in _records(DATA / "ground", "test")[1]] == ["test", "test"]


def test_eoc_split_subfolders() -> None:
    _, records = _records(DATA / "ground", setting="EOC_depression")
    assert [(r.split, r.metadata.get("test_subset")) for r in records] == [("test", "30"), ("train", None)]
    with pytest.raises(ValueError, match="MSTAR"):
        ATRNET(DATA / "ground", setting="SOC_50classes")


def test_ground_images_read_and_convert() -> None:
    source, records = _records(DATA / "ground")
    policy = build_policy(source.default_policy)
    for record in records:
        image = read_sar(record.image)
        assert image.kind == "uint8" and (image.width, image.height) == record.size
        unit = policy(image)
        assert unit.dtype == np.float32 and unit.shape == (1, 8, 8) and 0 <= unit.min() <= unit.max() <= 1
        box = record.boxes[0]
        assert unit[0, int(box.y0) + 1, int(box.x0) + 1] == pytest.approx(220 / 255)  # the target lies in the box


def test_slant_range_mat_and_category_schema() -> None:
    source, records = _records(DATA / "slant")
    assert source.product == "slant_range" and source.default_policy["name"] == "percentile"
    (record,) = records
    assert record.labels == ["Buick_Excelle_GT"] and record.boxes == []
    assert record.metadata["category"] == "Car" and record.metadata["subclass"] == "Compact_SUV"
    image = read_sar(record.image)
    assert image.kind == "complex" and image.data.shape == (4, 4, 4)
    ratio = np.abs(image.data[..., 3]).mean() / np.abs(image.data[..., 0]).mean()
    assert 2 < ratio < 8  # channel order hh, hv, vh, vv (the fixture scales channel k by k + 1)
    unit = build_policy(source.default_policy)(image)
    assert unit.shape == (4, 4, 4) and unit.dtype == np.float32 and 0 <= unit.min() <= unit.max() <= 1


def test_labels_come_from_the_xml_not_the_folder(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "SOC_40classes/train/Changfeng_Cheetah_CFA6473C").rename(root / "SOC_40classes/train/folder_13")
    labels = {r.label for r in ATRNET(root).records()}
    assert "Changfeng_Cheetah_CFA6473C" in labels and "folder_13" not in labels


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ("<type>Changfeng_Cheetah_CFA6473C</type>", "<type>Unknown_Car</type>", "field 'object/type'"),
        ("<length>4.8m</length>", "<length>long</length>", "field 'object/length'"),
        ("<depression_angle>15°</depression_angle>", "<depression_angle>low</depression_angle>",
         "field 'sensor/depression_angle'"),
        ("<subclass>Medium_SUV</subclass>", "", r"field 'object': expected either"),
        ("<xmax>6</xmax>", "<xmax>1</xmax>", r"field 'object/xmin..ymax'"),
        ("<xmax>6</xmax>", "", r"field 'object/xmax'"),
        ("</annotation>", "", "field 'XML'"),
    ],
)
def test_malformed_xml(tmp_path: Path, old: str, new: str, match: str) -> None:
    root = _copy(tmp_path)
    xml = root / f"{CHEETAH}.xml"
    text = xml.read_text(encoding="utf-8")
    assert old in text
    xml.write_text(text.replace(old, new), encoding="utf-8")
    with pytest.raises(SourceFormatError, match=match) as info:
        list(ATRNET(root, split="train").records())
    assert "KU_HH_15_30_253994.xml" in str(info.value)


def test_missing_halves_and_bad_split_folder(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / f"{CHEETAH}.tif").unlink()
    with pytest.raises(SourceFormatError, match=r"253994.xml: field 'image'"):
        list(ATRNET(root, split="train").records())
    (root / f"{CHEETAH}.xml").unlink()
    shutil.copy(DATA / "ground" / f"{CHEETAH}.tif", root / f"{CHEETAH}.tif")
    with pytest.raises(SourceFormatError, match=r"253994.tif: field 'annotation'"):
        list(ATRNET(root, split="train").records())
    (root / f"{CHEETAH}.tif").unlink()
    (root / "SOC_40classes" / "validation").mkdir()
    with pytest.raises(SourceFormatError, match=r"field 'split folder'"):
        list(ATRNET(root).records())


def test_missing_root_and_ambiguous_product(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"<Setting>/<train\|test\|test_\*>/<Type>"):
        ATRNET(tmp_path / "nope")
    with pytest.raises(DatasetNotFoundError, match="SOC_40classes not found"):
        ATRNET(tmp_path)
    root = _copy(tmp_path)
    shutil.copytree(DATA / "slant" / "SOC_40classes" / "train" / "Buick_Excelle_GT",
                    root / "SOC_40classes" / "train" / "Buick_Excelle_GT", dirs_exist_ok=True)
    with pytest.raises(DatasetNotFoundError, match="both .tif and .mat"):
        ATRNET(root)
    assert ATRNET(root, product="ground_range").product == "ground_range"


def test_corrupt_image_and_unsafe_member(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / f"{CHEETAH}.tif").write_bytes(b"II*\x00broken")
    record = next(r for r in ATRNET(root).records() if r.source_id == f"{CHEETAH}.tif")
    with pytest.raises(SARReadError, match="KU_HH_15_30_253994.tif"):
        read_sar(record.image)
    archive = tmp_path / "chips.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("SOC_40classes/../../x.tif", b"")
    with pytest.raises(SARReadError, match="unsafe archive member"):
        read_sar(ImageRef(str(archive), member="SOC_40classes/../../x.tif"))

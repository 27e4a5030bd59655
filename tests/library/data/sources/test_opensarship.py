"""OpenSARShip reader: nested-zip and unpacked layouts, chip/record join, products, polarisations, Ship.xml
defects, bad inputs, and the real chips in shared/real_sar when present."""

from __future__ import annotations

import io
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tifffile

from lightning_sarclip.data.io import SARReadError, read_sar
from lightning_sarclip.data.records import ImageRef
from lightning_sarclip.data.sources import DatasetNotFoundError, SourceFormatError, get_source
from lightning_sarclip.data.sources.opensarship import AIS_CLASSES, ais_class, text_class
from lightning_sarclip.data.transforms import build_policy
from tests.conftest import FIXTURES, REAL_SAR

FIXTURE = FIXTURES / "opensarship"
REAL = REAL_SAR / "opensarship_fififtrh28"
OS1 = "S1A_IW_GRDH_1SDV_20150823T221233_20150823T221258_007396_00A2CA_54D0"
GRD = "S1A_IW_GRDH_1SDV_20160131T101646_20160131T101715_009737_00E392_36F7"
SLC = "S1A_IW_SLC__1SDV_20160606T221231_20160606T221258_011596_011B8A_3FF3"
SSV = "S1A_IW_GRDH_1SSV_20160131T204259_20160131T204324_009743_00E3C6_E792"
LABELS = {
    f"{OS1}/x1601_y7784": "Cargo", f"{OS1}/x2210_y905": "Passenger", f"{GRD}/x10_y20": "Other",
    f"{GRD}/x77_y88": "Search and Rescue", f"{GRD}/x120_y340": "Cargo", f"{GRD}/x200_y50": "Tanker",
    f"{SLC}/x25277_y9768": "Tug", f"{SSV}/x10109_y8125": "Tanker",
}

OpenSARShip = get_source("opensarship")


def records(root: Path = FIXTURE, **kwargs):
    source = OpenSARShip(root, **kwargs)
    return source, list(source.records())


def unpack(zip_path: Path, target: Path) -> None:
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(target)


@pytest.fixture
def unpacked(tmp_path: Path) -> Path:
    """The fixture fully unpacked like the real copy: OpenSARShip{1,2}/<scene>/[<scene>/]Ship.xml ..."""
    for version in ("1", "2"):
        outer = tmp_path / "zips" / version
        unpack(FIXTURE / f"OpenSARShip_{version}.zip", outer)
        for scene_zip in outer.glob("*.zip"):
            unpack(scene_zip, tmp_path / "data" / f"OpenSARShip{version}" / scene_zip.stem)
    shutil.rmtree(tmp_path / "zips")
    return tmp_path / "data"


def test_default_records_labels_and_skips():
    source, recs = records()
    assert {r.source_id: r.labels[0] for r in recs} == LABELS
    assert all(r.split == "all" and r.source == "opensarship" for r in recs)
    assert source.skipped == Counter({"chip without a Ship.xml record": 1,
                                      "Ship.xml record without a Patch_Cal chip": 1})
    assert source.repaired == Counter({"Ship.xml closing tag <\\ShipList> repaired": 2})
    assert [r.source_id for r in records()[1]] == [r.source_id for r in recs]  # stable order and ids
    assert set(OpenSARShip.classnames) == set(AIS_CLASSES) and {r.labels[0] for r in recs} <= set(AIS_CLASSES)


def test_metadata_from_ship_xml_and_scene_name():
    by_id = {r.source_id: r for r in records()[1]}
    cargo = by_id[f"{GRD}/x120_y340"].metadata
    assert cargo["mmsi"] == 412000000 and cargo["ais_type"] == 70 and cargo["ais_type_name"] == "Cargo"
    assert cargo["length_m"] == 190 and cargo["width_m"] == 30 and cargo["elaborated_type"] == "Container Ship"
    assert cargo["sensor"] == "Sentinel-1" and cargo["band"] == "C" and cargo["polarization"] == "VV"
    assert cargo["product_type"] == "GRD" and cargo["product"] == "Patch_Cal" and cargo["version"] == "2.0"
    assert cargo["resolution_m"] == 20.0 and cargo["pixel_spacing_m"] == 10.0 and cargo["scene_id"] == GRD
    assert cargo["speed_knots"] == pytest.approx(12.7) and cargo["course_deg"] == pytest.approx(263.0)
    assert cargo["draught_m"] == pytest.approx(11.6) and cargo["heading_deg"] == 262.0
    assert cargo["incidence_deg"] == pytest.approx(34.0) and cargo["center_x_px"] == 120
    tanker = by_id[f"{GRD}/x200_y50"].metadata
    assert tanker["mmsi"] is None and tanker["heading_deg"] is None  # empty MMSI, True_Head 511
    other = by_id[f"{GRD}/x10_y20"].metadata
    assert other["mmsi"] is None and other["length_m"] is None and other["ais_type"] == 0
    assert other["elaborated_type"] == "Fishing"
    assert by_id[f"{OS1}/x1601_y7784"].metadata["version"] == "1.0"
    slc = by_id[f"{SLC}/x25277_y9768"].metadata
    assert slc["product_type"] == "SLC" and slc["resolution_range_m"] == 5.0
    assert all(key in cargo for key in OpenSARShip.caption_fields)


def test_ais_code_groups():
    assert [ais_class(c) for c in (0, 30, 31, 33, 37, 52, 55, 61, 75, 89, 99, 128)] == [
        "Other", "Fishing", "Towing", "Dredging", "Pleasure Craft", "Tug", "Law Enforcement", "Passenger",
        "Cargo", "Tanker", "Other", "Other"]
    assert ais_class(None) is None
    assert text_class("Search") == text_class("Search and Rescue vessel") == "Search and Rescue"
    assert text_class("Other Type") == "Other" and text_class("Spaceship") is None


@pytest.mark.parametrize("product", ["Patch_Cal", "Patch_Uint8", "Patch"])
def test_images_convert_with_the_product_policy(product):
    source, recs = records(product=product, polarization="both")
    assert len(recs) == 7 and source.skipped["no VH chip (single-pol scene)"] == 1
    policy = build_policy(source.default_policy)
    kinds = set()
    for record in recs:
        image = read_sar(record.image)
        kinds.add(image.kind)
        assert image.channels == 2 and record.metadata["channels"] == ("VV", "VH")
        array = policy(image)
        assert array.dtype == np.float32 and array.shape[0] == 2 and 0.0 <= array.min() <= array.max() <= 1.0
    expected = {"Patch_Cal": {"intensity"}, "Patch_Uint8": {"uint8"}, "Patch": {"amplitude", "complex"}}
    assert kinds == expected[product]


def test_dual_pol_channel_order_is_vv_then_vh():
    """Patch_Cal stores (VH, VV) in one file; Patch_Uint8 has one file per polarisation: both give VV, VH."""
    outer = FIXTURE / "OpenSARShip_2.zip"
    with zipfile.ZipFile(outer) as archive, zipfile.ZipFile(io.BytesIO(archive.read(f"{GRD}.zip"))) as scene:
        cal = tifffile.imread(io.BytesIO(scene.read("Patch_Cal/Cargo_x120_y340.tif")))
        vv8 = tifffile.imread(io.BytesIO(scene.read("Patch_Uint8/Visual_Cargo_x120_y340_vv.tif")))
        vh8 = tifffile.imread(io.BytesIO(scene.read("Patch_Uint8/Visual_Cargo_x120_y340_vh.tif")))
    pick = {r.source_id: r for r in records(polarization="both")[1]}[f"{GRD}/x120_y340"]
    assert pick.image.member == f"{GRD}.zip!/Patch_Cal/Cargo_x120_y340.tif" and pick.image.bands == (1, 0)
    data = read_sar(pick.image).data
    np.testing.assert_array_equal(data[:, :, 0], cal[:, :, 1])
    np.testing.assert_array_equal(data[:, :, 1], cal[:, :, 0])
    pick8 = {r.source_id: r for r in records(product="Patch_Uint8", polarization="both")[1]}[f"{GRD}/x120_y340"]
    data8 = read_sar(pick8.image).data
    np.testing.assert_array_equal(data8[:, :, 0], vv8)
    np.testing.assert_array_equal(data8[:, :, 1], vh8)
    vh_only = {r.source_id: r for r in records(product="Patch_Uint8", polarization="vh")[1]}[f"{GRD}/x120_y340"]
    np.testing.assert_array_equal(read_sar(vh_only.image).data[:, :, 0], vh8)


def test_each_polarisation_is_its_own_record():
    source, recs = records(product="Patch_Uint8", polarization="each")
    assert len(recs) == 15 and not source.skipped["no VH chip (single-pol scene)"]
    ids = [r.source_id for r in recs]
    assert len(set(ids)) == 15 and f"{GRD}/x120_y340/vh" in ids and f"{SSV}/x10109_y8125/vv" in ids
    assert {r.metadata["polarization"] for r in recs} == {"VV", "VH"}


def test_unpacked_layouts_give_the_same_records(unpacked: Path, tmp_path: Path):
    expected = {r.source_id: (r.labels, r.metadata["mmsi"], r.metadata["version"]) for r in records()[1]}
    source, recs = records(unpacked)
    assert {r.source_id: (r.labels, r.metadata["mmsi"], r.metadata["version"]) for r in recs} == expected
    assert source.repaired["Ship.xml closing tag <\\ShipList> repaired"] == 2
    for record in recs:
        assert record.image.member is None and Path(record.image.path).is_file()
        assert read_sar(record.image).channels == 1
    scene_zips = tmp_path / "scene_zips" / "OpenSARShip_2"
    unpack(FIXTURE / "OpenSARShip_2.zip", scene_zips)  # the outer zip unpacked: a folder of scene zips
    recs = records(scene_zips.parent)[1]
    assert {r.source_id for r in recs} == {k for k in expected if not k.startswith(OS1)}
    assert all(r.image.path.endswith(".zip") and "!/" not in r.image.member for r in recs)
    assert all(read_sar(r.image).channels == 1 for r in recs)


def test_missing_or_unrecognised_root(tmp_path: Path):
    with pytest.raises(DatasetNotFoundError, match="Ship.xml"):
        OpenSARShip(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="OpenSARShip_2.zip"):
        records(tmp_path / "empty")
    with pytest.raises(ValueError, match="product"):
        OpenSARShip(FIXTURE, product="Patch_RGB")
    with pytest.raises(ValueError, match="split"):
        OpenSARShip(FIXTURE, split="train")


def test_malformed_ship_xml_names_file_and_field(unpacked: Path):
    xml = unpacked / "OpenSARShip2" / GRD / "Ship.xml"
    text = xml.read_text()
    xml.write_text(text.replace("</ship>", "</shipp>", 1))  # not the known defect: must not be "repaired"
    with pytest.raises(SourceFormatError, match="xml") as err:
        records(unpacked)
    assert err.value.file == str(xml) and err.value.field == "xml"
    xml.write_text(text.replace("<Center_x>120</Center_x>", "<Center_x>12O</Center_x>"))
    with pytest.raises(SourceFormatError, match="Center_x") as err:
        records(unpacked)
    assert err.value.file == str(xml)


def test_latin1_ship_xml_is_read_and_counted(unpacked: Path):
    xml = unpacked / "OpenSARShip2" / GRD / "Ship.xml"
    xml.write_bytes(xml.read_bytes().replace(b"FIXTURE 0", "SÃO JOSÉ".encode("latin-1")))
    source, recs = records(unpacked)
    names = {r.metadata["ship_name"] for r in recs}
    assert "SÃO JOSÉ" in names and source.repaired["Ship.xml not UTF-8: decoded as latin-1"] == 1


def test_record_whose_chip_is_missing_is_counted(unpacked: Path):
    (unpacked / "OpenSARShip2" / GRD / "Patch_Cal" / "Tanker_x200_y50.tif").unlink()
    source, recs = records(unpacked)
    assert f"{GRD}/x200_y50" not in {r.source_id for r in recs} and len(recs) == 7
    assert source.skipped["Ship.xml record without a Patch_Cal chip"] == 2


def test_corrupt_chip_raises_read_error_naming_file(unpacked: Path):
    chip = unpacked / "OpenSARShip2" / GRD / "Patch_Cal" / "Cargo_x120_y340.tif"
    chip.write_bytes(b"II*\x00garbage")
    record = {r.source_id: r for r in records(unpacked)[1]}[f"{GRD}/x120_y340"]
    with pytest.raises(SARReadError, match="Cargo_x120_y340.tif"):
        read_sar(record.image)
    single = unpacked / "OpenSARShip2" / GRD / "Patch_Cal" / "Tanker_x200_y50.tif"
    tifffile.imwrite(single, np.zeros((8, 8), np.float32))  # one plane where VH, VV are expected
    record = {r.source_id: r for r in records(unpacked)[1]}[f"{GRD}/x200_y50"]
    with pytest.raises(SARReadError, match="expected 2 planes"):
        read_sar(record.image)


def test_zip_members_climbing_out_are_refused(tmp_path: Path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as scene:
        scene.writestr("Ship.xml", "<ShipList></ShipList>")
        scene.writestr("Patch_Cal/../../evil_x1_y1.tif", b"x")
    with zipfile.ZipFile(tmp_path / "OpenSARShip_2.zip", "w") as outer:
        outer.writestr(f"{GRD}.zip", buffer.getvalue())
    with pytest.raises(SourceFormatError, match="evil"):
        records(tmp_path)
    with pytest.raises(SARReadError, match="unsafe"):
        read_sar(ImageRef(str(FIXTURE / "OpenSARShip_2.zip"), f"{GRD}.zip!/../Patch_Cal/Cargo_x120_y340.tif",
                          format="opensarship", options=(("values", "intensity"), ("channels", ("VH", "VV")))))


def test_unconfirmed_hh_scene_is_refused(unpacked: Path):
    hh = GRD.replace("1SDV", "1SDH")
    (unpacked / "OpenSARShip2" / GRD).rename(unpacked / "OpenSARShip2" / hh)
    with pytest.raises(SourceFormatError, match="1SDH"):
        records(unpacked)


@pytest.mark.skipif(not REAL.is_dir(), reason="shared/real_sar/opensarship_fififtrh28 not present")
def test_real_chips_are_all_labelled():
    source, recs = records(REAL)
    assert len(recs) == 295 and len({r.source_id for r in recs}) == 295
    assert not source.skipped and source.repaired["Ship.xml closing tag <\\ShipList> repaired"] == 4
    assert Counter(r.labels[0] for r in recs) == Counter({"Cargo": 167, "Tanker": 86, "Other": 36, "Passenger": 2,
                                                          "Tug": 2, "Law Enforcement": 1, "Search and Rescue": 1})
    assert Counter(r.metadata["version"] for r in recs) == Counter({"2.0": 243, "1.0": 52})
    assert all(r.metadata["ais_type"] is not None and r.metadata["scene_id"] for r in recs)
    policy = build_policy(source.default_policy)
    for record in recs[::25]:
        array = policy(read_sar(record.image))
        assert array.dtype == np.float32 and 0.0 <= array.min() <= array.max() <= 1.0
    slc = [r for r in records(REAL, product="Patch", polarization="both")[1] if r.metadata["product_type"] == "SLC"]
    assert len(slc) == 9
    image = read_sar(slc[0].image)
    assert image.kind == "complex" and image.channels == 2
    both = records(REAL, product="Patch_Uint8", polarization="both")
    assert len(both[1]) == 171 and both[0].skipped["no VH chip (single-pol scene)"] == 124


@pytest.mark.parametrize("product", ["Patch_Uint8", "Patch"])
def test_source_dataset_uses_the_product_aware_default_policy(product):
    from lightning_sarclip.data.source_dataset import SourceDataset

    dataset = SourceDataset("opensarship", str(FIXTURE), split="all", image_size=16, in_chans=2, n_captions=2,
                            source_options={"product": product, "polarization": "both"})
    item = dataset[0]
    assert item["image"].shape == (2, 16, 16) and 0.0 <= float(item["image"].min()) <= float(item["image"].max()) <= 1.0
    assert dataset.classnames == AIS_CLASSES and item["label"] == AIS_CLASSES.index("Cargo")
    assert len(item["captions"]) == 2 and all(isinstance(c, str) and c for c in item["captions"])

"""Numbers readers put into records (and captions) are range-checked: a describing number out of range is dropped
and counted, a number the reader needs is a SourceFormatError naming file, field and range (issue #11)."""

from __future__ import annotations

import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lightning_sarclip.data.sources import SourceFormatError, get_source
from lightning_sarclip.data.sources._metadata import (
    ANGLE_0_90,
    ANGLE_0_360,
    FINITE,
    POSITIVE,
    NumberRange,
    checked_number,
    parse_number,
    required_number,
)
from tests.conftest import FIXTURES
from tests.data.mstar.data import chip_fields, phoenix_bytes
from tests.data.sample.data import mat_variables, savemat_fixed


# ------------------------------------------------------------------------------------------------- helpers
@pytest.mark.parametrize(("valid", "inside", "outside"), [
    (POSITIVE, [1e-9, 3, 1e6], [0, -1, math.inf, math.nan]),
    (ANGLE_0_90, [0, 45.5, 90], [-0.1, 90.01, math.inf, -math.inf, math.nan]),
    (ANGLE_0_360, [0, 359.9, 360], [-1, 361]),
    (FINITE, [-1e300, 0, 1e300], [math.inf, math.nan]),
])
def test_number_ranges(valid: NumberRange, inside: list[float], outside: list[float]):
    assert all(v in valid for v in inside) and not any(v in valid for v in outside)


def test_range_descriptions_say_what_is_expected():
    assert POSITIVE.describe() == "a finite number > 0"
    assert ANGLE_0_90.describe() == "a finite number in [0, 90]"
    assert FINITE.describe() == "a finite number"


def test_parse_number():
    assert parse_number(" 1.5e2 ") == 150.0 and parse_number(7) == 7.0 and math.isinf(parse_number("inf"))
    assert parse_number("") is None and parse_number(None) is None and parse_number("12 m") is None
    assert parse_number(True) is None


def test_checked_number_drops_and_counts():
    skipped: Counter[str] = Counter()

    def skip(reason: str, file: object) -> None:
        skipped[reason] += 1

    def check(value: object, **kwargs: object) -> float | None:
        return checked_number(value, "Length", POSITIVE, file="Ship.xml", skip=skip, **kwargs)

    assert check("190") == 190.0 and check(12) == 12.0
    assert check(None) is None and check(" ") is None and not skipped  # absent: not counted
    assert check("0", missing=(0.0,)) is None and not skipped  # "not available" code: not counted
    assert check("-230") is None and check("inf") is None and check("long") is None
    assert skipped == {"Length out of range": 3}


def test_required_number_names_file_field_and_range():
    assert required_number("16", "width", POSITIVE, file="a.xml") == 16.0
    with pytest.raises(SourceFormatError, match=r"a\.xml: field 'width': expected a finite number > 0, found 'inf'"):
        required_number("inf", "width", POSITIVE, file="a.xml")


# ----------------------------------------------------------------------------------------------- FUSAR-Ship
def test_fusar_ship_caption_numbers(tmp_path: Path):
    root = tmp_path / "fusar"
    shutil.copytree(FIXTURES / "fusar_ship", root, ignore=shutil.ignore_patterns("*.py"))
    meta = root / "FUSAR_Ship1.0" / "meta.csv"
    text = meta.read_text()
    text = text.replace("477939300\t138\t26\tDH\t42.51", "inf\t-138\tnan\tDH\t95")
    meta.write_text(text)
    source = get_source("fusar_ship")(root)
    by_id = {r.source_id: r.metadata for r in source.records()}
    bad = by_id["Cargo/AggregatesCarrier/Ship_C01S01N0001.tiff"]
    assert bad["mmsi"] is None and bad["length_m"] is None and bad["width_m"] is None
    assert bad["look_angle_deg"] is None
    assert source.skipped["meta.csv length out of range"] == 1
    assert source.skipped["meta.csv width out of range"] == 1
    assert source.skipped["meta.csv centerLookAngle out of range"] == 1
    good = by_id["Cargo/BulkCarrier/Ship_C01S02N0001.tiff"]
    assert good["length_m"] == 225.0 and good["look_angle_deg"] == 38.2


# ---------------------------------------------------------------------------------------------- ATRNet-STAR
@pytest.mark.parametrize(("old", "new", "key", "reason"), [
    ("<length>4.5m</length>", "<length>-4.5m</length>", "length_m", "object/length out of range"),
    ("<depression_angle>15°</depression_angle>", "<depression_angle>95°</depression_angle>", "depression_deg",
     "sensor/depression_angle out of range"),
    ("<target_azimuth_angle>0°</target_azimuth_angle>", "<target_azimuth_angle>400°</target_azimuth_angle>",
     "azimuth_deg", "sensor/target_azimuth_angle out of range"),
])
def test_atrnet_star_caption_numbers(tmp_path: Path, old: str, new: str, key: str, reason: str):
    root = tmp_path / "atrnet"
    shutil.copytree(FIXTURES / "atrnet_star" / "ground", root)
    xml = root / "SOC_40classes" / "train" / "Buick_Excelle_GT" / "KU_HH_15_0_253993.xml"
    xml.write_text(xml.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    source = get_source("atrnet_star")(root, "train")
    record = next(r for r in source.records() if r.source_id.endswith("KU_HH_15_0_253993.tif"))
    assert key not in record.metadata and source.skipped[reason] == 1


# ---------------------------------------------------------------------------------------------------- SAMPLE
T72_REAL = "mat_files/real/t72/t72_real_A_elevDeg_016_azCenter_013_77_serial_812.mat"


def test_sample_mat_angles_out_of_range_fall_back_to_the_file_name(tmp_path: Path):
    root = tmp_path / "SAMPLE_dataset_public"
    shutil.copytree(FIXTURES / "sample" / "SAMPLE_dataset_public", root)
    variables = mat_variables("t72", 16, 13.2, np.ones((8, 8), np.complex64))
    variables["azimuth"] = np.array([[np.inf]])
    variables["elevation"] = np.array([[-16.0]])
    variables["range_resolution"] = np.array([[0.0]])
    savemat_fixed(root / T72_REAL, variables)
    source = get_source("sample")(root)
    meta = {r.source_id: r.metadata for r in source.records()}[T72_REAL]
    assert meta["azimuth_deg"] == 13.0 and meta["depression_deg"] == 16.0  # from the file name
    assert "range_resolution_m" not in meta
    assert source.skipped[".mat azimuth out of range"] == 1 and source.skipped[".mat elevation out of range"] == 1
    assert source.skipped[".mat range_resolution out of range"] == 1


def test_sample_file_name_angle_out_of_range(tmp_path: Path):
    root = tmp_path / "SAMPLE_dataset_public"
    shutil.copytree(FIXTURES / "sample" / "SAMPLE_dataset_public", root)
    png = root / "png_images" / "decibel" / "real" / "t72"
    name = next(png.glob("*.png")).name
    (png / name).rename(png / name.replace("elevDeg_016", "elevDeg_095"))
    source = get_source("sample")(root, image="png_decibel", read_mat_metadata=False)
    meta = next(r.metadata for r in source.records() if "elevDeg_095" in r.source_id)
    assert meta["depression_deg"] is None and source.skipped["file name elevDeg out of range"] == 1


# ----------------------------------------------------------------------------------------------------- MSTAR
def test_mstar_header_angles_out_of_range(tmp_path: Path):
    fields = chip_fields("t72_tank", "132", 1.0, 17)
    fields["TargetAz"] = "-12.000000"
    fields["MeasuredDepression"] = "inf"
    chip = tmp_path / "train" / "T72" / "HB01701.000"
    chip.parent.mkdir(parents=True)
    chip.write_bytes(phoenix_bytes(fields, np.ones((6, 8)), np.zeros((6, 8))))
    source = get_source("mstar")(tmp_path, "train", layout="raw_folders")
    (record,) = list(source.records())
    assert "azimuth_deg" not in record.metadata and "measured_depression_deg" not in record.metadata
    assert record.metadata["depression_deg"] == 17 and record.metadata["serial"] == "132"
    assert source.skipped["header TargetAz out of range"] == 1
    assert source.skipped["header MeasuredDepression out of range"] == 1


# ------------------------------------------------------------------------------------------------- FAIR-CSAR
def _fair_csar(tmp_path: Path) -> Path:
    root = tmp_path / "FAIR-CSAR"
    shutil.copytree(FIXTURES / "fair_csar" / "FAIR-CSAR", root)
    return next((root / "train" / "METAXmls").glob("*.xml"))


def test_fair_csar_caption_numbers(tmp_path: Path):
    meta_file = _fair_csar(tmp_path)
    text = meta_file.read_text().replace("<incidenceAngle>35.5<", "<incidenceAngle>135.5<")
    meta_file.write_text(text.replace("<nominalResolution>1<", "<nominalResolution>-1<"))
    source = get_source("fair_csar")(tmp_path / "FAIR-CSAR", "train")
    (record,) = list(source.records())
    assert "incidence_deg" not in record.metadata and "resolution_m" not in record.metadata
    assert source.skipped["METAXml incidenceAngle out of range"] == 1
    assert source.skipped["METAXml nominalResolution out of range"] == 1


@pytest.mark.parametrize(("tag", "value"), [("width", "inf"), ("height", "0"), ("x1", "nan")])
def test_fair_csar_size_and_corners_must_be_finite(tmp_path: Path, tag: str, value: str):
    meta_file = _fair_csar(tmp_path)
    text = meta_file.read_text()
    start = text.index(f"<{tag}>")
    end = text.index(f"</{tag}>")
    meta_file.write_text(text[:start] + f"<{tag}>{value}" + text[end:])
    with pytest.raises(SourceFormatError, match=rf"METAXmls.*\.xml: field '{tag}': expected a finite number"):
        list(get_source("fair_csar")(tmp_path / "FAIR-CSAR", "train").records())

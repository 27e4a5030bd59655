"""OpenSARShip on hostile input: scene zips over the member limit, a huge scene zip listed without inflating it
into memory, and Ship.xml numbers out of range (issue #11)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lightning_sarclip.data.io import SARReadError
from lightning_sarclip.data.limits import set_limits
from lightning_sarclip.data.sources import SourceFormatError, get_source
from tests.conftest import FIXTURES, REPO_ROOT

FIXTURE = FIXTURES / "opensarship"
GRD = "S1A_IW_GRDH_1SDV_20160131T101646_20160131T101715_009737_00E392_36F7"
SSV = "S1A_IW_GRDH_1SSV_20160131T204259_20160131T204324_009743_00E3C6_E792"
OpenSARShip = get_source("opensarship")
PADDING_MB = 300
#: What listing may add to the process's peak memory: far below the padded scene zip (300 MB).
PEAK_BUDGET_MB = 150


def records(root: Path, **options):
    source = OpenSARShip(root, **options)
    return source, list(source.records())


@pytest.fixture
def limit_members():
    """Lower ``max_member_bytes`` for one test, and put the previous limit back."""
    previous = set_limits()
    yield lambda size: set_limits(max_member_bytes=size)
    set_limits(max_member_bytes=previous.max_member_bytes)


def test_scene_zip_over_the_member_limit_is_refused_naming_it(limit_members):
    limit_members(1000)  # every fixture scene zip is larger
    with pytest.raises(SARReadError, match=r"OpenSARShip_1\.zip!/S1A_.*\.zip.*max_member_bytes") as caught:
        records(FIXTURE)
    assert "1,000" in str(caught.value)
    limit_members(1 << 20)
    assert len(records(FIXTURE)[1]) == 8


def _padded_outer_zip(target: Path) -> Path:
    """``OpenSARShip_2.zip`` holding the fixture's single-pol scene zip, padded with a stored member of zeros: a
    few hundred kB on disk (the outer zip deflates the scene zip), ``PADDING_MB`` inflated. Written as streams,
    so the test process never holds it either."""
    with zipfile.ZipFile(FIXTURE / "OpenSARShip_2.zip") as fixture:
        scene = fixture.read(f"{SSV}.zip")
    target.mkdir()
    outer_path = target / "OpenSARShip_2.zip"
    with zipfile.ZipFile(outer_path, "w", zipfile.ZIP_DEFLATED) as outer, \
            outer.open(f"{SSV}.zip", "w", force_zip64=True) as stream, \
            zipfile.ZipFile(stream, "w") as inner:
        with zipfile.ZipFile(io.BytesIO(scene)) as original:
            for info in original.infolist():
                inner.writestr(info, original.read(info))
        with inner.open("padding.bin", "w", force_zip64=True) as padding:
            block = bytes(1 << 20)
            for _ in range(PADDING_MB):
                padding.write(block)
    return outer_path


_CHILD = """
import json, sys
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) // 1024
from lightning_sarclip.data.sources import get_source
before = status("VmRSS")
records = list(get_source("opensarship")(sys.argv[1]).records())
print(json.dumps({"before_mb": before, "peak_mb": status("VmHWM"), "records": len(records)}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc/self/status (Linux)")
def test_listing_a_huge_scene_zip_does_not_inflate_it_into_memory(tmp_path: Path):
    outer = _padded_outer_zip(tmp_path / "data")
    assert outer.stat().st_size < 5 << 20
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TMPDIR": str(tmp_path)}  # the spool file goes here
    done = subprocess.run([sys.executable, "-c", _CHILD, str(outer.parent)], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["records"] == 1
    grown = result["peak_mb"] - result["before_mb"]
    assert grown < PEAK_BUDGET_MB, f"listing raised the peak RSS by {grown} MB ({result})"


# ------------------------------------------------------------------------------------------ Ship.xml ranges
@pytest.fixture
def scene(tmp_path: Path) -> Path:
    """The dual-pol GRD scene unpacked into ``tmp_path/data/OpenSARShip2/<scene>/``; returns its Ship.xml."""
    with zipfile.ZipFile(FIXTURE / "OpenSARShip_2.zip") as outer:
        outer.extract(f"{GRD}.zip", tmp_path / "zips")
    folder = tmp_path / "data" / "OpenSARShip2" / GRD
    with zipfile.ZipFile(tmp_path / "zips" / f"{GRD}.zip") as archive:
        archive.extractall(folder)
    shutil.rmtree(tmp_path / "zips")
    return folder / "Ship.xml"


def _edit(xml: Path, old: str, new: str) -> None:
    text = xml.read_text()
    assert text.count(old) >= 1, old
    xml.write_text(text.replace(old, new, 1))  # the first <ship>: the Cargo chip at x120_y340


def _cargo(xml: Path):
    source, recs = records(xml.parent.parent.parent)
    return source, {r.source_id: r for r in recs}[f"{GRD}/x120_y340"].metadata


def test_caption_numbers_out_of_range_are_dropped_and_counted(scene: Path):
    _edit(scene, "<Length>190</Length>", "<Length>-230</Length>")
    _edit(scene, "<Width>30</Width>", "<Width>nan</Width>")
    _edit(scene, "<Incidence>34.000000</Incidence>", "<Incidence>inf</Incidence>")
    source, meta = _cargo(scene)
    assert meta["length_m"] is None and meta["width_m"] is None and meta["incidence_deg"] is None
    assert source.skipped["Ship.xml Length out of range"] == 1
    assert source.skipped["Ship.xml Width out of range"] == 1
    assert source.skipped["Ship.xml Incidence out of range"] == 1


@pytest.mark.parametrize("incidence", ["91", "-0.5", "steep"])
def test_incidence_outside_0_90_degrees_is_dropped(scene: Path, incidence: str):
    _edit(scene, "<Incidence>34.000000</Incidence>", f"<Incidence>{incidence}</Incidence>")
    source, meta = _cargo(scene)
    assert meta["incidence_deg"] is None and source.skipped["Ship.xml Incidence out of range"] == 1


def test_zero_length_is_ais_not_available_not_a_range_error(scene: Path):
    _edit(scene, "<Length>190</Length>", "<Length>0</Length>")
    source, meta = _cargo(scene)
    assert meta["length_m"] is None and "Ship.xml Length out of range" not in source.skipped
    assert meta["width_m"] == 30 and meta["incidence_deg"] == 34.0


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e999"])
def test_non_finite_centre_names_ship_xml_and_field(scene: Path, value: str):
    _edit(scene, "<Center_x>120</Center_x>", f"<Center_x>{value}</Center_x>")
    with pytest.raises(SourceFormatError, match="Center_x.*finite integer") as caught:
        records(scene.parent.parent.parent)
    assert caught.value.file == str(scene.resolve()) and caught.value.found == value


def test_non_finite_integer_fields_do_not_overflow(scene: Path):
    _edit(scene, "<Ship_Type>70</Ship_Type>", "<Ship_Type>inf</Ship_Type>")
    _edit(scene, "<MMSI>412000000</MMSI>", "<MMSI>1e999</MMSI>")
    _edit(scene, "<Head_x>115</Head_x>", "<Head_x>nan</Head_x>")
    _, meta = _cargo(scene)
    assert meta["ais_type"] is None and meta["mmsi"] is None and "head_px" not in meta

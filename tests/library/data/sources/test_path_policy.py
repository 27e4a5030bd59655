"""The one path policy of every reader (``SARSource.contained`` / ``allowed_roots``), on every source's fixture.

For each case the fixture is copied to ``tmp_path/data``; then one image, and where the layout has them a folder
and an annotation or metadata file, is moved to ``tmp_path/outside`` and replaced by a symlink to it. Listing must
refuse the link with a :class:`SourceFormatError` naming it and the option, and ``allowed_roots=[outside]`` must
give the same records as the untouched copy. A root that is itself a symlink (or lies in a symlinked folder) is
fine.
"""

from __future__ import annotations

import inspect
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lightning_sarclip.data.listing import SourceListing
from lightning_sarclip.data.records import SARRecord
from lightning_sarclip.data.sources import SourceFormatError, get_source, list_sources
from tests.conftest import FIXTURES


def _copy(fixture: str) -> Callable[[Path], Path]:
    """Copy ``tests/data/<fixture>`` (a dataset folder) to ``target``; the root is the copy."""

    def build(target: Path) -> Path:
        shutil.copytree(FIXTURES / fixture, target, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
        return target

    return build


def _table_file(target: Path) -> Path:
    """The image_caption_table fixture folder copied; the root is the table file itself."""
    return _copy("image_caption_table")(target) / "pairs.csv"


def _unpacked_opensarship(target: Path) -> Path:
    """OpenSARShip fully unpacked like the real copy: ``OpenSARShip{1,2}/<scene>/[<scene>/]Ship.xml`` ..."""
    for version in ("1", "2"):
        outer = target.parent / "zips" / version
        with zipfile.ZipFile(FIXTURES / "opensarship" / f"OpenSARShip_{version}.zip") as archive:
            archive.extractall(outer)
        for scene_zip in sorted(outer.glob("*.zip")):
            with zipfile.ZipFile(scene_zip) as archive:
                archive.extractall(target / f"OpenSARShip{version}" / scene_zip.stem)
    shutil.rmtree(target.parent / "zips")
    return target


GRD = "S1A_IW_GRDH_1SDV_20160131T101646_20160131T101715_009737_00E392_36F7"


@dataclass(frozen=True)
class PolicyCase:
    """One source on one fixture; ``links``: glob patterns (relative to the copied root's folder) of the folders
    and annotation/metadata files replaced by links, besides the first record's image, which always is."""

    id: str
    source: str
    build: Callable[[Path], Path]
    options: dict[str, Any] = field(default_factory=dict)
    links: tuple[str, ...] = ()


CASES = [
    PolicyCase("mstar_sdms", "mstar", _copy("mstar/sdms"), {"layout": "sdms", "protocol": "all"},
               ("MSTAR_PUBLIC_MIXED_TARGETS_CD2/17_DEG/COL2/SCENE1/2S1", "MSTAR_PUBLIC_MIXED_TARGETS_CD1")),
    PolicyCase("mstar_jpeg_folders", "mstar", _copy("mstar/jpeg_folders"), links=("train/9",)),
    PolicyCase("mstar_raw_folders", "mstar", _copy("mstar/raw_folders"), links=("test/T72",)),
    PolicyCase("sample_mat", "sample", _copy("sample"), links=("SAMPLE_dataset_public/mat_files/synth/t72",)),
    PolicyCase("sample_png", "sample", _copy("sample"), {"image": "png_decibel"},
               ("SAMPLE_dataset_public/mat_files/real/t72/*.mat", "SAMPLE_dataset_public/png_images/decibel/synth")),
    PolicyCase("atrnet_star_ground", "atrnet_star", _copy("atrnet_star/ground"),
               links=("SOC_40classes/train/Buick_Excelle_GT/*.xml", "SOC_40classes/test")),
    PolicyCase("atrnet_star_slant", "atrnet_star", _copy("atrnet_star/slant"),
               links=("SOC_40classes/train/Buick_Excelle_GT/*.xml",)),
    PolicyCase("opensarship_zips", "opensarship", _copy("opensarship"), links=("OpenSARShip_2.zip",)),
    # Patch_Uint8 with both polarisations: the VH file is an ``extra`` of the VV chip's ImageRef
    PolicyCase("opensarship_unpacked", "opensarship", _unpacked_opensarship,
               {"product": "Patch_Uint8", "polarization": "both"},
               (f"OpenSARShip2/{GRD}/Ship.xml", f"OpenSARShip2/{GRD}/Patch_Uint8",
                f"OpenSARShip2/{GRD}/Patch_Uint8/*_vh.tif", "OpenSARShip1/*")),
    PolicyCase("fusar_ship", "fusar_ship", _copy("fusar_ship"),
               links=("FUSAR_Ship1.0/meta.csv", "FUSAR_Ship1.0/Cargo/BulkCarrier", "FUSAR_Ship1.0/Tanker")),
    PolicyCase("sen12ms", "sen12ms", _copy("sen12ms"), {"split": "train"},
               ("train_list.txt", "ROIs1158_spring/lc_1/*_p1.tif", "ROIs1970_fall/s1_1")),
    PolicyCase("sardet100k", "sardet100k", _copy("sardet100k/SARDet_100K"),
               links=("Annotations/train.json", "JPEGImages/val")),
    PolicyCase("ssdd", "ssdd", _copy("ssdd"),
               links=("Official-SSDD-OPEN/BBox_SSDD/voc_style/Annotations_train/*.xml",
                      "Official-SSDD-OPEN/BBox_SSDD/voc_style/JPEGImages_test")),
    PolicyCase("hrsid", "hrsid", _copy("hrsid/HRSID_JPG"), links=("annotations/test2017.json", "JPEGImages")),
    PolicyCase("sar_ship_dataset", "sar_ship_dataset", _copy("sar_ship_dataset/ship_dataset_v0"),
               links=("Sen_ship_*.txt",)),
    PolicyCase("sar_aircraft", "sar_aircraft", _copy("sar_aircraft/SAR-AIRcraft-1.0"),
               links=("Annotations/2.xml", "ImageSets/Main/val.txt", "JPEGImages")),
    PolicyCase("fair_csar", "fair_csar", _copy("fair_csar/FAIR-CSAR"),
               links=("train/Annotations/*.txt", "train/METAXmls/*.xml", "test/SLCMats")),
    PolicyCase("fair_csar_png", "fair_csar", _copy("fair_csar/FAIR-CSAR"), {"image": "png"},
               ("test/PNGImages",)),
    PolicyCase("sarlang", "sarlang", _copy("sarlang/SARLANG-1M"),
               links=("Text/caption/Caption_test1.csv", "SARimages")),
    PolicyCase("image_caption_table_file", "image_caption_table", _table_file, {"split_column": "split"},
               ("images",)),
    PolicyCase("image_caption_table_splits", "image_caption_table", _copy("image_caption_table"),
               links=("val.csv", "images/sub")),
    PolicyCase("class_folder_split", "class_folder", _copy("class_folder/split_layout"),
               links=("train/bulk_carrier/batch2", "val/Tanker")),
    PolicyCase("class_folder_flat", "class_folder", _copy("class_folder/flat_layout"), links=("oil_tank",)),
]
BY_ID = {case.id: case for case in CASES}
#: Sources without files: nothing to contain.
NO_FILES = {"synthetic"}


def _list(case: PolicyCase, root: Path, **extra: Any) -> list[SARRecord]:
    options = {"split": "all", **case.options, **extra}
    return list(get_source(case.source)(root, **options).records())


def _targets(case: PolicyCase, root: Path, records: list[SARRecord]) -> list[Path]:
    """The first record's image file, then one match of each ``links`` pattern."""
    base = root if root.is_dir() else root.parent
    targets = [Path(records[0].image.path)]
    for pattern in case.links:
        matches = sorted(base.glob(pattern))
        assert matches, f"{case.id}: no {pattern} under {base}"
        targets.append(matches[0])
    return targets


def _link_outside(target: Path, outside: Path) -> Path:
    """Move ``target`` (file or folder) into ``outside`` and leave a symlink to it in its place."""
    outside.mkdir(parents=True, exist_ok=True)
    moved = outside / target.name
    shutil.move(str(target), str(moved))
    target.symlink_to(moved, target_is_directory=moved.is_dir())
    return moved


def _restore(target: Path, moved: Path) -> None:
    target.unlink()
    shutil.move(str(moved), str(target))


def test_every_source_with_files_has_a_case():
    assert {case.source for case in CASES} == set(list_sources()) - NO_FILES


@pytest.mark.parametrize("source", sorted(set(list_sources())))
def test_every_reader_takes_allowed_roots(source: str):
    """Readers with their own ``__init__`` must name the keyword (the misspelt-option check reads signatures)."""
    parameter = inspect.signature(get_source(source).__init__).parameters.get("allowed_roots")
    assert parameter is not None and parameter.default == ()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_links_leaving_the_root_are_refused_unless_allowed(case: PolicyCase, tmp_path: Path):
    root = case.build(tmp_path / "data")
    expected = _list(case, root)
    assert expected, f"{case.id}: the fixture lists no records"
    for number, target in enumerate(_targets(case, root, expected)):
        relative = target.relative_to(tmp_path / "data").as_posix()
        outside = tmp_path / f"outside{number}"
        moved = _link_outside(target, outside)
        with pytest.raises(SourceFormatError) as caught:
            _list(case, root)
        message = str(caught.value)
        assert relative in message and "allowed_roots" in message and str(outside) in message, message
        assert _list(case, root, allowed_roots=[outside]) == expected, relative
        _restore(target, moved)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_a_root_that_is_a_symlink_is_fine(case: PolicyCase, tmp_path: Path):
    root = case.build(tmp_path / "data")
    expected = _list(case, root)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "data", target_is_directory=True)
    through_link = _list(case, link / root.relative_to(tmp_path / "data"))
    assert [(r.source_id, r.split, r.labels) for r in through_link] == [
        (r.source_id, r.split, r.labels) for r in expected
    ]


def test_allowed_roots_reaches_the_reader_through_source_options(tmp_path: Path):
    case = BY_ID["class_folder_flat"]
    root = case.build(tmp_path / "data")
    outside = tmp_path / "outside"
    _link_outside(root / "ship" / "a.png", outside)
    with pytest.raises(SourceFormatError, match="allowed_roots"):
        list(SourceListing("class_folder", root, "all").reader.records())
    listing = SourceListing("class_folder", root, "all", options={"allowed_roots": [str(outside)]})
    assert "ship/a.png" in {r.source_id for r in listing.reader.records()}
    with pytest.raises(ValueError, match="allowed_roots"):  # a misspelt option lists the real ones
        SourceListing("class_folder", root, "all", options={"allowed_root": [str(outside)]})


def test_allowed_roots_must_be_a_list_of_existing_folders(tmp_path: Path):
    root = _copy("class_folder/flat_layout")(tmp_path / "data")
    ClassFolder = get_source("class_folder")
    with pytest.raises(ValueError, match="list of folders"):
        ClassFolder(root, "all", allowed_roots=str(tmp_path))
    with pytest.raises(ValueError, match="not an existing folder"):
        ClassFolder(root, "all", allowed_roots=[tmp_path / "missing"])
    assert ClassFolder(root, "all", allowed_roots=None).allowed_roots == ()


def test_a_symlink_loop_inside_the_root_is_walked_once(tmp_path: Path):
    root = _copy("class_folder/flat_layout")(tmp_path / "data")
    expected = _list(BY_ID["class_folder_flat"], root)
    (root / "ship" / "again").symlink_to(root / "ship", target_is_directory=True)
    source = get_source("class_folder")(root, "all")
    assert list(source.records()) == expected
    assert source.skipped["folder reached twice through a symlink"] == 1


def test_a_link_that_stays_inside_the_root_needs_no_option(tmp_path: Path):
    root = _copy("class_folder/flat_layout")(tmp_path / "data")
    (root / "ship" / "copy_of_c.png").symlink_to(root / "oil_tank" / "c.png")
    ids = {r.source_id for r in _list(BY_ID["class_folder_flat"], root)}
    assert "ship/copy_of_c.png" in ids

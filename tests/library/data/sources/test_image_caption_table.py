"""``image_caption_table`` source: open_clip/SARVLM-style CSV, TSV and parquet tables of image-caption pairs."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lightning_sarclip.data.io import SARReadError, read_sar
from lightning_sarclip.data.sources import DatasetNotFoundError, SourceFormatError, get_source
from lightning_sarclip.data.transforms import build_policy
from tests.conftest import FIXTURES, REAL_SAR

DATA = FIXTURES / "image_caption_table"
Table = get_source("image_caption_table")


def records(root=DATA, split="all", **options):
    source = Table(root, split, **options)
    return source, list(source.records())


def test_per_split_tables_group_repeated_rows():
    _, recs = records()
    assert Counter(r.split for r in recs) == {"train": 3, "val": 2}
    by_id = {r.source_id: r for r in recs}
    assert by_id["images/ship_001.png"].captions == ["A ship sailing in open water.",
                                                     "One bright vessel on dark sea clutter."]
    assert by_id["images/sub/bridge_001.png"].split == "train"
    assert by_id["images/tank_002.tif"].metadata["table"] == "val.csv"
    assert [r.source_id for r in records(split="val")[1]] == ["images/ship_002.jpg", "images/tank_002.tif"]
    assert records(split="test")[1] == []
    assert [r.source_id for r in records()[1]] == [r.source_id for r in recs]  # stable


def test_split_and_label_columns_with_quoted_commas():
    _, recs = records(table="pairs.csv", split_column="split", label_column="label")
    by_id = {r.source_id: r for r in recs}
    assert by_id["images/ship_001.png"].captions[0] == "A ship, small and bright, in open water."
    assert len(by_id["images/ship_001.png"].captions) == 2 and by_id["images/ship_001.png"].labels == ["ship"]
    assert by_id["images/ship_002.jpg"].split == "val"  # "valid" is an accepted alias
    assert by_id["images/tank_002.tif"].split == "test"
    _, unsplit = records(table="pairs.csv")
    assert {r.split for r in unsplit} == {"all"}


def test_tsv_with_pipe_separated_captions_and_table_as_root():
    _, recs = records(DATA / "pairs.tsv")
    assert recs[0].captions == ["A ship in open water.", "A vessel with a wake.", "Bright target on dark sea."]
    assert {r.split for r in recs} == {"all"}
    _, whole = records(DATA / "pairs.tsv", caption_separator=None)
    assert len(whole[0].captions) == 1


def test_parquet_list_column():
    _, recs = records(table="pairs.parquet", split_column="split")
    assert [(r.split, r.captions) for r in recs] == [
        ("train", ["A ship near the coast.", "A moored vessel."]), ("val", ["A tank on a dirt track."])]


def test_images_read_and_convert_with_the_default_policy():
    _, recs = records()
    policy = build_policy(Table.default_policy)
    for r in recs:
        array = policy(read_sar(r.image))
        assert array.dtype == np.float32 and array.shape == (1, 16, 16)
        assert 0.0 <= array.min() and array.max() <= 1.0


def test_missing_root_column_and_ambiguous_tables(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="CSV/TSV/parquet"):
        Table(tmp_path / "nope")
    with pytest.raises(DatasetNotFoundError, match="no table"):
        Table(tmp_path)
    (tmp_path / "a.csv").write_text("imgpath,caption\n")
    (tmp_path / "b.csv").write_text("imgpath,caption\n")
    with pytest.raises(DatasetNotFoundError, match=r"cannot choose a table .*a\.csv"):
        Table(tmp_path)
    with pytest.raises(SourceFormatError, match=r"pairs\.csv.*'filepath'.*image_column.*columns \['imgpath'"):
        records(table="pairs.csv", image_column="filepath")
    with pytest.raises(SourceFormatError, match="caption_column"):
        records(table="pairs.csv", caption_column="text")
    with pytest.raises(ValueError, match="missing_images"):
        Table(DATA, missing_images="ignore")


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "table"
    shutil.copytree(DATA / "images", root / "images")
    return root


def test_paths_escaping_the_root_are_refused(tmp_path):
    root = _copy(tmp_path)
    (root / "train.csv").write_text("imgpath,caption\n../secret.png,a caption\n")
    with pytest.raises(SourceFormatError, match=r"train\.csv.*imgpath \(row 2\).*allowed_roots.*\.\./secret\.png"):
        records(root)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(root / "images" / "ship_001.png", outside / "ship.png")
    (root / "train.csv").write_text(f"imgpath,caption\n{outside / 'ship.png'},a caption\n")
    with pytest.raises(SourceFormatError, match="allowed_roots"):
        records(root)
    _, recs = records(root, allowed_roots=[outside])
    assert recs[0].image.path == str(outside / "ship.png")
    # an absolute path (or one with '..') that really lies inside the table's folder needs no option
    inside = (root / "images" / "ship_001.png").resolve()
    (root / "train.csv").write_text(f"imgpath,caption\n{inside},a caption\nimages/../images/tank_001.png,b\n")
    assert [r.image.path for r in records(root)[1]] == [str(inside), str(root / "images/../images/tank_001.png")]


def test_missing_image_bad_split_and_empty_caption(tmp_path):
    root = _copy(tmp_path)
    (root / "train.csv").write_text("imgpath,caption\nimages/ship_001.png,ok\nimages/gone.png,lost\n")
    with pytest.raises(SourceFormatError, match=r"row 3.*gone\.png"):
        records(root)
    source, recs = records(root, missing_images="skip")
    assert [r.source_id for r in recs] == ["images/ship_001.png"]
    assert source.skipped == {"image file missing": 1}
    (root / "train.csv").write_text("imgpath,caption,split\nimages/ship_001.png,ok,holdout\n")
    with pytest.raises(SourceFormatError, match="'split'.*holdout"):
        records(root, split_column="split")
    (root / "train.csv").write_text("imgpath,caption\nimages/ship_001.png,\nimages/tank_001.png,a tank\n")
    source, recs = records(root)
    assert [r.source_id for r in recs] == ["images/tank_001.png"] and source.skipped == {"empty caption": 1}


def test_corrupt_image_and_broken_parquet(tmp_path):
    root = _copy(tmp_path)
    (root / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (root / "train.csv").write_text("imgpath,caption\nimages/broken.jpg,a caption\n")
    _, recs = records(root)
    with pytest.raises(SARReadError, match="broken.jpg"):
        read_sar(recs[0].image)
    (root / "train.csv").unlink()
    (root / "pairs.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(SourceFormatError, match=r"pairs\.parquet.*parquet"):
        records(root)


MSTAR_JPEG = REAL_SAR / "mstar_soc_hunterlew"


@pytest.mark.real_data
@pytest.mark.skipif(not (MSTAR_JPEG / "manifest.csv").is_file(), reason="real MSTAR JPEG chips not present")
def test_real_mstar_manifest_as_a_table():
    """The real manifest (path, split, class_name) read as a user table: labels as captions, 1200 images."""
    source, recs = records(MSTAR_JPEG / "manifest.csv", image_column="path", caption_column="class_name",
                           split_column="split", label_column="class_name")
    assert Counter(r.split for r in recs) == {"train": 600, "val": 600}
    assert all(r.captions == r.labels for r in recs) and {r.labels[0] for r in recs} >= {"2S1", "BMP2", "ZSU_23_4"}
    image = read_sar(recs[0].image)
    assert image.data.shape == (128, 128, 1) and image.kind == "uint8"

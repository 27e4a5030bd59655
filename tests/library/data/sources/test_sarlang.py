"""``sarlang`` source: SARLANG-1M caption CSVs (column names unconfirmed, see data_cards/sarlang.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lightning_sarclip.data.io import SARReadError, read_sar
from lightning_sarclip.data.sources import DatasetNotFoundError, SourceFormatError, get_source
from lightning_sarclip.data.transforms import build_policy
from tests.conftest import FIXTURES

ROOT = FIXTURES / "sarlang" / "SARLANG-1M"
SARLANG = get_source("sarlang")
MISSING = "image not in SARimages/ (SARDet-100K images must be copied there)"


def records(root=ROOT, split="all", **options):
    source = SARLANG(root, split, **options)
    return source, list(source.records())


def test_train_captions_grouped_per_image_and_missing_sardet_images_counted():
    source, recs = records(split="train")
    assert [r.source_id for r in recs] == ["France_Alpes-Maritimes_Nice_3.png", "SV_Darwin_-12.4278_130.8688.png",
                                           "0009787.jpg"]
    nice = recs[0]
    assert nice.captions[0] == "An aerial view of a city with a lot of buildings."
    assert len(nice.captions) == 2 and nice.metadata["caption_kinds"] == ["mixed", "mixed"]
    assert nice.labels == [] and nice.split == "train" and nice.source == "sarlang"
    assert recs[2].metadata["sardet100k_id"] == "0009787" and "sardet100k_id" not in nice.metadata
    assert source.skipped == {MISSING: 1}  # 0000001.jpg was not copied from SARDet-100K


def test_test_split_merges_complex_and_concise():
    _, recs = records(split="test")
    assert len(recs) == 1 and recs[0].captions == [
        "Two bridges cross a river, with small boats moored near the left bank.", "Bridges over a river."]
    assert recs[0].metadata["caption_kinds"] == ["complex", "concise"]
    assert records(split="test", test_set="concise")[1][0].captions == ["Bridges over a river."]
    assert records(split="test", test_set="complex")[1][0].metadata["caption_kinds"] == ["complex"]
    _, everything = records()
    assert {r.split for r in everything} == {"train", "test"} and len(everything) == 4
    with pytest.raises(ValueError, match="split must be one of"):
        SARLANG(ROOT, "val")


def test_images_read_and_convert_with_the_default_policy():
    _, recs = records()
    policy = build_policy(SARLANG.default_policy)
    for r in recs:
        array = policy(read_sar(r.image))
        assert array.dtype == np.float32 and array.shape == (1, 16, 16)
        assert 0.0 <= array.min() and array.max() <= 1.0 and array.max() > 0.3


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "SARLANG-1M"
    shutil.copytree(ROOT, root)
    return root


def test_missing_layout_and_caption_file(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"SARimages/.*Caption-training\.csv"):
        SARLANG(tmp_path / "nope")
    with pytest.raises(DatasetNotFoundError, match="lacks SARimages/ or Text/caption/"):
        SARLANG(tmp_path)
    root = _copy(tmp_path)
    (root / "Text" / "caption" / "Caption_test1.csv").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"Caption_test1\.csv not found"):
        records(root, split="test")
    assert len(records(root, split="test", test_set="complex")[1]) == 1


def test_unconfirmed_column_names_are_configurable_and_checked(tmp_path):
    root = _copy(tmp_path)
    (root / "Text" / "caption" / "Caption-training.csv").write_text(
        'image_name,text\nSARimages/0009787.jpg,"Ships, docked."\n')
    with pytest.raises(SourceFormatError, match=r"Caption-training\.csv.*'image'.*image_column.*image_name"):
        records(root, split="train")
    _, recs = records(root, split="train", image_column="image_name", caption_column="text")
    assert [(r.source_id, r.captions) for r in recs] == [("0009787.jpg", ["Ships, docked."])]


def test_unsafe_image_names_and_corrupt_images(tmp_path):
    root = _copy(tmp_path)
    caption_file = root / "Text" / "caption" / "Caption-training.csv"
    caption_file.write_text("image,caption\n../etc/passwd,a caption\n")
    with pytest.raises(SourceFormatError, match=r"Caption-training\.csv.*'image'.*'\.\./etc/passwd'"):
        records(root, split="train")
    (root / "SARimages" / "0009787.jpg").write_bytes(b"\xff\xd8\xff broken")
    caption_file.write_text("image,caption\n0009787.jpg,Ships.\n0009787.jpg,\n")
    source, recs = records(root, split="train")
    assert source.skipped == {"empty caption": 1}
    with pytest.raises(SARReadError, match="0009787.jpg"):
        read_sar(recs[0].image)

"""``class_folder`` source: ImageFolder layouts with and without split folders, on fixtures and real MSTAR chips."""

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

DATA = FIXTURES / "class_folder"
SPLIT = DATA / "split_layout"
FLAT = DATA / "flat_layout"
ClassFolder = get_source("class_folder")


def records(root, split="all", **options):
    source = ClassFolder(root, split, **options)
    return source, list(source.records())


def test_split_layout_counts_labels_and_ids():
    source, recs = records(SPLIT)
    assert Counter(r.split for r in recs) == {"train": 8, "val": 3, "test": 2}
    assert source.classnames == ["BMP2", "Tanker", "bulk_carrier"]  # union over splits, sorted
    assert source.skipped == {"not an image file": 1}  # README.txt; the hidden .DS_Store is ignored silently
    by_id = {r.source_id: r for r in recs}
    assert by_id["train/bulk_carrier/batch2/Ship_C01S02N0003.png"].labels == ["bulk_carrier"]  # nested folder
    assert by_id["test/bulk_carrier/Ship_C01S02N0020.bmp"].split == "test"
    assert all(r.source == "class_folder" and len(r.labels) == 1 for r in recs)
    assert [r.source_id for r in records(SPLIT)[1]] == [r.source_id for r in recs]  # stable order and ids
    train = list(ClassFolder(SPLIT, "train").records())
    assert len(train) == 8 and {r.split for r in train} == {"train"}
    # Test lacks "Tanker", but the class list (and so label indices) is the same for every split.
    assert ClassFolder(SPLIT, "test").classnames == source.classnames


def test_every_format_reads_and_converts_with_the_default_policy():
    _, recs = records(SPLIT)
    suffixes = {Path(r.image.path).suffix for r in recs}
    assert suffixes == {".png", ".jpg", ".jpeg", ".bmp", ".tif"}
    policy = build_policy(ClassFolder.default_policy)
    for r in recs:
        image = read_sar(r.image)
        assert image.data.shape == (16, 16, 1), r.source_id  # grey JPEG (3 equal channels) collapses to 1
        array = policy(image)
        assert array.dtype == np.float32 and array.shape == (1, 16, 16)
        assert 0.0 <= array.min() and array.max() <= 1.0 and array.max() > 0.2


def test_flat_layout_yields_all():
    source, recs = records(FLAT)
    assert {r.split for r in recs} == {"all"} and len(recs) == 3
    assert source.classnames == ["oil_tank", "ship"]
    assert list(ClassFolder(FLAT, "train").records()) == []  # no official split named train
    _, as_flat = records(SPLIT, layout="flat")  # split folders read as classes when asked
    assert {r.labels[0] for r in as_flat} == {"train", "val", "test"}


def test_missing_root_and_empty_folders(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"<root>/<split>/<class>"):
        ClassFolder(tmp_path / "nope")
    with pytest.raises(DatasetNotFoundError, match="no sub-folders"):
        ClassFolder(tmp_path)
    (tmp_path / "train" / "ship").mkdir(parents=True)
    (tmp_path / "train" / "ship" / "notes.txt").write_text("x")
    with pytest.raises(DatasetNotFoundError, match="holds no image files"):
        list(ClassFolder(tmp_path, "train").records())
    (tmp_path / "ship").mkdir()
    with pytest.raises(DatasetNotFoundError, match="mixes split folders"):
        ClassFolder(tmp_path)
    with pytest.raises(ValueError, match="layout"):
        ClassFolder(SPLIT, layout="imagenet")


def test_corrupt_image_names_the_file(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(FLAT, root)
    (root / "ship" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _, recs = records(root)
    broken = next(r for r in recs if r.source_id == "ship/broken.png")
    with pytest.raises(SARReadError, match="broken.png"):
        read_sar(broken.image)


def test_symlink_escaping_the_root_is_refused(tmp_path):
    outside = tmp_path / "outside.png"
    shutil.copy(FLAT / "ship" / "a.png", outside)
    root = tmp_path / "root"
    shutil.copytree(FLAT, root)
    (root / "ship" / "link.png").symlink_to(outside)
    with pytest.raises(SourceFormatError, match=r"link\.png.*allowed_roots.*outside\.png"):
        records(root)
    _, recs = records(root, allowed_roots=[tmp_path])
    assert "ship/link.png" in {r.source_id for r in recs}


MSTAR_JPEG = REAL_SAR / "mstar_soc_hunterlew" / "classification" / "caffe" / "data" / "mstar"


@pytest.mark.real_data
@pytest.mark.skipif(not MSTAR_JPEG.is_dir(), reason="real MSTAR JPEG chips not present")
def test_real_mstar_jpeg_class_folders():
    source, recs = records(MSTAR_JPEG)
    assert Counter(r.split for r in recs) == {"train": 600, "val": 600}
    assert source.classnames == [str(i) for i in range(10)]
    assert Counter(r.labels[0] for r in recs if r.split == "val") == {str(i): 60 for i in range(10)}
    policy = build_policy(ClassFolder.default_policy)
    for r in recs[::300]:
        image = read_sar(r.image)
        assert image.data.shape == (128, 128, 1) and image.kind == "uint8"
        array = policy(image)
        assert array.dtype == np.float32 and 0.0 <= array.min() and array.max() <= 1.0

"""Hostile pixels through ``build-corpus``: a NaN chip stops the build with the file's name and keeps every shard
already written; with ``nonfinite: zero`` the build replaces and counts (``nonfinite_pixels_replaced``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lightning_sarclip.data.corpus import CorpusConfig, CorpusSource, build_corpus
from lightning_sarclip.data.image import SARReadError
from tests.conftest import FIXTURES
from tests.hostile import generate


def _root_with_nan_chip(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "chips"
    shutil.copytree(FIXTURES / "class_folder" / "flat_layout", root)
    last_class = sorted(p for p in root.iterdir() if p.is_dir())[-1]
    return root, generate.nan_tiff(last_class / "zz_nan.tif", count=3)


def _config(root: Path, out: Path, policy=None) -> CorpusConfig:
    return CorpusConfig(output=str(out), sources=[CorpusSource("class_folder", str(root), policy=policy,
                                                      splits=["all"])],
                        shard_size=1, max_side=32)


def test_a_nan_chip_stops_the_build_naming_it_and_keeps_what_was_written(tmp_path: Path) -> None:
    root, nan_chip = _root_with_nan_chip(tmp_path)
    out = tmp_path / "corpus"
    with pytest.raises(SARReadError, match="3 of 1024 pixel values are NaN") as err:
        build_corpus(_config(root, out))
    assert str(nan_chip) in str(err.value)
    written = sorted((out / "shards").glob("shard-*.arrow"))
    assert written  # the chips before it are stored (shard_size 1): a fixed chip resumes from there
    nan_chip.unlink()
    generate.float_tiff(nan_chip, generate.np.full((32, 32), 0.5, generate.np.float32))
    summary = build_corpus(_config(root, out))
    assert summary["images_already_stored"] == len(written)
    assert summary["nonfinite_pixels_replaced"] == 0


def test_nonfinite_zero_replaces_and_counts_in_the_summary(tmp_path: Path) -> None:
    root, _ = _root_with_nan_chip(tmp_path)
    summary = build_corpus(_config(root, tmp_path / "corpus", policy={"name": "integer", "nonfinite": "zero",
                                                                      "out_of_range": "clip"}))
    assert summary["nonfinite_pixels_replaced"] == 3

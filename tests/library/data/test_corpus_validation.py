"""build-corpus checks everything before it writes anything, and resumes by key after the sources changed.

Every refused config must leave no output folder behind; a resumed build must store each listed record exactly once
(compared with a from-scratch build of the changed source) or refuse, naming the records that changed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lightning_sarclip.commands import build_corpus as command
from lightning_sarclip.data import corpus
from lightning_sarclip.data.corpus import build_corpus
from lightning_sarclip.data.corpus_config import CorpusConfig, CorpusConfigError, CorpusSource
from lightning_sarclip.data.corpus_resume import SourceChangedError
from lightning_sarclip.data.transforms import IntegerScale
from tests.conftest import FIXTURES

CLASS_FOLDER = FIXTURES / "class_folder" / "split_layout"


def _synthetic(tmp_path: Path, **overrides: Any) -> CorpusSource:
    values: dict[str, Any] = {"name": "synthetic", "root": str(tmp_path),
                              "options": {"num_samples": 2, "image_size": 32}}
    return CorpusSource(**{**values, **overrides})


def _config(tmp_path: Path, sources: list[CorpusSource] | None = None, **overrides: Any) -> CorpusConfig:
    sources = [_synthetic(tmp_path)] if sources is None else sources
    return CorpusConfig(**{"output": str(tmp_path / "out"), "sources": sources, "max_side": 16, **overrides})


def _refused(config: CorpusConfig, match: str) -> CorpusConfigError:
    with pytest.raises(CorpusConfigError, match=match) as caught:
        build_corpus(config)
    assert not Path(config.output).exists(), "a refused config must not create the output folder"
    return caught.value


# ---------------------------------------------------------------------------------------------- config values
BAD_SETTINGS = [
    ({"shard_size": 0}, r"shard_size: expected an integer >= 1, got 0"),
    ({"max_side": -5}, r"max_side: expected an integer >= 8, got -5"),
    ({"format": "parquet"}, r"format: expected one of \['arrow', 'webdataset'\], got 'parquet'"),
    ({"phash_distance": 65}, r"phash_distance: expected an integer in \[0, 64\], got 65"),
    ({"phash_distance": -1}, r"phash_distance: expected an integer in \[0, 64\]"),
    ({"seed": 1.5}, r"seed: expected an integer, got 1.5"),
    ({"caption_styles": ["generall"]}, r"caption_styles: expected a non-empty list of styles from \['general'"),
    ({"caption_styles": []}, r"caption_styles: expected a non-empty list"),
    ({"progress_every": 0}, r"progress_every: expected an integer >= 1, got 0"),
    ({"held_out": {"wo_x": ["mstarr"]}}, r"held_out.wo_x: \['mstarr'\] is not a source of this config; expected "
                                         r"names from sources: \['synthetic'\]"),
    ({"held_out": {"wo_x": []}}, r"held_out.wo_x: expected a non-empty list of source names"),
    ({"held_out": {"../x": ["synthetic"]}}, r"held_out: variant name '../x'"),
    ({"sources": []}, r"sources: expected a non-empty list of sources"),
]


@pytest.mark.parametrize(("overrides", "match"), BAD_SETTINGS, ids=lambda v: str(v)[:40])
def test_a_bad_setting_is_refused_before_anything_is_written(tmp_path, overrides, match):
    _refused(_config(tmp_path, **overrides), match)


BAD_SOURCE_FIELDS = [
    ({"name": "mstarr"}, r"sources\[0\].name: unknown SAR source 'mstarr'; known sources: \["),
    ({"n_captions": 0}, r"sources\[0\].n_captions: expected an integer >= 1, got 0"),
    ({"detection": "boxes"}, r"sources\[0\].detection: expected one of \['whole', 'chips', 'both'\], got 'boxes'"),
    ({"val_fraction": 1.0}, r"sources\[0\].val_fraction: expected a number in \[0, 1\), got 1.0"),
    ({"test_fraction": -0.1}, r"sources\[0\].test_fraction: expected a number in \[0, 1\)"),
    ({"val_fraction": 0.6, "test_fraction": 0.5}, r"sources\[0\].val_fraction \+ test_fraction: expected a sum < 1"),
    ({"max_images": 0}, r"sources\[0\].max_images: expected null \(everything\) or an integer >= 1, got 0"),
    ({"splits": ["training"]}, r"sources\[0\].splits: \['training'\] are not splits of synthetic"),
    ({"splits": ["train", "train"]}, r"sources\[0\].splits: expected each split once and 'all' alone"),
    ({"splits": ["all", "test"]}, r"sources\[0\].splits: expected each split once and 'all' alone"),
    ({"policy": "dbwindow"}, r"sources\[0\].policy: conversion policy: expected one of"),
    ({"policy": {"name": "db_window", "lowdb": -30}}, r"sources\[0\].policy: .*lowdb"),
    ({"options": {"num_sample": 3}}, r"sources\[0\].options \(synthetic at .*\): ValueError: source 'synthetic': "
                                     r"unknown source_options \['num_sample'\]"),
    ({"root": "/nonexistent/sar/root"}, r"sources\[0\].root \(synthetic at /nonexistent/sar/root, split 'train'\): "
                                        r"DatasetNotFoundError"),
]


@pytest.mark.parametrize(("overrides", "match"), BAD_SOURCE_FIELDS, ids=lambda v: str(v)[:40])
def test_a_bad_source_field_is_refused_before_anything_is_written(tmp_path, overrides, match):
    _refused(_config(tmp_path, [_synthetic(tmp_path, **overrides)]), match)


def test_every_problem_is_reported_at_once(tmp_path):
    config = _config(tmp_path, [_synthetic(tmp_path), _synthetic(tmp_path, n_captions=0, root="/nonexistent"),
                                _synthetic(tmp_path, root="/nonexistent")],
                     shard_size=0, held_out={"wo_x": ["mstarr"]})
    error = _refused(config, "4 problem")
    assert isinstance(error, ValueError)
    fields = [problem.split(":")[0].split(" ")[0] for problem in error.problems]
    assert fields == ["shard_size", "sources[1].n_captions", "held_out.wo_x", "sources[2].root"]


# ---------------------------------------------------------------------------------------------- later sources
def test_a_bad_later_source_is_refused_before_the_first_is_processed(tmp_path):
    config = _config(tmp_path, [_synthetic(tmp_path, options={"num_samples": 50, "image_size": 32}),
                                CorpusSource(name="class_folder", root=str(tmp_path / "missing"))])
    _refused(config, r"sources\[1\].root \(class_folder at .*missing")


def test_sources_failing_while_listing_are_refused_together(tmp_path):
    empty = tmp_path / "table"
    empty.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(empty / "img.png")
    (empty / "pairs.csv").write_text("imgpath,caption,split\nimg.png,a caption,test\n")
    outside = tmp_path / "outside.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(outside)
    escaping = tmp_path / "escaping" / "train" / "ship"
    escaping.mkdir(parents=True)
    (escaping / "a.png").symlink_to(outside)  # the reader refuses it only when it lists the records
    config = _config(tmp_path, [
        _synthetic(tmp_path),
        CorpusSource(name="image_caption_table", root=str(empty / "pairs.csv"), options={"split_column": "split"},
                     splits=["train"]),
        CorpusSource(name="class_folder", root=str(tmp_path / "escaping")),
    ])
    error = _refused(config, "2 problem")
    assert "sources[1] (image_caption_table" in error.problems[0] and "yielded no records" in error.problems[0]
    assert "sources[2] (class_folder" in error.problems[1] and "SourceFormatError" in error.problems[1]


def test_a_key_listed_twice_by_one_source_is_refused(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "img.png")
    # The same image in two splits: one record per split, both with source_id 'img.png'.
    (tmp_path / "pairs.csv").write_text("imgpath,caption,split\nimg.png,one,train\nimg.png,two,test\n")
    config = _config(tmp_path, [CorpusSource(name="image_caption_table", root=str(tmp_path / "pairs.csv"),
                                             options={"split_column": "split"})])
    error = _refused(config, r"is listed 2 times: by sources\[0\] \(image_caption_table at .*\) as "
                             r"'image_caption_table:img.png', sources\[0\]")
    assert len(error.problems) == 1


def test_two_roots_of_one_source_with_the_same_paths_get_distinct_keys(tmp_path):
    config = _config(tmp_path, [CorpusSource(name="class_folder", root=str(CLASS_FOLDER)),
                                CorpusSource(name="class_folder", root=str(CLASS_FOLDER))])
    summary = build_corpus(config)
    keys = pq.read_table(tmp_path / "out" / "manifest.parquet").to_pandas().drop_duplicates("key")
    assert summary["images"] == 26 and len(keys) == 26
    assert summary["status"]["duplicate"] == 13  # the second copy of each image


# ---------------------------------------------------------------------------------------------- resume
class Killed(RuntimeError):
    pass


def _kill_after(monkeypatch, rows: int) -> None:
    """Make the build die while converting row ``rows + 1`` (as a ``kill -9`` would, minus the process)."""
    real = corpus._make_row
    calls = {"n": 0}

    def make_row(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > rows:
            raise Killed("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(corpus, "_make_row", make_row)


def _killed_build(tmp_path: Path, monkeypatch, config: CorpusConfig, rows: int) -> dict:
    with monkeypatch.context() as patch:
        _kill_after(patch, rows)
        with pytest.raises(Killed):
            build_corpus(config)
    return json.loads((Path(config.output) / "build_state.json").read_text())


def _stored_keys(out: Path) -> list[str]:
    return sorted(pq.read_table(out / "manifest.parquet").to_pandas().drop_duplicates(["shard", "row"]).key)


def _class_folder_config(root: Path, out: Path, **overrides: Any) -> CorpusConfig:
    return CorpusConfig(output=str(out), sources=[CorpusSource(name="class_folder", root=str(root), **overrides)],
                        max_side=16, shard_size=3)


def test_resume_after_an_image_was_added_stores_every_image_once(tmp_path, monkeypatch):
    root = tmp_path / "root"
    shutil.copytree(CLASS_FOLDER, root)
    killed = _class_folder_config(root, tmp_path / "killed")
    state = _killed_build(tmp_path, monkeypatch, killed, rows=7)
    assert [s["records"] for s in state["shards"]] == [3, 3] and not state["finished"]
    # A killed build can leave a shard that the state does not list yet, and its temporary file.
    (tmp_path / "killed" / "shards" / "shard-00007.arrow").write_bytes(b"partial")
    (tmp_path / "killed" / "shards" / ".shard-00007.meta.parquet.a1b2c3.tmp").write_bytes(b"partial")

    # Listed first (the train split first, A000 before HB03333): resuming by count would skip it and store the
    # 6th record again.
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(root / "train" / "BMP2" / "A000.png")
    summary = build_corpus(killed)
    scratch = build_corpus(_class_folder_config(root, tmp_path / "scratch"))

    assert summary["images_already_stored"] == 6 and summary["images_this_run"] == 8
    assert summary["images"] == scratch["images"] == 14
    assert _stored_keys(tmp_path / "killed") == _stored_keys(tmp_path / "scratch")
    assert len(set(_stored_keys(tmp_path / "killed"))) == 14
    manifest = pq.read_table(tmp_path / "killed" / "manifest.parquet").to_pandas()
    assert "train/BMP2/A000.png" in set(manifest.source_id)
    names = sorted(p.name for p in (tmp_path / "killed" / "shards").iterdir())
    assert "shard-00007.arrow" not in names and not [n for n in names if n.endswith(".tmp")]
    assert names == sorted(p.name for p in (tmp_path / "scratch" / "shards").iterdir())


def test_resume_after_a_stored_image_was_removed_is_refused(tmp_path, monkeypatch):
    root = tmp_path / "root"
    shutil.copytree(CLASS_FOLDER, root)
    out = tmp_path / "out"
    _killed_build(tmp_path, monkeypatch, _class_folder_config(root, out), rows=7)
    before = sorted(p.name for p in (out / "shards").iterdir())
    (root / "train" / "BMP2" / "HB03334.jpg").unlink()  # the 2nd listed record: stored in shard 0

    with pytest.raises(SourceChangedError, match=r"1 stored record\(s\) are no longer listed, e.g. "
                                                 r"class_folder:train/BMP2/HB03334.jpg \(key [0-9a-f]{20}\).*delete"):
        build_corpus(_class_folder_config(root, out))
    assert sorted(p.name for p in (out / "shards").iterdir()) == before
    assert not json.loads((out / "build_state.json").read_text())["finished"]


def test_resume_after_a_stored_record_changed_is_refused(tmp_path, monkeypatch):
    for name in "abcd":
        Image.fromarray(np.full((8, 8), ord(name), np.uint8)).save(tmp_path / f"{name}.png")
    table = tmp_path / "pairs.csv"
    table.write_text("imgpath,caption,split\n" + "".join(f"{n}.png,caption {n},train\n" for n in "abcd"))
    config = CorpusConfig(output=str(tmp_path / "out"), max_side=16, shard_size=2, sources=[
        CorpusSource(name="image_caption_table", root=str(table), options={"split_column": "split"},
                     splits=["train"])])
    _killed_build(tmp_path, monkeypatch, config, rows=3)
    table.write_text(table.read_text().replace("caption a", "another caption"))
    with pytest.raises(SourceChangedError, match=r"1 stored record\(s\) are listed with other contents .*"
                                                 r"image_caption_table:a.png"):
        build_corpus(config)


def test_an_unfinished_build_of_an_older_version_is_not_resumed(tmp_path):
    config = _config(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "build_state.json").write_text(json.dumps({"shards": [], "finished": False,
                                                      "config_hash": corpus._config_hash(config)}))
    with pytest.raises(ValueError, match="another build-corpus version .* cannot be resumed"):
        build_corpus(config)


# ---------------------------------------------------------------------------------------------- non-finite
def _zeroing_policy(image):
    """Stands in for a policy with ``nonfinite: zero`` that replaced 2 pixels of every image."""
    image.meta["nonfinite_replaced"] = 2
    return IntegerScale()(image)


def test_replaced_nonfinite_pixels_are_counted_across_a_resume(tmp_path, monkeypatch, capsys):
    config = _class_folder_config(CLASS_FOLDER, tmp_path / "out", policy=_zeroing_policy)
    state = _killed_build(tmp_path, monkeypatch, config, rows=4)
    assert [s["nonfinite_replaced"] for s in state["shards"]] == [6]
    summary = build_corpus(config)  # converts 10 images; the first shard's 6 come from the state
    assert summary["images_this_run"] == 10
    assert summary["nonfinite_pixels_replaced"] == 26
    assert "26 non-finite pixels replaced" in command.status_line(summary)


def test_the_command_reports_config_problems_without_a_traceback(tmp_path):
    config = tmp_path / "corpus.yaml"
    config.write_text(json.dumps({"output": str(tmp_path / "out"), "shard_size": 0,
                                  "sources": [{"name": "synthetic", "root": str(tmp_path)}]}))
    with pytest.raises(SystemExit, match=r"build-corpus: build-corpus config: 1 problem\(s\), nothing was "
                                         r"written:\n  - shard_size: expected an integer >= 1, got 0"):
        command.main(["--config", str(config)])
    assert not (tmp_path / "out").exists()


def test_a_finished_corpus_is_finalised_again_without_its_sources(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(CLASS_FOLDER, root)
    config = _class_folder_config(root, tmp_path / "out")
    first = build_corpus(config)
    shutil.rmtree(root)  # e.g. the corpus was copied to a machine without the raw datasets
    again = build_corpus(config)
    assert again["images"] == first["images"] == 13 and again["images_this_run"] == 0


def test_the_names_that_moved_out_of_corpus_are_still_importable_from_it():
    from lightning_sarclip.data import corpus_config, corpus_resume

    for module, names in ((corpus_config, ["CorpusConfig", "CorpusSource", "CorpusConfigError", "validate_config"]),
                          (corpus_resume, ["SourceChangedError", "survey_sources", "record_fingerprint"])):
        for name in names:
            assert getattr(corpus, name) is getattr(module, name), name
            assert name in corpus.__all__, name

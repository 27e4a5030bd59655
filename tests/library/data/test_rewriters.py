"""build-corpus's caption rewriter: configured by class path, cached on disk, never asked twice for one answer.

A counting fake stands in for the model: a rebuild with the same cache calls it 0 times (and never constructs it),
a build killed between shards and resumed calls it once per record in all, and another identity asks again.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from lightning_sarclip.commands.build_corpus import config_from_args, status_line
from lightning_sarclip.data import corpus
from lightning_sarclip.data.corpus import build_corpus, read_shard
from lightning_sarclip.data.corpus_config import CorpusConfig, CorpusConfigError, CorpusSource
from lightning_sarclip.data.rewriters import CachedRewriter

FAKE = f"{__name__}.CountingRewriter"
N_IMAGES = 6  # per split: the synthetic source lists train, val and test


class CountingRewriter:
    """Prefixes every caption; counts constructions and calls over the whole test session (class attributes)."""

    constructed = 0
    calls = 0

    def __init__(self, prefix: str = "Rewritten:") -> None:
        type(self).constructed += 1
        self.prefix = prefix

    def rewrite(self, record, captions: list[str]) -> list[str]:
        type(self).calls += 1
        return [f"{self.prefix} {caption}" for caption in captions]


class NoRewrite:
    pass


@pytest.fixture
def counts():
    CountingRewriter.constructed = CountingRewriter.calls = 0
    return CountingRewriter


def _config(tmp_path: Path, name: str, **overrides: Any) -> CorpusConfig:
    source = CorpusSource(name="synthetic", root=str(tmp_path), n_captions=2,
                          options={"num_samples": N_IMAGES, "image_size": 32})
    values: dict[str, Any] = {"output": str(tmp_path / name), "sources": [source], "max_side": 16, "shard_size": 2,
                              "rewriter": {"class_path": FAKE, "init_args": {}}}
    return CorpusConfig(**{**values, **overrides})


def _captions(out: Path) -> dict[str, list[str]]:
    rows = {}
    for shard in sorted((out / "shards").glob("*.arrow")):
        table = read_shard(shard)
        rows.update(zip(table.column("key").to_pylist(), table.column("captions").to_pylist(), strict=True))
    return rows


def test_the_rewriter_rewrites_and_a_rebuild_never_calls_it_again(tmp_path, counts):
    cache = str(tmp_path / "cache")
    first = build_corpus(_config(tmp_path, "one", rewriter_cache=cache))
    images = first["images"]
    assert counts.calls == images and counts.constructed == 1
    assert first["rewriter"]["calls"] == images and first["rewriter"]["cached"] == 0
    assert f"rewriter {images} calls + 0 cached" in status_line(first)
    captions = _captions(tmp_path / "one")
    assert all(c.startswith("Rewritten: ") for caps in captions.values() for c in caps)

    again = build_corpus(_config(tmp_path, "two", rewriter_cache=cache))  # a rebuild elsewhere, same cache
    assert counts.calls == images and counts.constructed == 1  # 0 calls, the model never loaded
    assert again["rewriter"] == {"calls": 0, "cached": images, "cache": first["rewriter"]["cache"]}
    assert _captions(tmp_path / "two") == captions

    other = build_corpus(_config(tmp_path, "three", rewriter_cache=cache,
                                 rewriter={"class_path": FAKE, "init_args": {"prefix": "Other:"}}))
    assert other["rewriter"]["calls"] == images  # another identity asks again
    assert all(c.startswith("Other: ") for caps in _captions(tmp_path / "three").values() for c in caps)


def test_a_resumed_build_asks_once_per_record(tmp_path, counts, monkeypatch):
    config = _config(tmp_path, "out")  # default cache: <output>/rewriter_cache
    flush, flushed = corpus._flush, []

    def flush_then_die(*args, **kwargs):
        if len(flushed) == 1:
            raise KeyboardInterrupt("killed after the first shard")
        flush(*args, **kwargs)
        flushed.append(1)

    monkeypatch.setattr(corpus, "_flush", flush_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_corpus(config)
    asked = counts.calls
    assert asked == 4  # two shards of two: the records of the unwritten second shard were rewritten too
    monkeypatch.setattr(corpus, "_flush", flush)
    summary = build_corpus(config)
    assert counts.calls == summary["images"]  # each record's captions rewritten exactly once
    assert summary["rewriter"]["cached"] == 2  # the unwritten shard's rows came from the cache
    assert (tmp_path / "out" / "rewriter_cache").is_dir()
    # the rewriter does not change the config hash at its default, and does change it when set
    assert corpus._config_hash(config) != corpus._config_hash(_config(tmp_path, "out", rewriter=None))
    assert corpus._config_hash(config) == corpus._config_hash(_config(tmp_path, "out", rewriter_cache="elsewhere"))


def test_cache_entries_are_checked(tmp_path, counts):
    from lightning_sarclip.data.records import ImageRef, SARRecord

    cached = CachedRewriter({"class_path": FAKE}, tmp_path / "cache")
    record = SARRecord("s", "a", "train", ImageRef("unused.png"))
    assert cached(record, ["One.", "Two."]) == ["Rewritten: One.", "Rewritten: Two."]
    entry = cached.entry(record, ["One.", "Two."])
    assert json.loads(entry.read_text())["rewritten"] == ["Rewritten: One.", "Rewritten: Two."]
    assert json.loads((cached.folder / "rewriter.json").read_text())["class_path"] == FAKE
    entry.write_text("{broken")
    with pytest.raises(ValueError, match=f"{entry}: not a rewriter cache entry"):
        cached(record, ["One.", "Two."])


@pytest.mark.parametrize("spec, message", [
    ({"class_path": "nowhere.Rewriter"}, r"rewriter.class_path: cannot import module 'nowhere'"),
    ({"class_path": f"{__name__}.Missing"}, r"rewriter.class_path: module .* has no class 'Missing'"),
    ({"class_path": f"{__name__}.NoRewrite"}, r"has no method rewrite\(record, captions\)"),
    ({"class_path": FAKE, "init_args": {"prefx": "x"}}, r"rewriter.init_args: .* does not accept \['prefx'\]"),
    ({"class_path": FAKE, "args": {}}, r"rewriter: expected null or a mapping \{class_path"),
    ("paraphrase", r"rewriter: expected null or a mapping"),
])
def test_bad_rewriter_specs_are_refused_before_anything_is_written(tmp_path, spec, message):
    config = _config(tmp_path, "out", rewriter=spec)
    with pytest.raises(CorpusConfigError, match=message):
        build_corpus(config)
    assert not Path(config.output).exists()


def test_the_command_parses_a_rewriter(tmp_path):
    path = tmp_path / "corpus.yaml"
    path.write_text(yaml.safe_dump({
        "output": str(tmp_path / "out"), "sources": [{"name": "synthetic", "root": str(tmp_path)}],
        "rewriter": {"class_path": FAKE, "init_args": {"prefix": "P:"}}, "rewriter_cache": str(tmp_path / "c")}))
    config = config_from_args(["--config", str(path)])
    assert config.rewriter == {"class_path": FAKE, "init_args": {"prefix": "P:"}}
    assert config.rewriter_cache == str(tmp_path / "c")


@pytest.mark.skipif(importlib.util.find_spec("transformers") is not None, reason="transformers is installed")
def test_the_hf_rewriter_names_its_extra_when_transformers_is_missing(tmp_path):
    from lightning_sarclip.data.hf_rewriter import HFParaphraser

    spec = {"class_path": "lightning_sarclip.data.hf_rewriter.HFParaphraser", "init_args": {"model": "/models/t5"}}
    with pytest.raises(CorpusConfigError, match=r"lightning-sarclip\[rewrite\]"):
        build_corpus(_config(tmp_path, "out", rewriter=spec))
    with pytest.raises(ImportError, match=r"pip install 'lightning-sarclip\[rewrite\]'"):
        HFParaphraser("/models/t5")

"""The ``paper`` corpus protocol on the fixtures: counts printed beside the paper's, domain-held-out variants
without leakage, and earlier builds still resumable."""

import dataclasses
import json
import os

import pyarrow.parquet as pq
import pytest

from lightning_sarclip.commands import build_corpus as command
from lightning_sarclip.data import corpus
from lightning_sarclip.data.corpus_report import REFERENCE_COUNTS
from tests.conftest import REPO_ROOT

PAPER = REPO_ROOT / "experiments" / "corpus" / "paper.yaml"
#: The fixture tree of each source entry of paper.yaml, in its order (and options where the fixture differs).
FIXTURE_ROOTS = {
    "mstar": ("tests/data/mstar/sdms", {}),
    "opensarship": ("tests/data/opensarship", {"product": "Patch_Uint8"}),
    "sample": ("tests/data/sample", {}),
    "atrnet_star": ("tests/data/atrnet_star/ground", {}),
    "sardet100k": ("tests/data/sardet100k/SARDet_100K", {}),
    "fair_csar": ("tests/data/fair_csar/FAIR-CSAR", {}),
    "sarlang": ("tests/data/sarlang/SARLANG-1M", {}),
}


def _paper_on_fixtures(out) -> corpus.CorpusConfig:
    config = command.config_from_args(["--config", str(PAPER), "--output", str(out), "--max_side", "64"])
    for source in config.sources:
        root, options = FIXTURE_ROOTS[source.name]
        source.root = str(REPO_ROOT / root)
        source.options = {**source.options, **options}
    return config


@pytest.fixture(scope="module")
def paper_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper") / "corpus"
    config = _paper_on_fixtures(out)
    cwd = os.getcwd()
    os.chdir(REPO_ROOT)
    try:
        summary = corpus.build_corpus(config)
    finally:
        os.chdir(cwd)
    return config, summary


def test_paper_protocol_prints_our_counts_beside_the_papers(paper_build, monkeypatch, capsys):
    config, summary = paper_build
    monkeypatch.setattr(command, "config_from_args", lambda args: config)
    command.main([])  # finalises the finished build again and prints its report
    printed = capsys.readouterr().out
    assert "| Dataset | Column | Ours | sarvlm1m | Difference |" in printed
    paper = REFERENCE_COUNTS["sarvlm1m"]
    for source, column in (("mstar", "train_images"), ("sample", "train_images"), ("atrnet_star", "val_images"),
                           ("opensarship", "train_images")):
        ours = summary["stats"][source][column]
        assert f"| {source} | {column} | {ours:,} | {paper[source][column]:,} | {ours - paper[source][column]:+,} |" \
            in printed
    assert "| sarsim | train_images | 0 | 21,168 | -21,168 |" in printed  # no reader: counted as missing
    # OpenSARShip and SAMPLE are train only; ATRNet-STAR's official test chips are val, none test
    assert set(summary["stats"]["opensarship"]) == set(summary["stats"]["sample"]) == {"train_images",
                                                                                       "train_captions"}
    assert "test_pairs" not in summary["stats"]["atrnet_star"] and summary["stats"]["atrnet_star"]["val_images"]


def test_domain_held_out_variants_leak_nothing(paper_build):
    config, summary = paper_build
    assert summary["leakage"] == {name: {source: 0 for source in held} for name, held in config.held_out.items()}
    variant = pq.read_table(f"{config.output}/variants/wo_mstar.parquet").to_pandas()
    assert len(variant) and not {"mstar", "sample"} & set(variant.source)
    assert "| wo_mstar | sample | 0 |" in (corpus.Path(config.output) / "stats.md").read_text()


def test_a_build_from_before_the_pixel_check_still_resumes(tmp_path):
    """Its state holds the hash of the earlier form (phash_distance and held_out hashed; no new fields)."""
    config = dataclasses.replace(_paper_on_fixtures(tmp_path / "old"), reference=None)
    config.sources = [s for s in config.sources if s.name == "mstar"]
    config.sources[0].rename_splits = {}
    config.held_out = {"wo_mstar": ["mstar"]}
    payload = dataclasses.asdict(config)
    for name in ("progress_every", "rewriter_cache", "rewriter", "min_pixel_correlation", "reference"):
        payload.pop(name)
    for source in payload["sources"]:
        source.pop("rename_splits")
    old_hash = corpus.hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    corpus.Path(config.output).mkdir(parents=True)
    (corpus.Path(config.output) / "build_state.json").write_text(json.dumps({"config_hash": old_hash, "version": 2}))
    assert corpus.build_corpus(config)["images"] > 0

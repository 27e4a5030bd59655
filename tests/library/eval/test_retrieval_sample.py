"""The paper's retrieval protocol (``protocol: sample``): N unique images of a split, one caption each, seeded,
written next to the results and scored again exactly from that file; rows and report tables name the protocol."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import torch

from lightning_sarclip.commands import evaluate as evaluate_command
from lightning_sarclip.eval import evaluate as ev
from lightning_sarclip.eval.report import write_report
from lightning_sarclip.eval.results import read_results
from lightning_sarclip.eval.retrieval_sample import draw_sample, read_sample, write_sample
from tests.conftest import TEST_ARCH
from tests.helpers import write_caption_table

N_VAL = 12


@pytest.fixture
def table(tmp_path: Path) -> tuple[Path, dict[str, list[tuple[str, str]]]]:
    root = tmp_path / "sarvlm"
    return root, write_caption_table(root, {"train": 2, "val": N_VAL})


def _spec(root: Path, **kwargs) -> ev.DatasetSpec:
    values = {"name": "sarvlm_val", "source": "image_caption_table", "root": str(root), "split": "val",
              "task": "retrieval", "protocol": "sample", "sample_size": 5, **kwargs}
    spec = ev.DatasetSpec(**values)
    ev.check_dataset_spec(spec)
    return spec


def _captions_by_image(rows: list[tuple[str, str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path, caption in rows:
        out.setdefault(path, set()).add(caption)
    return out


def test_a_sample_holds_unique_images_with_one_of_their_captions_each(table):
    root, rows = table
    prepared = ev.prepare_dataset(_spec(root), image_size=32, in_chans=1)
    truth = _captions_by_image(rows["val"])
    assert prepared.protocol == "sample5" and len(prepared.images) == 5 and len(set(prepared.ids)) == 5
    assert all(len(c) == 1 and c[0] in truth[i] for i, c in zip(prepared.ids, prepared.captions, strict=True))
    again = ev.prepare_dataset(_spec(root), image_size=32, in_chans=1)
    assert (again.ids, again.captions) == (prepared.ids, prepared.captions)  # same seed, same sample
    others = [ev.prepare_dataset(_spec(root, seed=s), image_size=32, in_chans=1) for s in (1, 2)]
    assert any((o.ids, o.captions) != (prepared.ids, prepared.captions) for o in others)
    assert prepared.images[0]["image"].shape == (1, 32, 32)


def test_a_sample_larger_than_the_split_takes_every_image_and_says_so(table, caplog):
    root, _ = table
    with caplog.at_level(logging.WARNING, logger="lightning_sarclip"):
        prepared = ev.prepare_dataset(_spec(root, sample_size=5000), image_size=32, in_chans=1)
    assert prepared.protocol == f"sample{N_VAL}" and sorted(prepared.ids) == sorted({p for p, _ in table[1]["val"]})
    assert f"a retrieval sample of 5000 images was asked, but the split holds {N_VAL} unique images" in caplog.text


def test_draw_sample_takes_each_image_once_even_when_ids_repeat():
    positions, captions = draw_sample(["a", "b", "a", "c"], [["a1"], ["b1", "b2"], ["a2"], ["c1"]], 10, 0, "here")
    assert positions == [0, 1, 3] and captions[0] == "a1" and captions[2] == "c1"


def test_the_sample_file_round_trips_and_is_scored_exactly(table, tmp_path):
    root, _ = table
    out = tmp_path / "out" / "results.jsonl"
    suite = {"output": str(out), "model": {"model_name": TEST_ARCH, "allow_random_weights": True},
             "figures": False, "datasets": [
                 {"name": "sarvlm_val", "source": "image_caption_table", "root": str(root), "split": "val",
                  "task": "retrieval", "protocol": "sample", "sample_size": 5, "seed": 3},
                 {"name": "sarvlm_val_all", "source": "image_caption_table", "root": str(root), "split": "val",
                  "task": "retrieval"}]}
    (tmp_path / "suite.yaml").write_text(json.dumps(suite))
    torch.manual_seed(0)  # the random-init model: the same weights in both evaluations
    evaluate_command.main(["--config", str(tmp_path / "suite.yaml")])
    written = tmp_path / "out" / "retrieval_samples" / "sarvlm_val_sample5_seed3.csv"
    with written.open(newline="") as handle:
        assert next(csv.reader(handle)) == ["imgpath", "caption"]
    drawn = ev.prepare_dataset(_spec(root, seed=3), image_size=32, in_chans=1)
    assert read_sample(written) == list(zip(drawn.ids, [c[0] for c in drawn.captions], strict=True))

    rows = read_results(out)
    protocols = {(r["dataset"], r["protocol"], r["extra"].get("sample_file")) for r in rows}
    assert protocols == {("sarvlm_val", "sample5", str(written)), ("sarvlm_val_all", "all", None)}
    assert {r["extra"]["num_images"] for r in rows if r["dataset"] == "sarvlm_val"} == {5}

    suite["datasets"] = [{"name": "sarvlm_val", "source": "image_caption_table", "root": str(root), "split": "val",
                          "task": "retrieval", "protocol": "sample", "sample_file": str(written)}]
    suite["output"] = str(tmp_path / "again" / "results.jsonl")
    (tmp_path / "again.yaml").write_text(json.dumps(suite))
    torch.manual_seed(0)
    evaluate_command.main(["--config", str(tmp_path / "again.yaml")])
    again = read_results(tmp_path / "again" / "results.jsonl")
    assert {r["protocol"] for r in again} == {f"file:{written.name}"}
    first = {r["metric"]: r["value"] for r in rows if r["dataset"] == "sarvlm_val"}
    assert {r["metric"]: r["value"] for r in again} == pytest.approx(first)  # the same images, the same captions

    report = write_report(rows + again, tmp_path / "report")
    text = report["retrieval"].read_text()
    for title in ("Retrieval: sarvlm_val (val, sample5)", f"Retrieval: sarvlm_val (val, file:{written.name})",
                  "Retrieval: sarvlm_val_all\n"):
        assert title in text


def test_a_corpus_sample_names_images_by_record_key(fixture_corpus, tmp_path):
    spec = ev.DatasetSpec(name="corpus_val", source="corpus", root=str(fixture_corpus), split="val",
                          task="retrieval", protocol="sample", sample_size=3)
    prepared = ev.prepare_dataset(spec, image_size=32, in_chans=1)
    assert len(set(prepared.ids)) == len(prepared.images) <= 3 and all(":" in i for i in prepared.ids)
    path = write_sample(tmp_path / "corpus.csv", prepared.ids, [c[0] for c in prepared.captions])
    again = ev.prepare_dataset(ev.DatasetSpec(**{**spec.__dict__, "sample_file": str(path)}), 32, 1)
    assert (again.ids, again.captions) == (prepared.ids, prepared.captions)


def test_bad_protocol_settings_and_sample_files_are_named(table, tmp_path):
    root, _ = table
    with pytest.raises(ValueError, match="protocol 'sample' is a retrieval protocol; expected task: retrieval"):
        _spec(root, task="both")
    with pytest.raises(ValueError, match="protocol must be one of"):
        _spec(root, protocol="sample5000")
    with pytest.raises(ValueError, match="sample_file .* is read with protocol: sample"):
        _spec(root, protocol="all", sample_file="x.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("imgpath,caption\nimages/val_000.png,a ship\nimages/nowhere.png,a tank\n")
    with pytest.raises(ValueError, match=r"bad.csv: line 3: imgpath 'images/nowhere.png' is not an image of"):
        ev.prepare_dataset(_spec(root, sample_file=str(bad)), 32, 1)
    bad.write_text("path,text\na,b\n")
    with pytest.raises(ValueError, match=r"bad.csv: expected the columns \['imgpath', 'caption'\]"):
        read_sample(bad)
    bad.write_text("imgpath,caption\na,b\na,c\n")
    with pytest.raises(ValueError, match="line 3: imgpath 'a' repeats line 2"):
        read_sample(bad)

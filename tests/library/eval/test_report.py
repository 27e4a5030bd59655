"""``report``: tables from hand-written results rows, latest-row-wins, published numbers, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lightning_sarclip.commands import report as report_command
from lightning_sarclip.eval import report as rp
from lightning_sarclip.eval.results import append_results

RECALLS = {"i2t_R@1": 0.1234, "i2t_R@5": 0.5, "i2t_R@10": 0.75, "t2i_R@1": 0.1, "t2i_R@5": 0.4, "t2i_R@10": 0.6}


def _rows(model: str, dataset: str, task: str, metrics: dict[str, float], digest: str = "aaaa1111",
          time: str = "2026-01-01T00:00:00+00:00", split: str = "test") -> list[dict]:
    return [{"model": model, "checkpoint": f"{model}.pt", "checkpoint_hash": digest, "dataset": dataset,
             "split": split, "task": task, "metric": m, "value": v, "time": time} for m, v in metrics.items()]


def _retrieval(model: str, dataset: str, **kwargs) -> list[dict]:
    metrics = dict(RECALLS, mean_recall=sum(RECALLS.values()) / 6)
    return _rows(model, dataset, "retrieval", metrics, **kwargs)


def test_latest_row_wins_by_time_then_by_order() -> None:
    old = _rows("m", "mstar", "zeroshot", {"top1": 0.1}, time="2026-01-02T00:00:00+00:00")
    new = _rows("m", "mstar", "zeroshot", {"top1": 0.2}, time="2026-01-03T00:00:00+00:00")
    same_time = _rows("m", "mstar", "zeroshot", {"top1": 0.3}, time="2026-01-03T00:00:00+00:00")
    other_hash = _rows("m", "mstar", "zeroshot", {"top1": 0.9}, digest="bbbb2222")
    assert [r["value"] for r in rp.latest_rows(new + old)] == [0.2]
    assert [r["value"] for r in rp.latest_rows(old + new + same_time)] == [0.3]
    assert sorted(r["value"] for r in rp.latest_rows(old + other_hash)) == [0.1, 0.9]


def test_retrieval_table_in_percent_with_published_rows() -> None:
    rows = _retrieval("ours-L14", "rsitmd") + _retrieval("ours-L14", "sarvlm1m_test")
    published, aliases = rp.load_published()
    tables = {t.title: t for t in rp.retrieval_tables(rows, published, aliases)}
    rsitmd = tables["Retrieval: rsitmd"]
    assert rsitmd.header == ["Model", "Result", "I2T R@1", "I2T R@5", "I2T R@10", "T2I R@1", "T2I R@5", "T2I R@10",
                             "Mean recall", "Source"]
    text = rsitmd.markdown()
    assert "| ours-L14 | ours | 12.34 | 50.00 | 75.00 | 10.00 | 40.00 | 60.00 | 41.22 |  |" in text
    assert "| RemoteCLIP ViT-L-14 | published | 28.76 | 52.43 | 63.94 | 23.76 | 59.51 | 74.73 | 50.52 |" in text
    assert "| GeoRSCLIP ViT-B-32 | published | – | – | – | – | – | – | 35.33 |" in text
    sarvlm = tables["Retrieval: sarvlm1m_test"].markdown()
    assert "| SARVLM SARCLIP ViT-L-14 (paper) | published | – | – | – | – | – | – | 30.… (truncated) |" in sarvlm
    assert "RemoteCLIP" not in sarvlm  # published optical numbers only next to their own benchmark


def test_zeroshot_table_columns_per_dataset_and_hash_disambiguation() -> None:
    rows = (_rows("ours", "mstar_soc", "zeroshot", {"top1": 0.5, "top5": float("nan")})
            + _rows("ours", "aid", "zeroshot", {"top1": 0.8})
            + _rows("ours", "aid", "zeroshot", {"top1": 0.7}, digest="cccc3333")
            + _rows("clip", "mstar_soc", "zeroshot", {"top1": 0.125}, digest=None))
    published, aliases = rp.load_published()
    table = rp.zeroshot_table(rows, published, aliases)
    assert table.header == ["Model", "Result", "mstar_soc", "aid", "Source"]
    cells = {row[0]: row[1:-1] for row in table.rows}
    assert cells["ours [aaaa1111]"] == ["ours", 50.0, 80.0]
    assert cells["ours [cccc3333]"] == ["ours", None, 70.0]
    assert cells["clip"] == ["ours", 12.5, None]
    assert cells["GeoRSCLIP ViT-B-32"] == ["published", None, 74.42]
    assert cells["RemoteCLIP ViT-B-32"] == ["published", None, 77.96]
    assert cells["SARVLM SARCLIP ViT-L-14 (paper)"] == ["published", None, None]  # reported, not readable
    assert "| clip | ours | 12.50 | – |" in table.markdown()
    assert rp.zeroshot_table(rows, published, aliases, metric="top5").rows[0][2] is None


def test_published_numbers_are_sourced() -> None:
    published, aliases = rp.load_published()
    assert published
    for entry in published:
        assert entry.dataset in aliases and entry.source.strip() and entry.task in ("retrieval", "zeroshot")
        for metric, value in entry.values.items():
            assert value is None or 0 < value <= 100, (entry.model, metric)
            if value is None:
                assert "not reachable" in entry.source or metric in entry.display


def test_report_cli_writes_markdown_and_csv(tmp_path: Path, capsys) -> None:
    from lightning_sarclip.commands import main

    results = tmp_path / "results.jsonl"
    append_results(results, _retrieval("ours", "ucm") + _rows("ours", "sample_real", "zeroshot", {"top1": 0.25}))
    append_results(results, _rows("ours", "sample_real", "zeroshot", {"top1": 0.5},
                                  time="2026-02-01T00:00:00+00:00"))  # re-run: replaces the 0.25
    append_results(results, _rows("ours", "sample_real", "kshot", {"top1": 0.9}))
    out = tmp_path / "reports"
    main(["report", "--results", str(results), "--out", str(out)])
    assert {p.name for p in out.iterdir()} == {"report.md", "retrieval.md", "retrieval.csv", "zeroshot.md",
                                               "zeroshot.csv", "k_shot_linear_probe.md", "k_shot_linear_probe.csv"}
    with open(out / "zeroshot.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert table == [["Model", "Result", "sample_real", "Source"], ["ours", "ours", "50.00", ""]]
    with open(out / "retrieval.csv", newline="") as handle:
        retrieval = list(csv.DictReader(handle))
    ours = next(r for r in retrieval if r["Result"] == "ours")
    assert ours["Table"] == "Retrieval: ucm" and ours["I2T R@1"] == "12.34" and ours["Mean recall"] == "41.22"
    remote = next(r for r in retrieval if r["Model"] == "RemoteCLIP ViT-L-14")
    assert remote["Mean recall"] == "54.68" and "table-2" in remote["Source"]
    report = (out / "report.md").read_text()
    assert "k-shot linear probe" in report and "| ours | ours | 50.00 |" in report
    assert "Evaluation report" in capsys.readouterr().out


def test_report_needs_rows(tmp_path: Path) -> None:
    empty = tmp_path / "results.jsonl"
    empty.write_text("")
    with pytest.raises(SystemExit, match="no rows"):
        report_command.main(["--results", str(empty), "--out", str(tmp_path / "r")])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_rows("m", "d", "zeroshot", {"top1": 0.1})[0]) + "\n{oops\n")
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        report_command.main(["--results", str(bad), "--out", str(tmp_path / "r")])


def test_probe_and_wise_ft_rows_get_their_own_tables(tmp_path):
    from lightning_sarclip.eval.report import write_report
    from lightning_sarclip.eval.results import make_row

    rows = [make_row(model="m", dataset="mstar", split="test", task="kshot", metric=f"{k}shot_top1", value=v)
            for k, v in ((16, 0.9), (2, 0.5), (1, 0.3))]
    rows += [make_row(model="m", dataset="mstar", split="test", task="wiseft", metric="top1@alpha=0.5", value=0.61),
             make_row(model="m", dataset="mstar", split="test", task="linear_probe", metric="top1", value=0.8)]
    written = write_report(rows, tmp_path)
    kshot = (tmp_path / "k_shot_linear_probe.md").read_text()
    assert kshot.index("1shot_top1") < kshot.index("2shot_top1") < kshot.index("16shot_top1")
    assert "30.00" in kshot and "90.00" in kshot
    assert "61.00" in (tmp_path / "wise_ft.md").read_text()
    assert "80.00" in (tmp_path / "linear_probe.csv").read_text()
    assert {"k_shot_linear_probe", "wise_ft", "linear_probe", "report"} <= set(written)

"""``python -m lightning_sarclip report --results results.jsonl --out reports/``: paper-shaped tables from rows.

Why: numbers in a paper table should be derived, never typed. This reads ``results.jsonl`` rows
(:mod:`lightning_sarclip.eval.results`) and writes Markdown and CSV tables shaped like the paper's:

* ``retrieval.md`` / ``retrieval.csv``: one table per dataset; rows = models, columns = I2T R@1/5/10,
  T2I R@1/5/10 and mean recall, in percent with 2 decimals;
* ``zeroshot.md`` / ``zeroshot.csv``: rows = models, columns = top-1 (or ``--zeroshot-metric``) per dataset;
* ``report.md``: both.

Published numbers (``published.json`` next to this module: RemoteCLIP, GeoRSCLIP, SkyCLIP on their optical
benchmarks, and what is known of SARVLM's) are listed under ours for the datasets we evaluated, marked
"published" with their source. A number a source reports but that could not be read is shown as "–", never
guessed. Rows that scored a retrieval sample (``protocol`` ``sample5000``, ``file:<name>``), and zero-shot rows
prompted with the class names as spelled (``folder_names``, the paper's protocol), are tables and columns of their
own, labelled ``dataset (split, protocol)``, never merged with the whole split's or our prompts'. When the same (model,
checkpoint_hash, dataset, split, protocol, task, metric) appears more than once, the latest
row (by ``time``, then by position in the files) wins, so re-running an evaluation updates the report.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_sarclip.eval.results import WHOLE_SPLIT
from lightning_sarclip.utils.atomic import atomic_open, atomic_write_text

PUBLISHED_PATH = Path(__file__).with_name("published.json")
DASH = "–"
ROW_KEY = ("model", "checkpoint_hash", "dataset", "split", "task", "metric")


# ---------------------------------------------------------------------------------------------- rows
def protocol_of(row: dict[str, Any]) -> str:
    """The row's retrieval protocol; rows written before rows named one scored the whole split."""
    return row.get("protocol") or WHOLE_SPLIT


def evaluated_split(row: dict[str, Any]) -> str:
    """What a row scored: its split, plus the protocol when that is a sample (``val, sample5000``), so a sample's
    numbers never share a column or table with the whole split's."""
    protocol = protocol_of(row)
    return row["split"] if protocol == WHOLE_SPLIT else f"{row['split']}, {protocol}"


def latest_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, checkpoint_hash, dataset, split, protocol, task, metric): the latest by time, then by
    order."""
    ordered = sorted(enumerate(rows), key=lambda pair: (str(pair[1].get("time") or ""), pair[0]))
    latest: dict[tuple, dict[str, Any]] = {}
    for _, row in ordered:
        latest[(*(row.get(k) for k in ROW_KEY), protocol_of(row))] = row
    return list(latest.values())


def model_labels(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str | None], str]:
    """``(model, checkpoint_hash) -> label``: the model name, plus the hash where one name has several."""
    hashes: dict[str, list[str | None]] = {}
    for row in rows:
        seen = hashes.setdefault(row["model"], [])
        if row.get("checkpoint_hash") not in seen:
            seen.append(row.get("checkpoint_hash"))
    labels = {}
    for model, found in hashes.items():
        for digest in found:
            labels[(model, digest)] = model if len(found) == 1 else f"{model} [{(digest or 'no hash')[:8]}]"
    return labels


def dataset_labels(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """``(dataset, evaluated split) -> label``: the dataset name, plus the split where one dataset has several or
    the rows scored a sample (:func:`evaluated_split`)."""
    splits: dict[str, list[str]] = {}
    sampled: set[tuple[str, str]] = set()
    for row in rows:
        seen = splits.setdefault(row["dataset"], [])
        part = evaluated_split(row)
        if part not in seen:
            seen.append(part)
        if protocol_of(row) != WHOLE_SPLIT:
            sampled.add((row["dataset"], part))
    return {(d, s): d if len(found) == 1 and (d, s) not in sampled else f"{d} ({s})"
            for d, found in splits.items() for s in found}


# ---------------------------------------------------------------------------------------------- published
@dataclass
class Published:
    """One published result: values in percent (``None`` = reported but unreadable), with its source."""

    model: str
    dataset: str
    task: str
    values: dict[str, float | None]
    source: str
    display: dict[str, str] = field(default_factory=dict)


def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", str(name).casefold())


def load_published(path: str | os.PathLike | None = None) -> tuple[list[Published], dict[str, list[str]]]:
    """Published entries and the dataset aliases (our dataset names that mean the same benchmark)."""
    data = json.loads(Path(path or PUBLISHED_PATH).read_text(encoding="utf-8"))
    entries = [Published(e["model"], e["dataset"], e["task"], dict(e["values"]), e["source"],
                         dict(e.get("display") or {})) for e in data["entries"]]
    return entries, {key: list(names) for key, names in data.get("datasets", {}).items()}


def published_for(dataset: str, task: str, entries: Sequence[Published], aliases: dict[str, list[str]]
                  ) -> list[Published]:
    """Published entries for one of our dataset names (matched through the aliases, case/punctuation free)."""
    wanted = _norm(dataset)
    keys = {key for key, names in aliases.items() if wanted in {_norm(n) for n in [key, *names]}}
    return [e for e in entries if e.task == task and e.dataset in keys]


# ---------------------------------------------------------------------------------------------- tables
@dataclass
class Table:
    """A rendered-agnostic table: header, rows of cells (floats in percent, strings, or None)."""

    title: str
    header: list[str]
    rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)

    def numeric(self, column: int) -> bool:
        """Columns holding numbers (right-aligned): all but the first two (model, result) and the last (source)."""
        return 2 <= column < len(self.header) - 1

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
                 "|" + "|".join("---:" if self.numeric(i) else "---" for i in range(len(self.header))) + "|"]
        for row in self.rows:
            lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
        if self.notes:
            lines.append("")
            lines.extend(f"{note}  " for note in self.notes)
        return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _percent(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None  # make_row writes NaN as null; hand-made rows may still hold NaN
    return 100.0 * float(value)


def _recall_columns(metrics: Iterable[str]) -> list[str]:
    ks = sorted({int(m.split("@")[1]) for m in metrics if re.fullmatch(r"(i2t|t2i)_R@\d+", m)}) or [1, 5, 10]
    return [f"i2t_R@{k}" for k in ks] + [f"t2i_R@{k}" for k in ks] + ["mean_recall"]


def _header_name(metric: str) -> str:
    if metric == "mean_recall":
        return "Mean recall"
    direction, k = metric.split("_R@")
    return f"{direction.upper()} R@{k}"


def retrieval_tables(rows: Sequence[dict[str, Any]], published: Sequence[Published] = (),
                     aliases: dict[str, list[str]] | None = None) -> list[Table]:
    """One table per retrieval dataset: our models, then the published ones for that benchmark."""
    rows = [r for r in rows if r["task"] == "retrieval"]
    models, datasets = model_labels(rows), dataset_labels(rows)
    tables = []
    for (dataset, split), title in datasets.items():
        subset = [r for r in rows if (r["dataset"], evaluated_split(r)) == (dataset, split)]
        columns = _recall_columns(r["metric"] for r in subset)
        values: dict[str, dict[str, Any]] = {}
        for row in subset:
            values.setdefault(models[(row["model"], row.get("checkpoint_hash"))], {})[row["metric"]] = row["value"]
        body = [[label, "ours", *[_percent(metrics.get(c)) for c in columns], ""]
                for label, metrics in values.items()]
        notes = []
        for entry in published_for(dataset, "retrieval", published, aliases or {}):
            body.append([entry.model, "published",
                         *[entry.display.get(c, entry.values.get(c)) for c in columns], entry.source])
        if any(row[1] == "published" for row in body):
            notes.append(f"Published numbers as printed by their sources; {DASH} = not reported or not readable.")
        tables.append(Table(f"Retrieval: {title}", ["Model", "Result", *map(_header_name, columns), "Source"],
                            body, notes))
    return tables


def zeroshot_table(rows: Sequence[dict[str, Any]], published: Sequence[Published] = (),
                   aliases: dict[str, list[str]] | None = None, metric: str = "top1") -> Table | None:
    """Rows = models (ours, then published ones for our datasets), columns = ``metric`` per dataset."""
    rows = [r for r in rows if r["task"] == "zeroshot" and r["metric"] == metric]
    if not rows:
        return None
    models, datasets = model_labels(rows), dataset_labels(rows)
    columns = list(datasets)
    values: dict[str, dict[tuple[str, str], Any]] = {}
    for row in rows:
        values.setdefault(models[(row["model"], row.get("checkpoint_hash"))], {})[(row["dataset"], evaluated_split(row))] = \
            row["value"]
    body = [[label, "ours", *[_percent(v.get(c)) for c in columns], ""] for label, v in values.items()]
    extra: dict[str, dict[tuple[str, str], Any]] = {}
    sources: dict[str, list[str]] = {}
    for column in columns:
        for entry in published_for(column[0], "zeroshot", published, aliases or {}):
            if metric in entry.values:
                extra.setdefault(entry.model, {})[column] = entry.display.get(metric, entry.values[metric])
                if entry.source not in sources.setdefault(entry.model, []):
                    sources[entry.model].append(entry.source)
    for model, cells in extra.items():
        body.append([model, "published", *[cells.get(c) for c in columns], "; ".join(sources[model])])
    notes = [f"Published numbers as printed by their sources; {DASH} = not reported or not readable."] if extra else []
    return Table(f"Zero-shot classification ({metric}, %)",
                 ["Model", "Result", *[datasets[c] for c in columns], "Source"], body, notes)


TASK_TITLES = {"linear_probe": "Linear probe", "knn": "kNN (k=20)", "kshot": "k-shot linear probe",
               "wiseft": "WiSE-FT (zero-shot -> fine-tuned weights)"}


def task_tables(rows: Sequence[dict[str, Any]], tasks: Sequence[str]) -> list[Table]:
    """One table per task: rows = (model, dataset), columns = that task's metrics (probes, WiSE-FT), in %."""
    tables = []
    for task in tasks:
        task_rows = [r for r in rows if r["task"] == task]
        if not task_rows:
            continue
        models, datasets = model_labels(task_rows), dataset_labels(task_rows)
        metrics = sorted({r["metric"] for r in task_rows}, key=_metric_order)
        values: dict[tuple[str, str], dict[str, Any]] = {}
        for row in task_rows:
            key = (models[(row["model"], row.get("checkpoint_hash"))], datasets[(row["dataset"], evaluated_split(row))])
            values.setdefault(key, {})[row["metric"]] = row["value"]
        body = [[model, dataset, *[_percent(cells.get(m)) for m in metrics]] for (model, dataset), cells in values.items()]
        tables.append(Table(f"{TASK_TITLES.get(task, task)} (%)", ["Model", "Dataset", *metrics], body))
    return tables


def _metric_order(metric: str) -> tuple:
    """Numbers inside metric names sort numerically: 1shot < 2shot < 16shot, alpha=0.25 < alpha=1."""
    return tuple(float(part) if re.fullmatch(r"\d+(\.\d+)?", part) else part
                 for part in re.split(r"(\d+(?:\.\d+)?)", metric) if part)


# ---------------------------------------------------------------------------------------------- output
def _write_csv(path: Path, tables: Sequence[Table], with_title: bool) -> None:
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        for i, table in enumerate(tables):
            if i == 0:
                writer.writerow((["Table"] if with_title else []) + table.header)
            for row in table.rows:
                cells = ["" if v is None or (isinstance(v, float) and math.isnan(v))
                         else (f"{v:.2f}" if isinstance(v, float) else v) for v in row]
                writer.writerow(([table.title] if with_title else []) + cells)


def write_report(rows: Sequence[dict[str, Any]], out: str | os.PathLike, zeroshot_metric: str = "top1",
                 published_path: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write ``retrieval.{md,csv}``, ``zeroshot.{md,csv}`` (when there are such rows) and ``report.md``, each
    file atomically (:mod:`lightning_sarclip.utils.atomic`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = latest_rows(rows)
    published, aliases = load_published(published_path)
    written: dict[str, Path] = {}
    sections = []
    retrieval = retrieval_tables(rows, published, aliases)
    if retrieval:
        text = "## Image-text retrieval (%)\n\n" + "\n".join(t.markdown() for t in retrieval)
        atomic_write_text(out / "retrieval.md", text)
        # Tables may differ in K; the CSV takes the first table's columns, so write one CSV per column set.
        if len({tuple(t.header) for t in retrieval}) == 1:
            _write_csv(out / "retrieval.csv", retrieval, with_title=True)
        else:
            for table in retrieval:
                _write_csv(out / f"retrieval_{re.sub(r'[^0-9A-Za-z_-]+', '_', table.title)}.csv", [table], True)
        written["retrieval"] = out / "retrieval.md"
        sections.append(text)
    zeroshot = zeroshot_table(rows, published, aliases, zeroshot_metric)
    if zeroshot is not None:
        text = "## Zero-shot classification\n\n" + zeroshot.markdown()
        atomic_write_text(out / "zeroshot.md", text)
        _write_csv(out / "zeroshot.csv", [zeroshot], with_title=False)
        written["zeroshot"] = out / "zeroshot.md"
        sections.append(text)
    others = sorted({r["task"] for r in rows} - {"retrieval", "zeroshot"})
    for table in task_tables(rows, others):
        name = re.sub(r"[^0-9A-Za-z]+", "_", table.title.split(" (")[0].lower()).strip("_")
        text = table.markdown()
        atomic_write_text(out / f"{name}.md", text)
        _write_csv(out / f"{name}.csv", [table], with_title=False)
        written[name] = out / f"{name}.md"
        sections.append(text)
    atomic_write_text(out / "report.md", "# Evaluation report\n\n" + "\n".join(sections))
    written["report"] = out / "report.md"
    return written

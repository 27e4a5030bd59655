"""``results.jsonl``: one JSON object per (model, dataset, split, task, metric), appended; rows are never changed.

Each append is atomic (:func:`lightning_sarclip.utils.atomic.atomic_append`): readers see all of an evaluation's
rows or none, never a torn last line, and concurrent evaluations serialise on a lock file.

Tables and figures are derived from these rows (``python -m lightning_sarclip report``), never typed by hand, so
each row carries what is needed to reproduce it: the model and checkpoint (path and hash), the dataset and
split, the task, the templates and class names used, the full evaluation config, and a timestamp.

Row keys: ``model``, ``checkpoint``, ``checkpoint_hash``, ``dataset``, ``split``, ``protocol`` (``all`` = the
whole split; ``sample5000`` = 5,000 unique images with one caption each, drawn; ``file:<name>`` = the sample in
that file; see :mod:`lightning_sarclip.eval.retrieval_sample`; for zero-shot rows ``all`` = our prompt names,
``folder_names`` = the class names as the dataset spells them, the paper's prompts), ``task`` (``zeroshot``,
``retrieval``, ``linear_probe``, ``kshot``, ``knn``, ``wiseft``), ``metric`` (``top1``, ``mean_per_class``,
``i2t_R@1``, ``mean_recall`` ...), ``value`` (a fraction in [0, 1] for accuracies and recalls), ``templates``
(list of strings or null), ``classnames`` (list or null), ``config`` (dict), ``extra`` (dict: k-shot k, alpha,
sample counts ...), ``time`` (ISO 8601, UTC).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from lightning_sarclip.utils.atomic import atomic_append

ROW_KEYS = ("model", "checkpoint", "checkpoint_hash", "dataset", "split", "protocol", "task", "metric", "value",
            "templates", "classnames", "config", "extra", "time")
#: ``protocol`` of a row that does not name one (and of rows written before rows had it): the whole split.
WHOLE_SPLIT = "all"
TASKS = ("zeroshot", "retrieval", "linear_probe", "kshot", "knn", "wiseft")


def make_row(**fields: Any) -> dict[str, Any]:
    """A complete row: missing optional keys become null/empty; ``task`` and ``value`` are checked."""
    row = {key: fields.get(key) for key in ROW_KEYS}
    unknown = set(fields) - set(ROW_KEYS)
    if unknown:
        raise ValueError(f"results row: unknown keys {sorted(unknown)}; expected {ROW_KEYS}")
    for key in ("model", "dataset", "split", "task", "metric"):
        if not row[key]:
            raise ValueError(f"results row: {key!r} is required")
    if row["task"] not in TASKS:
        raise ValueError(f"results row: task must be one of {TASKS}, got {row['task']!r}")
    value = row["value"]
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"results row: value must be a number, got {value!r}")
    row["value"] = None if isinstance(value, float) and math.isnan(value) else float(value)
    row["protocol"] = row["protocol"] or WHOLE_SPLIT
    row["config"] = dict(row["config"] or {})
    row["extra"] = dict(row["extra"] or {})
    row["time"] = row["time"] or datetime.now(timezone.utc).isoformat(timespec="seconds")
    return row


def append_results(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> int:
    """Append rows (one JSON line each) as one atomic write, so concurrent evaluations never interleave and a
    killed one leaves no partial row."""
    lines = [json.dumps(make_row(**row), sort_keys=True, default=str) + "\n" for row in rows]
    atomic_append(path, "".join(lines).encode("utf-8"))
    return len(lines)


def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows; a malformed line raises an error naming the file and line number."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON results row ({err})") from err
    return rows


# ------------------------------------------------------------------------------------------ console table
#: Metric names printed as plain numbers, not as percentages.
_COUNT_SUFFIXES = ("_tied_queries", "images", "captions", "num_scored")


def _cell(metric: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, str):
        return value
    if metric.endswith("loss"):
        return f"{value:.4f}"
    if metric.endswith(_COUNT_SUFFIXES) or isinstance(value, bool):
        return f"{int(value)}"
    return f"{100 * float(value):.2f}"


def metrics_table(columns: Mapping[str, Mapping[str, Any]], title: str | None = None) -> str:
    """The one console table of metrics: a row per metric, a column per dataset (or stage).

    Recalls and accuracies (fractions) are shown in percent, losses with four decimals, counts as integers,
    strings as they are, missing or NaN values as ``-``. Used by ``evaluate`` and the fit-time callbacks.
    """
    if not columns or not any(columns.values()):
        return f"{title or 'metrics'}: no metrics"
    metrics = list(dict.fromkeys(key for values in columns.values() for key in values))
    names = list(columns)
    first = max(len("metric"), *(len(m) for m in metrics))
    widths = [max(8, len(name), *(len(_cell(m, columns[name].get(m))) for m in metrics)) for name in names]
    lines = [title] if title else []
    lines.append(f"{'metric':<{first}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, widths, strict=True)))
    lines.append(f"{'-' * first}  " + "  ".join("-" * w for w in widths))
    for metric in metrics:
        cells = [f"{_cell(metric, columns[n].get(metric)):>{w}}" for n, w in zip(names, widths, strict=True)]
        lines.append(f"{metric:<{first}}  " + "  ".join(cells))
    return "\n".join(lines)

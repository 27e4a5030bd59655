"""``python -m lightning_sarclip report --results runs/eval/<suite>/results.jsonl --out reports/``.

Markdown and CSV tables in the paper's shape, derived from ``results.jsonl`` rows
(:func:`~lightning_sarclip.eval.report.write_report`); nothing in them is typed by hand.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> dict[str, Path]:
    parser = argparse.ArgumentParser(prog="python -m lightning_sarclip report",
                                     description="Markdown and CSV tables from results.jsonl rows.")
    parser.add_argument("--results", action="append", required=True,
                        help="results.jsonl (may be given several times)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--zeroshot-metric", default="top1", help="top1, top3, top5 or mean_per_class")
    parser.add_argument("--published", default=None, help="published-numbers JSON (default: the shipped one)")
    args = parser.parse_args(argv)
    # Imported after parsing: ``report --help`` must not wait for torch (lightning_sarclip.eval imports it).
    from lightning_sarclip.eval.report import write_report
    from lightning_sarclip.eval.results import read_results

    rows: list[dict[str, Any]] = []
    for path in args.results:
        rows.extend(read_results(path))
    if not rows:
        raise SystemExit(f"report: no rows in {args.results}")
    written = write_report(rows, args.out, args.zeroshot_metric, args.published)
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    return written

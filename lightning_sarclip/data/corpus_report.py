"""What ``build-corpus`` reports about a finished corpus: per-source counts, the same counts beside a published
table, and leakage into held-out variants.

* :func:`corpus_stats` / :func:`stats_markdown`: per source (kept pairs only) train/val images and captions and
  test pairs, the columns of the paper's corpus table.
* :data:`REFERENCE_COUNTS` / :func:`comparison_markdown`: our counts beside a published table (the config's
  ``reference``), per source and column, with the difference.
* :func:`leakage_counts`: for a held-out variant, per held-out source, how many of the variant's train images
  are near-duplicates of that source's images (the corpus's rule, :mod:`~lightning_sarclip.data.corpus_dedup`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lightning_sarclip.data.corpus_dedup import PixelLoader, near_duplicate_groups

__all__ = [
    "COLUMNS",
    "REFERENCE_COUNTS",
    "comparison_markdown",
    "corpus_stats",
    "leakage_counts",
    "leakage_markdown",
    "report_markdown",
    "stats_markdown",
]

#: The columns of the paper's corpus table, in its order.
COLUMNS = ("train_images", "train_captions", "val_images", "val_captions", "test_pairs")
_HEADINGS = ("# Train Imgs", "# Train Caps", "# Val Imgs", "# Val Caps", "# Test Pairs")

#: Published corpus tables, keyed by our source names. ``sarvlm1m``: SARVLM-1M (= SARCLIP-1M, arXiv 2510.22665),
#: the dataset table of KlayMa527/SARVLM ``fig/dataset_com.png`` as transcribed in the project's research notes
#: (reference/paper.md section 1.2); ``None`` where the table has a dash. SARSim has no reader here.
REFERENCE_COUNTS: dict[str, dict[str, dict[str, int | None]]] = {
    "sarvlm1m": {
        "mstar": dict(zip(COLUMNS, (3_046, 15_230, 9_855, 49_275, 180), strict=True)),
        "sarsim": dict(zip(COLUMNS, (21_168, 105_840, None, None, None), strict=True)),
        "opensarship": dict(zip(COLUMNS, (26_679, 133_395, None, None, None), strict=True)),
        "sample": dict(zip(COLUMNS, (5_380, 26_900, None, None, None), strict=True)),
        "atrnet_star": dict(zip(COLUMNS, (68_091, 340_455, 29_284, 146_420, 6_667), strict=True)),
        "sardet100k": dict(zip(COLUMNS, (94_493, 472_465, 10_492, 52_460, 2_783), strict=True)),
        "fair_csar": dict(zip(COLUMNS, (51_948, 259_740, 11_790, 58_950, 7_096), strict=True)),
        "sarlang": dict(zip(COLUMNS, (9_191, 31_968, 3_939, 13_682, 3_902), strict=True)),
    },
}


def corpus_stats(manifest: pa.Table) -> dict[str, dict[str, int]]:
    """Per source (kept pairs only): train/val images and captions, test pairs (the paper's columns)."""
    kept = manifest.filter(pc.equal(manifest.column("status"), "kept"))
    grouped = kept.group_by(["source", "split"]).aggregate([("key", "count"), ("key", "count_distinct")])
    table: dict[str, dict[str, int]] = defaultdict(dict)
    for row in grouped.to_pylist():
        if row["split"] == "test":
            table[row["source"]]["test_pairs"] = row["key_count"]
        else:
            table[row["source"]][f"{row['split']}_captions"] = row["key_count"]
            table[row["source"]][f"{row['split']}_images"] = row["key_count_distinct"]
    return dict(table)


def stats_markdown(stats: dict[str, dict[str, int]]) -> str:
    lines = ["| Dataset | " + " | ".join(_HEADINGS) + " |", "|---|---:|---:|---:|---:|---:|"]
    totals: Counter[str] = Counter()
    for source in sorted(stats):
        values = [stats[source].get(c, 0) for c in COLUMNS]
        totals.update(dict(zip(COLUMNS, values, strict=True)))
        lines.append(f"| {source} | " + " | ".join(f"{v:,}" for v in values) + " |")
    lines.append("| **total** | " + " | ".join(f"**{totals.get(c, 0):,}**" for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def comparison_markdown(stats: dict[str, dict[str, int]], reference: str) -> str:
    """One row per source and column: our count, the published one and ours minus theirs (``-`` where the table
    has none). Sources of either side are listed; a source the table lacks compares against nothing."""
    published = REFERENCE_COUNTS[reference]
    lines = [f"| Dataset | Column | Ours | {reference} | Difference |", "|---|---|---:|---:|---:|"]
    for source in sorted(set(stats) | set(published)):
        for column in COLUMNS:
            ours = stats.get(source, {}).get(column, 0)
            theirs = published.get(source, {}).get(column)
            if not ours and theirs is None:
                continue
            paper = "-" if theirs is None else f"{theirs:,}"
            diff = "-" if theirs is None else f"{ours - theirs:+,}"
            lines.append(f"| {source} | {column} | {ours:,} | {paper} | {diff} |")
    return "\n".join(lines) + "\n"


def leakage_counts(images: pa.Table, in_variant: np.ndarray, held: Sequence[str], max_distance: int,
                   pixels: PixelLoader | None = None, min_correlation: float = 0.0) -> dict[str, int]:
    """Per held-out source, how many train images of a variant are near-duplicates of that source's images.

    Args:
        images: one row per stored image, with ``source``, ``split``, ``phash`` and ``image_hash``.
        in_variant: per image, whether the variant keeps it.
        held: the variant's held-out sources.
        max_distance, pixels, min_correlation: the near-duplicate rule
            (:func:`~lightning_sarclip.data.corpus_dedup.near_duplicate_groups`).

    Computed afresh from the hashes (not from the build's groups), so it checks the variant rather than restating
    how it was made; it is 0 for every variant ``build-corpus`` writes.
    """
    sources = np.array(images.column("source").to_pylist(), dtype=object)
    train = np.array(images.column("split").to_pylist(), dtype=object) == "train"
    counts = {}
    for source in held:
        held_rows = np.flatnonzero(sources == source)
        train_rows = np.flatnonzero(in_variant & train)
        rows = np.r_[held_rows, train_rows]
        phashes = np.array(images.column("phash").to_pylist(), dtype=np.uint64)[rows]
        image_hashes = [images.column("image_hash")[int(i)].as_py() for i in rows]
        load = (lambda i, rows=rows: pixels(int(rows[i]))) if pixels is not None else None
        groups = near_duplicate_groups(phashes, image_hashes, max_distance, load, min_correlation)
        held_groups = set(groups[:len(held_rows)].tolist())
        counts[source] = int(sum(g in held_groups for g in groups[len(held_rows):].tolist()))
    return counts


def leakage_markdown(leakage: dict[str, dict[str, int]]) -> str:
    """Per variant and held-out source: train images that are near-duplicates of the held-out images."""
    lines = ["| Variant | Held-out source | Train near-duplicates |", "|---|---|---:|"]
    lines += [f"| {name} | {source} | {count:,} |" for name, counts in sorted(leakage.items())
              for source, count in counts.items()]
    return "\n".join(lines) + "\n"


def report_markdown(stats: dict[str, dict[str, int]], reference: str | None = None,
                    leakage: dict[str, dict[str, int]] | None = None) -> str:
    """``stats.md``, as ``build-corpus`` prints it: the counts, then (when asked) the published table beside them
    and the variants' leakage."""
    parts = [stats_markdown(stats)]
    if reference is not None:
        parts.append(f"\nOur counts beside {reference}'s (kept pairs; difference = ours - {reference}):\n\n"
                     + comparison_markdown(stats, reference))
    if leakage:
        parts.append("\nHeld-out variants: train images near-duplicating a held-out source's images:\n\n"
                     + leakage_markdown(leakage))
    return "".join(parts)

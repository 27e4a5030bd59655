"""The paper's retrieval protocol: N unique images of a split, one caption each, as a re-usable CSV.

SARVLM scores retrieval on ``val_uni_image_and_caption_sample_5000.csv``: 5,000 unique images of the val split with
one caption each, the i-th image matching the i-th caption. Scoring every image against all of its captions (our
``protocol: all``) is a different, easier-to-hit benchmark (an image is a hit when any of its 5 captions ranks), so
the numbers are comparable with the paper's only on such a sample. This module draws the sample (seeded), writes it
and reads it back; the recalls themselves come from the one retrieval implementation
(:func:`~lightning_sarclip.eval.retrieval.recall_at_k`), which sees a sample as images with one caption each.

The file is a CSV with the released file's columns ``imgpath`` and ``caption``, one row per image. ``imgpath`` is
the image's id in the evaluated dataset: the record's ``source_id`` for a source (for ``image_caption_table`` that is
the table's own ``imgpath``, relative to the table's folder, or the cell as the table spells it, so the paper's
released file scores as is against the val table it was drawn from), the record key ``<source>:<source_id>`` for a built corpus (ids are unique per source
only).
"""

from __future__ import annotations

import csv
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path

from lightning_sarclip.utils.atomic import atomic_open

__all__ = ["DEFAULT_SAMPLE_SIZE", "SAMPLE_COLUMNS", "draw_sample", "read_sample", "select_sample", "write_sample"]

log = logging.getLogger("lightning_sarclip")

#: Columns of a sample file: those of SARVLM's released retrieval CSVs.
SAMPLE_COLUMNS = ("imgpath", "caption")
#: The paper's sample size (``val_uni_image_and_caption_sample_5000.csv``).
DEFAULT_SAMPLE_SIZE = 5000


def _first_positions(ids: Sequence[str]) -> dict[str, int]:
    """Each distinct id with the position of its first image (a sample holds an image once)."""
    first: dict[str, int] = {}
    for position, image_id in enumerate(ids):
        first.setdefault(image_id, position)
    return first


def draw_sample(ids: Sequence[str], captions: Sequence[Sequence[str]], size: int, seed: int,
                where: str) -> tuple[list[int], list[str]]:
    """``size`` unique images (positions into ``ids``, in listing order) and one caption of each, seeded by ``seed``.

    ``captions[i]`` are image ``i``'s captions. A split with fewer unique images than ``size`` gives all of them,
    with a warning naming ``where``.
    """
    if size < 1:
        raise ValueError(f"{where}: sample_size must be >= 1, got {size}")
    unique = sorted(_first_positions(ids).values())
    if len(unique) < size:
        log.warning("%s: a retrieval sample of %d images was asked, but the split holds %d unique images; all of "
                    "them are used (one caption each)", where, size, len(unique))
    rng = random.Random(seed)
    positions = sorted(rng.sample(unique, min(size, len(unique))))
    chosen = []
    for position in positions:
        if not captions[position]:
            raise ValueError(f"{where}: image {ids[position]!r} has no caption to sample")
        chosen.append(rng.choice(list(captions[position])))
    return positions, chosen


def write_sample(path: str | os.PathLike, ids: Sequence[str], captions: Sequence[str]) -> Path:
    """Write a sample (``imgpath``, ``caption`` rows) atomically; returns the path."""
    path = Path(path)
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(SAMPLE_COLUMNS)
        writer.writerows(zip(ids, captions, strict=True))
    return path


def read_sample(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The ``(imgpath, caption)`` rows of a sample file, checked: both columns present, no empty cell, every image
    once (the protocol pairs the i-th image with the i-th caption only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"retrieval sample file {path} not found (evaluate writes one under "
                                "retrieval_samples/ next to results.jsonl)")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in SAMPLE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: expected the columns {list(SAMPLE_COLUMNS)} (a retrieval sample written by "
                             f"evaluate, or SARVLM's released CSV), got {reader.fieldnames}")
        rows: list[tuple[str, str]] = []
        seen: dict[str, int] = {}
        for line, row in enumerate(reader, start=2):
            image_id, caption = (str(row.get(c) or "").strip() for c in SAMPLE_COLUMNS)
            for column, value in zip(SAMPLE_COLUMNS, (image_id, caption), strict=True):
                if not value:
                    raise ValueError(f"{path}: line {line}: {column} is empty (expected a non-empty {column})")
            if image_id in seen:
                raise ValueError(f"{path}: line {line}: imgpath {image_id!r} repeats line {seen[image_id]} (expected "
                                 "every image once, with one caption)")
            seen[image_id] = line
            rows.append((image_id, caption))
    if not rows:
        raise ValueError(f"{path}: no rows (expected one imgpath,caption row per image)")
    return rows


def select_sample(ids: Sequence[str], rows: Sequence[tuple[str, str]], path: str | os.PathLike,
                  where: str, aliases: Sequence[str | None] = ()) -> list[int]:
    """Positions into ``ids`` of a sample's images, in the file's order; an image the dataset does not hold is an
    error naming the file, the line and a few of the dataset's ids.

    ``aliases[i]``: another name of image ``i`` that a sample may use (for ``image_caption_table``, the table's own
    ``imgpath`` cell: an absolute path inside the table's folder has a relative source id, while a sample drawn
    from the table, such as SARVLM's released one, repeats the cell as written)."""
    first = {**_first_positions([a or "" for a in aliases]), **_first_positions(ids)}
    first.pop("", None)
    positions = []
    for line, (image_id, _) in enumerate(rows, start=2):
        if image_id not in first:
            raise ValueError(f"{path}: line {line}: imgpath {image_id!r} is not an image of {where} (its ids look "
                             f"like {list(first)[:3]}: a source's source_id, a corpus's '<source>:<source_id>')")
        positions.append(first[image_id])
    return positions

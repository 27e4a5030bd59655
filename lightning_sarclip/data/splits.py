"""Seeded, stratified, leakage-safe train/val/test split of a source that ships none (records with split ``"all"``).

:func:`stratified_split` is a pure function of the records (their ids, labels and group keys), the fractions and the
seed; the order in which a reader lists the records does not matter:

* **Groups.** Records that share a group key (:func:`group_key`) always land in the same part: object chips stay with
  their image (``metadata["parent_id"]``), and ``group_by`` names a metadata key that must not be split (SAMPLE's
  measured/simulated ``pair_id``, an acquisition or target id), as the corpus builder's ``group_by`` does.
* **Strata.** A group's stratum is the most common primary label (``labels[0]``) of its records; unlabelled records
  form a stratum of their own (:data:`UNLABELLED` in counts).
* **Counts.** A stratum of ``n`` records gets ``floor(n * f)`` or ``ceil(n * f)`` records in each part, summing to
  ``n``, and the parts' totals are the largest-remainder apportionment of all records (so twenty classes of three
  images still give a val part when ``0.1`` of the images is asked for); which stratum receives a rounded-up record
  is a seeded choice. Every stratum keeps at least one record in train (a class with one image is train only).
* **Order.** Within a stratum, groups are placed largest first, then in the order of a seeded hash of their key, each
  into the part furthest below its count: with single-record groups the counts are met exactly, and adding or
  removing an image moves few others. Each part is returned sorted by ``source_id``.

``SourceDataModule`` (``split_fractions``, ``split_seed``, ``split_group_by``) splits on the fly with it and saves the
result as ``split.json`` in the run directory; ``evaluate`` scores a part of the same split with the same three
settings in a dataset entry (:func:`made_part`). The corpus builder splits ``"all"`` sources its own way
(:func:`~lightning_sarclip.data.corpus_resume.split_of`: a per-record hash while records stream, unstratified), which
keeps existing corpora stable.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from numbers import Real

from lightning_sarclip.data.records import SARRecord

__all__ = ["PARTS", "UNLABELLED", "check_fractions", "group_key", "made_part", "part_counts", "stratified_split"]

#: The parts a split makes, in order (fractions given as a sequence follow this order).
PARTS: tuple[str, ...] = ("train", "val", "test")
#: The stratum name of records without labels in :func:`part_counts`.
UNLABELLED = "(unlabelled)"
_EPS = 1e-9  # 10 * 0.7 is 6.999...: floors of exact products must not lose a record


def check_fractions(fractions: Sequence[float] | Mapping[str, float], name: str = "split_fractions") -> dict[str, float]:
    """``fractions`` as ``{"train": ..., "val": ..., "test": ...}``, checked.

    Accepts three numbers in :data:`PARTS` order or a mapping (missing parts are 0). Raises ``ValueError`` naming
    ``name`` unless all are finite and non-negative, train is positive and they sum to 1 (within 1e-6).
    """
    expected = (f"{name}: expected the train, val and test shares as three non-negative numbers summing to 1 with "
                "train > 0, e.g. [0.8, 0.1, 0.1] or {train: 0.8, val: 0.1, test: 0.1}")
    if isinstance(fractions, Mapping):
        unknown = sorted(str(k) for k in fractions if k not in PARTS)
        if unknown:
            raise ValueError(f"{expected}; got unknown keys {unknown} in {dict(fractions)!r}")
        values = [fractions.get(part, 0.0) for part in PARTS]
    elif isinstance(fractions, Sequence) and not isinstance(fractions, str) and len(fractions) == len(PARTS):
        values = list(fractions)
    else:
        raise ValueError(f"{expected}; got {fractions!r}")
    if not all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"{expected}; got {fractions!r} (every share must be a finite number >= 0)")
    if values[0] <= 0:
        raise ValueError(f"{expected}; got {fractions!r} (train must be > 0)")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"{expected}; got {fractions!r}, which sums to {sum(values):.6g}")
    return {part: float(v) for part, v in zip(PARTS, values, strict=True)}


def group_key(record: SARRecord, group_by: str | None = None) -> str:
    """The key of the records that must share a part with ``record``: ``metadata[group_by]`` when set and present,
    else the image an object chip was cut from (``metadata["parent_id"]``), else the record's own ``source_id``."""
    if group_by is not None and record.metadata.get(group_by) is not None:
        return f"{group_by}={record.metadata[group_by]}"
    parent = record.metadata.get("parent_id")
    return str(parent) if parent is not None else record.source_id


def _rank(seed: int, text: str) -> bytes:
    """Seeded, process-independent sort key (``hash()`` changes with ``PYTHONHASHSEED``)."""
    return hashlib.sha256(f"{seed}\x00{text}".encode()).digest()


def _largest_remainder(n: int, shares: Sequence[float]) -> list[int]:
    exact = [n * f for f in shares]
    counts = [math.floor(x + _EPS) for x in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _quotas(sizes: dict[str | None, int], shares: list[float], seed: int) -> dict[str | None, list[int]]:
    """Per stratum, records per part: floor or ceil of ``n * share``, summing to ``n``; part totals as
    :func:`_largest_remainder` of all records; at least one train record per stratum."""
    parts = range(len(shares))
    targets = _largest_remainder(sum(sizes.values()), shares)
    exact = {s: [n * f for f in shares] for s, n in sizes.items()}
    quota = {s: [math.floor(x + _EPS) for x in exact[s]] for s in sizes}
    for s, q in quota.items():  # first the train image of a small stratum (the floors leave room: train > 0)
        if sizes[s] > 0 and q[0] == 0:
            q[0] = 1
    class_left = {s: sizes[s] - sum(quota[s]) for s in sizes}
    part_left = [targets[p] - sum(quota[s][p] for s in sizes) for p in parts]
    cells = sorted(((s, p) for s in sizes for p in parts if shares[p] > 0),
                   key=lambda c: (-(exact[c[0]][c[1]] - quota[c[0]][c[1]]), _rank(seed, _name(c[0])), c[1]))
    for s, p in cells:
        if class_left[s] > 0 and part_left[p] > 0:
            quota[s][p] += 1
            class_left[s] -= 1
            part_left[p] -= 1
    for s in sorted(sizes, key=lambda s: _rank(seed, _name(s))):  # what the one-per-cell pass could not place
        while class_left[s] > 0:
            p = max(parts, key=lambda p: (part_left[p], -p))
            quota[s][p] += 1
            class_left[s] -= 1
            part_left[p] -= 1
    return quota


def _name(stratum: str | None) -> str:
    return UNLABELLED if stratum is None else stratum


def _primary(record: SARRecord) -> str | None:
    return record.labels[0] if record.labels else None


def stratified_split(records: Iterable[SARRecord], fractions: Sequence[float] | Mapping[str, float],
                     seed: int = 0, group_by: str | None = None) -> dict[str, list[SARRecord]]:
    """Split ``records`` into ``{"train": [...], "val": [...], "test": [...]}`` (see the module docstring).

    Args:
        records: the records to split (their ``split`` is not read or changed); ``source_id`` must be unique.
        fractions: train/val/test shares (:func:`check_fractions`).
        seed: the same records and seed give the same parts, whatever the listing order.
        group_by: metadata key whose records stay together (:func:`group_key`); a key that no record has is an
            error (a typo would silently split nothing together).

    Returns:
        Every record in exactly one part; each part sorted by ``source_id``; a part may be empty.
    """
    shares = list(check_fractions(fractions).values())
    records = list(records)
    repeated = sorted(k for k, n in Counter(r.source_id for r in records).items() if n > 1)
    if repeated:
        raise ValueError(f"stratified_split: record ids must be unique, {len(repeated)} repeat (e.g. {repeated[:3]})")
    if group_by is not None and records and not any(r.metadata.get(group_by) is not None for r in records):
        raise ValueError(f"split group_by={group_by!r}: no record has this metadata key (keys of the first record: "
                         f"{sorted(records[0].metadata)})")
    groups: dict[str, list[SARRecord]] = defaultdict(list)
    for record in records:
        groups[group_key(record, group_by)].append(record)
    strata: dict[str | None, list[str]] = defaultdict(list)
    for key, members in groups.items():
        labels = Counter(_primary(r) for r in members)
        stratum = min(labels, key=lambda s: (-labels[s], s is None, s or ""))
        strata[stratum].append(key)
    sizes = {s: sum(len(groups[g]) for g in keys) for s, keys in strata.items()}
    quotas = _quotas(sizes, shares, seed)
    out: dict[str, list[SARRecord]] = {part: [] for part in PARTS}
    for stratum, keys in strata.items():
        placed: list[list[str]] = [[] for _ in PARTS]
        filled = [0] * len(PARTS)
        for key in sorted(keys, key=lambda g: (-len(groups[g]), _rank(seed, g))):
            p = max(range(len(PARTS)), key=lambda p: (quotas[stratum][p] - filled[p], -p))
            placed[p].append(key)
            filled[p] += len(groups[key])
        if not placed[0]:  # a large first group went elsewhere: train gets the smallest group of the fullest part
            donor = max(range(1, len(PARTS)), key=lambda p: (filled[p], -p))
            smallest = min(placed[donor], key=lambda g: (len(groups[g]), _rank(seed, g)))
            placed[donor].remove(smallest)
            placed[0].append(smallest)
        for part, keys_in_part in zip(PARTS, placed, strict=True):
            out[part].extend(r for g in keys_in_part for r in groups[g])
    for part in PARTS:
        out[part].sort(key=lambda r: r.source_id)
    return out


def part_counts(parts: Mapping[str, Sequence[SARRecord]]) -> dict[str, dict[str, int]]:
    """Records per part and primary label (:data:`UNLABELLED` for none), labels sorted: the audit table."""
    return {part: dict(sorted(Counter(_name(_primary(r)) for r in records).items()))
            for part, records in parts.items()}



def made_part(records: Iterable[SARRecord], part: str, fractions: Sequence[float] | Mapping[str, float],
              seed: int = 0, group_by: str | None = None, where: str = "split") -> list[SARRecord]:
    """The records of ``part`` (``train``, ``val`` or ``test``) of :func:`stratified_split` over ``records``, which
    must all have split ``"all"`` (a source that ships no splits): what ``SourceDataModule`` serves for that stage
    with the same fractions, seed and ``group_by``. ``where`` names the caller in errors."""
    if part not in PARTS:
        raise ValueError(f"{where}: split fractions make the parts {list(PARTS)}; {part!r} is not one of them")
    records = list(records)
    official = sorted({r.split for r in records} - {"all"})
    if official:
        raise ValueError(f"{where}: split fractions are for a source without official splits; this one has "
                         f"{official} (name one of them as the split instead)")
    return stratified_split(records, fractions, seed, group_by)[part]

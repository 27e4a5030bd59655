"""Which records a ``build-corpus`` run stores, under which keys, and which of them an unfinished build stored.

A build is resumed by key, never by position alone, so that a source that changed between runs cannot make the
corpus skip, repeat or silently keep an outdated record:

* **Keys.** Every record gets a key: the first :data:`KEY_CHARS` hex digits of the SHA-1 of ``source:source_id``
  (:func:`content_key`). Repeated entries of one source name (two roots of ``class_folder``, say) append a salt,
  ``#1``, ``#2`` ... for the second, third ... entry (:func:`keyed_records`), so they never share a key, while a
  name used once keeps the key it always had. Sources without official splits (``split: all``) are split here by a
  stable hash (:func:`split_of`).
* **Survey.** Before anything is written, :func:`survey_sources` lists every record of every source (metadata
  only, no pixels) and keeps its key (and, when resuming, a 64-bit :func:`record_fingerprint` of everything the
  source says about it); a source that fails or lists nothing, and a key listed twice, are reported together as
  one :class:`~lightning_sarclip.data.corpus_config.CorpusConfigError`.
* **Plan.** :func:`resume_plan` matches the finished shards' rows (their ``.meta.parquet`` side files: keys and
  fingerprints) with the survey by key: records not stored yet (including images added since) are stored once;
  a stored record that is no longer listed, or is listed with another fingerprint, stops the build with a
  :class:`SourceChangedError` naming them, instead of leaving the old row in the corpus.

:mod:`lightning_sarclip.data.corpus` runs the build; :mod:`lightning_sarclip.data.corpus_config` the config checks.
"""

from __future__ import annotations

import array as pyarray
import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from lightning_sarclip.data.corpus_config import (
    CorpusConfig,
    CorpusConfigError,
    CorpusSource,
    source_listing,
    source_splits,
)
from lightning_sarclip.data.listing import SourceListing
from lightning_sarclip.data.records import SARRecord, metadata_json_default

__all__ = [
    "KEY_CHARS",
    "ResumePlan",
    "SourceChangedError",
    "SourceSurvey",
    "content_key",
    "iter_records",
    "keyed_records",
    "meta_file",
    "record_fingerprint",
    "resume_plan",
    "split_of",
    "survey_sources",
]
#: A key is the first 20 hex digits of the SHA-1 of ``source:source_id`` (:func:`content_key`; for the second and
#: later entries of one source name, with the entry's occurrence appended).
KEY_CHARS = 20


class SourceChangedError(ValueError):
    """The sources no longer list what an unfinished build already stored: resuming would duplicate or omit."""


# ---------------------------------------------------------------------------------------------- records and keys
def content_key(record: SARRecord, salt: str = "") -> str:
    """The corpus key of ``record``: a digest of ``source:source_id`` (+ ``salt``, see :func:`_key_salts`)."""
    return hashlib.sha1((record.key + salt).encode()).hexdigest()[:KEY_CHARS]


def split_of(key: str, val_fraction: float, test_fraction: float) -> str:
    """Stable split for sources without one: a hash of ``key`` into [0, 1)."""
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def _source_records(spec: CorpusSource) -> Iterator[tuple[SARRecord, SourceListing]]:
    """The records of one source, each with the listing of its split (the reader instance's policy and caption
    vocabulary; readers resolve both per layout), detection sources expanded to pairs, ``split: all`` assigned."""
    total = 0
    for split in source_splits(spec):
        listing = source_listing(spec, split)
        for count, record in enumerate(listing.records()):
            if spec.max_images is not None and count >= spec.max_images:
                break
            if record.split in spec.rename_splits:  # before 'all' is split: {all: train} puts everything in train
                record.split = spec.rename_splits[record.split]
            if record.split == "all":
                group = record.metadata.get(spec.group_by, record.source_id) if spec.group_by else record.source_id
                record.split = split_of(f"{spec.name}:{group}", spec.val_fraction, spec.test_fraction)
            total += 1
            yield record, listing
    if total == 0:
        raise ValueError(
            f"source {spec.name!r} at {spec.root} yielded no records for splits {source_splits(spec)} with options "
            f"{spec.options}; check the root against data_cards/{spec.name}.md (a source without official splits "
            "needs splits: [all])"
        )


def iter_records(config: CorpusConfig) -> Iterator[tuple[CorpusSource, SARRecord, SourceListing]]:
    for spec in config.sources:
        for record, listing in _source_records(spec):
            yield spec, record, listing


def _key_salts(config: CorpusConfig) -> list[str]:
    """Per source entry, what its keys' digest appends to ``source:source_id``: nothing for the first entry of a
    source name, ``#1``, ``#2`` ... for later ones, so that two roots of one source (two class folders with the
    same relative paths) never share a key, while a name used once keeps the key it always had."""
    seen: Counter[str] = Counter()
    salts = []
    for spec in config.sources:
        salts.append(f"#{seen[spec.name]}" if seen[spec.name] else "")
        seen[spec.name] += 1
    return salts


def keyed_records(config: CorpusConfig, index: int) -> Iterator[tuple[SARRecord, SourceListing, str]]:
    """The records of ``config.sources[index]`` with their keys."""
    salt = _key_salts(config)[index]
    for record, listing in _source_records(config.sources[index]):
        yield record, listing, content_key(record, salt)


# ---------------------------------------------------------------------------------------------- survey
def record_fingerprint(record: SARRecord) -> int:
    """64-bit digest of everything a source says about a record (image path, split, labels, boxes, metadata,
    captions): a stored row whose record now has another fingerprint was listed differently when it was stored."""
    text = json.dumps(asdict(record), sort_keys=True, default=metadata_json_default)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass
class SourceSurvey:
    """What the up-front listing keeps of every record, in listing order: its key (``S20`` bytes) and, when an
    unfinished build is resumed, its fingerprint. 20 (+8) bytes a record: 1.7M records are about 50 MB."""

    keys: np.ndarray
    fingerprints: np.ndarray | None = None


def survey_sources(config: CorpusConfig, fingerprints: bool = False) -> SourceSurvey:
    """List every record of every source (metadata only, no pixels); raises one :class:`CorpusConfigError` naming
    each source that fails or yields nothing, and each key listed more than once."""
    keys = bytearray()
    prints = pyarray.array("Q")
    problems: list[str] = []
    first_error: Exception | None = None
    for index, spec in enumerate(config.sources):
        try:
            for record, _, key in keyed_records(config, index):
                keys += key.encode("ascii")
                if fingerprints:
                    prints.append(record_fingerprint(record))
        except Exception as err:  # whatever a reader raises is a problem of this source: reported with the others
            problems.append(f"sources[{index}] ({spec.name} at {spec.root}): {type(err).__name__}: {err}")
            first_error = first_error or err
    if problems:
        raise CorpusConfigError(problems) from first_error
    survey = SourceSurvey(np.frombuffer(keys, dtype=f"S{KEY_CHARS}"),
                          np.frombuffer(prints, dtype=np.uint64) if fingerprints else None)
    repeated = _repeated(survey.keys)
    if repeated.size:
        raise CorpusConfigError(_repeated_problems(config, repeated))
    return survey


def _repeated(keys: np.ndarray) -> np.ndarray:
    ordered = np.sort(keys)
    return np.unique(ordered[1:][ordered[1:] == ordered[:-1]])


def _repeated_problems(config: CorpusConfig, repeated: np.ndarray, limit: int = 5) -> list[str]:
    """Name the records behind the first ``limit`` repeated keys (a second listing: this is the error path)."""
    wanted = set(repeated[:limit].tolist())
    found: dict[bytes, list[tuple[int, str]]] = defaultdict(list)
    for index in range(len(config.sources)):
        for record, _, text in keyed_records(config, index):
            key = text.encode("ascii")
            if key in wanted:
                found[key].append((index, record.key))
    problems = []
    for key, hits in found.items():
        where = ", ".join(f"sources[{i}] ({config.sources[i].name} at {config.sources[i].root}) as {name!r}"
                          for i, name in hits)
        problems.append(f"key {key.decode()} is listed {len(hits)} times: by {where}; expected each record once "
                        "(two rows would share the key): the reader lists a record twice, or a split is listed twice")
    if repeated.size > limit:
        problems.append(f"... and {repeated.size - limit} more keys listed more than once")
    return problems


# ---------------------------------------------------------------------------------------------- resume
@dataclass
class ResumePlan:
    """Per listed record (listing order): its key, and whether a finished shard already holds it."""

    keys: np.ndarray
    written: np.ndarray


def resume_plan(out: Path, shards: list[dict], survey: SourceSurvey) -> ResumePlan:
    """Match the rows of the finished ``shards`` (``build_state.json``'s entries) to the listed records by key;
    refuses when a stored record is no longer listed, or is listed with another fingerprint (the corpus would keep
    the old one, silently)."""
    written = np.zeros(len(survey.keys), dtype=bool)
    if not shards:
        return ResumePlan(survey.keys, written)
    done_keys, done_prints = _stored_records(out, shards)
    order = np.argsort(survey.keys, kind="stable")
    ordered = survey.keys[order]
    position = np.minimum(np.searchsorted(ordered, done_keys), len(ordered) - 1)
    listed = ordered[position] == done_keys
    index = order[position[listed]]
    assert survey.fingerprints is not None  # surveyed with fingerprints whenever shards are finished
    changed = survey.fingerprints[index] != done_prints[listed]
    if not listed.all() or changed.any():
        raise SourceChangedError(_changed_message(out, shards, done_keys[~listed], done_keys[listed][changed]))
    written[index] = True
    return ResumePlan(survey.keys, written)


def _stored_records(out: Path, shards: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Keys and record fingerprints of the finished shards' rows, read from their side files."""
    keys, prints = [], []
    for shard, meta in _finished_metas(out, shards):
        table = pq.read_table(meta, columns=["key", "record_fingerprint"])
        if table.num_rows != shard["records"]:
            raise ValueError(f"{meta}: holds {table.num_rows} rows, build_state.json expects {shard['records']}; "
                             f"the folder was changed by hand: delete {out} and build again")
        keys.append(np.array(table.column("key").to_pylist(), dtype=f"S{KEY_CHARS}"))
        prints.append(table.column("record_fingerprint").to_numpy())
    return np.concatenate(keys), np.concatenate(prints).astype(np.uint64)


def _finished_metas(out: Path, shards: list[dict]) -> Iterator[tuple[dict, Path]]:
    for shard in shards:
        for path in (out / "shards" / shard["file"], out / "shards" / meta_file(shard["file"])):
            if not path.is_file():
                raise ValueError(f"{path}: finished according to build_state.json but missing; the folder was "
                                 f"changed by hand: delete {out} and build again")
        yield shard, out / "shards" / meta_file(shard["file"])


def _changed_message(out: Path, shards: list[dict], gone: np.ndarray, changed: np.ndarray) -> str:
    parts = []
    for keys, what in ((gone, "are no longer listed"), (changed, "are listed with other contents (image path, "
                                                                  "split, labels, metadata or captions)")):
        if keys.size:
            examples = ", ".join(_stored_names(out, shards, set(keys[:5].tolist())))
            parts.append(f"{keys.size} stored record(s) {what}, e.g. {examples}")
    stored = sum(shard["records"] for shard in shards)
    return (f"{out}: the sources changed since this unfinished build stored {stored} records in "
            f"{len(shards)} shard(s): {'; '.join(parts)}. Resuming would keep what was stored and mix it with "
            f"what is listed now: delete {out} and build again (or restore the sources as they were)")


def _stored_names(out: Path, shards: list[dict], keys: set[bytes]) -> list[str]:
    """``source:source_id`` (and key) of the stored rows with ``keys`` (the error path reads the side files again)."""
    names = []
    for _, meta in _finished_metas(out, shards):
        table = pq.read_table(meta, columns=["key", "source", "source_id"])
        for row in table.to_pylist():
            if row["key"].encode("ascii") in keys:
                names.append(f"{row['source']}:{row['source_id']} (key {row['key']})")
    return names


def meta_file(shard_file: str) -> str:
    """The side file of a shard: its rows without pixels, and each record's fingerprint."""
    return shard_file.rsplit(".", 1)[0] + ".meta.parquet"

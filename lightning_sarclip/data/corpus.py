"""``build-corpus``: public SAR datasets in their original layouts -> a SARCLIP-1M-style image-text corpus.

    python -m lightning_sarclip build-corpus --config experiments/corpus/sarclip1m.yaml

Output folder::

    shards/shard-00000.arrow ...   Arrow IPC files, one row per image: key, png bytes, captions, styles, labels, ...
                                   (``datasets.Dataset.from_file`` opens them; ``format: webdataset`` writes
                                   ``shard-00000.tar`` with ``<key>.png`` + ``<key>.json`` instead)
    shards/shard-00000.meta.parquet  the shard's rows without pixels, plus each record's fingerprint (for
                                   finalising without decoding images, and for resuming)
    manifest.parquet               one row per image-caption pair: source, source_id, split, caption_index,
                                   caption_style, image_hash, phash, shard, row, status
    variants/<name>.parquet        the kept pairs of each held-out variant (e.g. without MSTAR)
    stats.md                       per-source table shaped like the paper's (train/val images and captions, test pairs)
    build_state.json               progress, for resuming

How it works, and why:

0. **Check first.** Every config value is checked, every source's reader is constructed for every split and its
   records are listed (metadata only, no pixels) before the output folder is created: a typo, a missing root, a
   bad option, an empty source or a record key listed twice is reported, all of them at once
   (:class:`CorpusConfigError`), not after hours of work on the sources listed before it. Only the records'
   keys (20 bytes each) are kept; the build pass lists the sources again. Rerunning a finished build only
   finalises it again, without reading its sources.
1. **Stream and store.** Sources are read in config order, records in each reader's deterministic order. Each image
   is read once, converted by its source's policy to [0, 1], bounded to ``max_side``, stored as an 8-bit PNG
   (1 channel ``L``; 2 channels VV/VH as ``LA``), hashed (``image_hash``: BLAKE2b of the stored pixels;
   ``phash``: 64-bit DCT perceptual hash) and captioned. Shards are written to a temporary name and renamed, and
   ``build_state.json`` is replaced atomically after each shard (:mod:`lightning_sarclip.utils.atomic`). A
   killed build resumes by key: each finished shard's ``.meta.parquet`` side file holds its rows' keys and a
   fingerprint of each record (path, split, labels, metadata, captions), so the rerun stores exactly the records
   not stored yet (an image added since is stored once) and refuses (:class:`SourceChangedError`) when a stored
   record is no longer listed or is listed differently, instead of leaving it behind silently. A killed build's
   temporary files are removed when their destinations are written again. Memory is one shard's rows plus the
   listed keys. Non-finite pixels that a policy replaced (``nonfinite: zero``) are counted per shard in
   ``build_state.json`` and reported (``nonfinite_pixels_replaced``).
2. **Decide.** From the hashes alone (no pixels): images whose perceptual hashes differ by at most
   ``phash_distance`` bits are one group (SARDet-100K, SARLANG-1M and others re-publish the same images). In a
   group, test beats val beats train: an image that is in any test split never reaches train or val, and one
   in val never reaches train (``status`` ``leak``); among copies in the same split the first source wins
   (``duplicate``). Sources without official splits (``split: all``) are split by a stable hash of their
   ``source_id`` (or a ``group_by`` metadata key, so that e.g. SAMPLE's measured/simulated pairs stay together).
3. **Variants.** ``held_out: {wo_mstar: [mstar]}`` writes the kept pairs minus every group that contains an
   image of the held-out sources, so a near-duplicate re-published elsewhere cannot leak it back.
"""

from __future__ import annotations

import array as pyarray
import hashlib
import io
import json
import logging
import math
import re
import tarfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from lightning_sarclip.data.captions import STYLES, Captioner
from lightning_sarclip.data.io import read_sar
from lightning_sarclip.data.listing import DETECTION_MODES, SourceListing
from lightning_sarclip.data.records import SARRecord, metadata_json_default
from lightning_sarclip.data.sources import get_source
from lightning_sarclip.data.sources.base import DatasetNotFoundError, SourceFormatError
from lightning_sarclip.data.transforms import build_policy
from lightning_sarclip.utils.atomic import atomic_open, atomic_path, remove_stale_temps

log = logging.getLogger("lightning_sarclip")

SPLIT_RANK = {"test": 0, "val": 1, "train": 2}
SHARD_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.string()),
        ("source_id", pa.string()),
        ("split", pa.string()),
        ("png", pa.binary()),
        ("channels", pa.int8()),
        ("captions", pa.list_(pa.string())),
        ("styles", pa.list_(pa.string())),
        ("labels", pa.list_(pa.string())),
        ("metadata", pa.string()),
        ("image_hash", pa.string()),
        ("phash", pa.uint64()),
    ]
)
#: The side file of a shard: its rows without pixels, plus a fingerprint of each row's record (what a resumed
#: build compares with the record the source lists now).
META_SCHEMA = SHARD_SCHEMA.remove(SHARD_SCHEMA.get_field_index("png")).append(
    pa.field("record_fingerprint", pa.uint64())
)
FORMATS = ("arrow", "webdataset")
#: Smaller stored images make every perceptual hash alike (everything would be a near-duplicate of everything).
MIN_MAX_SIDE = 8
#: A key is the first 20 hex digits of the SHA-1 of ``source:source_id`` (:func:`content_key`; for the second and
#: later entries of one source name, with the entry's occurrence appended).
KEY_CHARS = 20

MANIFEST_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("source_id", pa.string()),
        ("key", pa.string()),
        ("split", pa.string()),
        ("caption_index", pa.int32()),
        ("caption_style", pa.string()),
        ("image_hash", pa.string()),
        ("phash", pa.uint64()),
        ("group", pa.int64()),
        ("shard", pa.string()),
        ("row", pa.int64()),
        ("status", pa.string()),
    ]
)


@dataclass
class CorpusSource:
    """One source of the corpus.

    Args:
        name: registered source name (``mstar``, ``sardet100k`` ...).
        root: dataset root in its original layout.
        options: extra reader arguments (``layout``, ``product`` ...).
        splits: which of the reader's splits to take (default: all it has).
        n_captions: captions per image (the paper: 5; sources that ship captions keep theirs).
        detection: for detection sources, ``whole`` (image + count/position captions), ``chips`` (one crop per
            object) or ``both``.
        policy: conversion policy override (see :mod:`lightning_sarclip.data.transforms`).
        val_fraction, test_fraction: used when the source has no official split.
        group_by: metadata key that must not be split across train/val/test (for ``split: all`` sources).
        max_images: cap per split (for quick builds and tests); ``None`` takes everything.
    """

    name: str
    root: str
    options: dict[str, Any] = field(default_factory=dict)
    splits: list[str] | None = None
    n_captions: int = 5
    detection: str = "whole"
    policy: str | dict | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    group_by: str | None = None
    max_images: int | None = None


@dataclass
class CorpusConfig:
    """What to build: ``output`` folder, ``sources``, captioning, storage and de-duplication settings."""

    output: str
    sources: list[CorpusSource]
    caption_styles: list[str] = field(default_factory=lambda: ["general", "complex", "absolute", "relative"])
    seed: int = 0
    max_side: int = 256
    shard_size: int = 1000
    format: str = "arrow"
    phash_distance: int = 3
    held_out: dict[str, list[str]] = field(default_factory=dict)
    progress_every: int = 1000


# ---------------------------------------------------------------------------------------------- errors
class CorpusConfigError(ValueError):
    """Every problem of a corpus config found before anything was written, one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"build-corpus config: {len(self.problems)} problem(s), nothing was written:\n{lines}")


class SourceChangedError(ValueError):
    """The sources no longer list what an unfinished build already stored: resuming would duplicate or omit."""


# ---------------------------------------------------------------------------------------------- validation
def validate_config(config: CorpusConfig) -> None:
    """Check every value of ``config`` and construct every source's reader for every split (roots, layouts and
    options are checked; records are not listed yet); raises one :class:`CorpusConfigError` naming them all."""
    problems = config_problems(config)
    more, cause = reader_problems(config)
    if problems or more:
        raise CorpusConfigError(problems + more) from cause


def reader_problems(config: CorpusConfig) -> tuple[list[str], Exception | None]:
    """Construct every source's reader for every split; the problems, and the first error (for its traceback)."""
    problems: list[str] = []
    first_error: Exception | None = None
    for index, spec in enumerate(config.sources if isinstance(config.sources, list) else []):
        if _source_problems(index, spec):
            continue  # its own fields are wrong: constructing the reader would only repeat that
        problem, error = _construction_problem(index, spec)
        if problem:
            problems.append(problem)
            first_error = first_error or error
    return problems, first_error


def config_problems(config: CorpusConfig) -> list[str]:
    """The problems of ``config``'s values alone (no file is opened), each naming its field and what was expected."""
    problems = _settings_problems(config)
    if not isinstance(config.sources, list) or not config.sources:
        problems.append(f"sources: expected a non-empty list of sources ({{name, root, ...}}), got {config.sources!r}")
    else:
        for index, spec in enumerate(config.sources):
            problems += _source_problems(index, spec)
    return problems + _held_out_problems(config)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_problems(name: str, value: Any, low: int, high: int | None = None) -> list[str]:
    if _is_int(value) and value >= low and (high is None or value <= high):
        return []
    expected = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    return [f"{name}: expected {expected}, got {value!r}"]


def _settings_problems(config: CorpusConfig) -> list[str]:
    problems = []
    if not isinstance(config.output, str) or not config.output:
        problems.append(f"output: expected the output folder's path, got {config.output!r}")
    styles = config.caption_styles
    if not isinstance(styles, list | tuple) or not styles or any(s not in STYLES for s in styles):
        problems.append(f"caption_styles: expected a non-empty list of styles from {list(STYLES)}, got {styles!r}")
    if not _is_int(config.seed):
        problems.append(f"seed: expected an integer, got {config.seed!r}")
    # max_side bounds every stored image; shard_size bounds the rows held in memory.
    problems += _int_problems("max_side", config.max_side, MIN_MAX_SIDE)
    problems += _int_problems("shard_size", config.shard_size, 1)
    if config.format not in FORMATS:
        problems.append(f"format: expected one of {list(FORMATS)}, got {config.format!r}")
    problems += _int_problems("phash_distance", config.phash_distance, 0, 64)  # bits of a 64-bit hash
    problems += _int_problems("progress_every", config.progress_every, 1)
    return problems


def _source_problems(index: int, spec: Any) -> list[str]:
    where = f"sources[{index}]"
    if not isinstance(spec, CorpusSource):
        return [f"{where}: expected a source entry ({{name, root, options, ...}}), got {spec!r}"]
    problems = []
    source_cls = None
    if not isinstance(spec.name, str):
        problems.append(f"{where}.name: expected a registered source name, got {spec.name!r}")
    else:
        try:
            source_cls = get_source(spec.name)
        except ValueError as err:  # the error lists the known names
            problems.append(f"{where}.name: {err}")
    if not isinstance(spec.root, str) or not spec.root:
        problems.append(f"{where}.root: expected the dataset's folder (or file) as a path, got {spec.root!r}")
    if not isinstance(spec.options, dict):
        problems.append(f"{where}.options: expected a mapping of reader arguments, got {spec.options!r}")
    problems += _int_problems(f"{where}.n_captions", spec.n_captions, 1)
    if spec.detection not in DETECTION_MODES:
        problems.append(f"{where}.detection: expected one of {list(DETECTION_MODES)}, got {spec.detection!r}")
    problems += _fraction_problems(where, spec)
    if spec.max_images is not None and not (_is_int(spec.max_images) and spec.max_images >= 1):
        problems.append(f"{where}.max_images: expected null (everything) or an integer >= 1, got {spec.max_images!r}")
    if spec.group_by is not None and (not isinstance(spec.group_by, str) or not spec.group_by):
        problems.append(f"{where}.group_by: expected null or a metadata key, got {spec.group_by!r}")
    problems += _policy_problems(where, spec.policy)
    if source_cls is not None:
        problems += _splits_problems(where, spec.splits, source_cls.name, tuple(source_cls.splits))
    return problems


def _fraction_problems(where: str, spec: CorpusSource) -> list[str]:
    problems = []
    for name in ("val_fraction", "test_fraction"):
        value = getattr(spec, name)
        number = (_is_int(value) or isinstance(value, float)) and math.isfinite(value)
        if not number or not 0 <= value < 1:
            problems.append(f"{where}.{name}: expected a number in [0, 1), got {value!r}")
    if not problems and spec.val_fraction + spec.test_fraction >= 1:
        problems.append(f"{where}.val_fraction + test_fraction: expected a sum < 1 (the rest is train), got "
                        f"{spec.val_fraction} + {spec.test_fraction}")
    return problems


def _policy_problems(where: str, policy: Any) -> list[str]:
    if policy is None:
        return []  # the reader instance's default, checked when the reader is constructed
    try:
        build_policy(policy)
    except (ValueError, TypeError) as err:
        return [f"{where}.policy: {err} (expected a policy name, or a mapping with 'name' and its arguments)"]
    return []


def _splits_problems(where: str, splits: Any, source: str, known: tuple[str, ...]) -> list[str]:
    if splits is None:
        return []
    allowed = [*known, "all"]
    if not isinstance(splits, list) or not splits:
        return [f"{where}.splits: expected null (all of {source}'s splits) or a non-empty list from {allowed}, "
                f"got {splits!r}"]
    unknown = [s for s in splits if s not in allowed]
    if unknown:
        return [f"{where}.splits: {unknown} are not splits of {source}; expected a list from {allowed}"]
    if len(set(splits)) < len(splits) or ("all" in splits and len(splits) > 1):
        # 'all' already yields every split: any overlap would store each of those records twice.
        return [f"{where}.splits: expected each split once and 'all' alone, got {splits!r}"]
    return []


def _held_out_problems(config: CorpusConfig) -> list[str]:
    if not isinstance(config.held_out, dict):
        return [f"held_out: expected a mapping of variant name -> list of source names, got {config.held_out!r}"]
    sources = config.sources if isinstance(config.sources, list) else []
    known = sorted({s.name for s in sources if isinstance(s, CorpusSource) and isinstance(s.name, str)})
    problems = []
    for name, held in config.held_out.items():
        if not isinstance(name, str) or not _VARIANT_NAME.fullmatch(name):
            problems.append(f"held_out: variant name {name!r} becomes variants/<name>.parquet; expected letters, "
                            "digits, '_', '-' or '.' (not first)")
        if not isinstance(held, list) or not held or not all(isinstance(h, str) for h in held):
            problems.append(f"held_out.{name}: expected a non-empty list of source names, got {held!r}")
            continue
        unknown = [h for h in held if h not in known]
        if unknown:
            # A misspelt name would hold out nothing: the "held-out" variant would hold every pair.
            problems.append(f"held_out.{name}: {unknown} is not a source of this config; expected names from "
                            f"sources: {known}")
    return problems


_VARIANT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _construction_problem(index: int, spec: CorpusSource) -> tuple[str | None, Exception | None]:
    """Construct the reader of every split (cheap: roots and layouts, no records); the first failure named."""
    for split in _splits_of(spec):
        try:
            _listing(spec, split)
        except Exception as err:  # whatever a reader raises is a problem of this entry: reported with the others
            field_name = "root" if isinstance(err, DatasetNotFoundError | OSError | SourceFormatError) else "options"
            return (f"sources[{index}].{field_name} ({spec.name} at {spec.root}, split {split!r}): "
                    f"{type(err).__name__}: {err}"), err
    return None, None


# ---------------------------------------------------------------------------------------------- hashing
def perceptual_hash(image: np.ndarray) -> int:
    """64-bit pHash of a (C, H, W) [0, 1] image: DCT of a 32x32 grey thumbnail, low 8x8 band vs its median."""
    from scipy.fft import dctn

    grey = image.mean(axis=0)
    thumb = np.asarray(Image.fromarray((grey * 255).astype(np.uint8)).resize((32, 32), Image.BILINEAR), np.float32)
    band = dctn(thumb, norm="ortho")[:8, :8].flatten()
    bits = band > np.median(band[1:])
    return int(np.packbits(bits.astype(np.uint8)).view(">u8")[0])


def content_hash(pixels: np.ndarray) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(pixels.shape).encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


def split_of(key: str, val_fraction: float, test_fraction: float) -> str:
    """Stable split for sources without one: a hash of ``key`` into [0, 1)."""
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


# ---------------------------------------------------------------------------------------------- records
def _splits_of(spec: CorpusSource) -> list[str]:
    return list(spec.splits or get_source(spec.name).splits)


def _listing(spec: CorpusSource, split: str) -> SourceListing:
    return SourceListing(spec.name, spec.root, split, options=spec.options, policy=spec.policy,
                         detection=spec.detection)


def _source_records(spec: CorpusSource) -> Iterator[tuple[SARRecord, SourceListing]]:
    """The records of one source, each with the listing of its split (the reader instance's policy and caption
    vocabulary; readers resolve both per layout), detection sources expanded to pairs, ``split: all`` assigned."""
    total = 0
    for split in _splits_of(spec):
        listing = _listing(spec, split)
        for count, record in enumerate(listing.records()):
            if spec.max_images is not None and count >= spec.max_images:
                break
            if record.split == "all":
                group = record.metadata.get(spec.group_by, record.source_id) if spec.group_by else record.source_id
                record.split = split_of(f"{spec.name}:{group}", spec.val_fraction, spec.test_fraction)
            total += 1
            yield record, listing
    if total == 0:
        raise ValueError(
            f"source {spec.name!r} at {spec.root} yielded no records for splits {_splits_of(spec)} with options "
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


def _keyed_records(config: CorpusConfig, index: int) -> Iterator[tuple[SARRecord, SourceListing, str]]:
    """The records of ``config.sources[index]`` with their keys."""
    salt = _key_salts(config)[index]
    for record, listing in _source_records(config.sources[index]):
        yield record, listing, content_key(record, salt)


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
            for record, _, key in _keyed_records(config, index):
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
        for record, _, text in _keyed_records(config, index):
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


# ---------------------------------------------------------------------------------------------- conversion
def store_pixels(record: SARRecord, policy, max_side: int) -> np.ndarray:
    """Read, convert to [0, 1] and bound the longest side; returns uint8 (C, H, W) with C in {1, 2}."""
    return convert_record(record, policy, max_side)[0]


def convert_record(record: SARRecord, policy, max_side: int) -> tuple[np.ndarray, int]:
    """:func:`store_pixels` and the number of non-finite pixels the policy replaced (a policy with
    ``nonfinite: zero`` counts them in the image's ``meta["nonfinite_replaced"]``; others refuse them)."""
    image = read_sar(record.image)
    unit = policy(image)
    return _bounded_uint8(unit, max_side), int(image.meta.get("nonfinite_replaced", 0))


def _bounded_uint8(unit: np.ndarray, max_side: int) -> np.ndarray:
    if unit.shape[0] > 2:
        unit = unit[:1] if np.allclose(unit[0], unit[1]) else unit[:2]
    c, h, w = unit.shape
    scale = min(1.0, max_side / max(h, w))
    pixels = (np.clip(unit, 0, 1) * 255 + 0.5).astype(np.uint8)
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        pixels = np.stack([np.asarray(Image.fromarray(ch).resize(size, Image.BILINEAR)) for ch in pixels])
    return pixels


def encode_png(pixels: np.ndarray) -> bytes:
    mode = "L" if pixels.shape[0] == 1 else "LA"
    image = Image.fromarray(pixels[0] if mode == "L" else np.moveaxis(pixels, 0, -1), mode=mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Stored PNG -> float32 (C, H, W) in [0, 1]."""
    with Image.open(io.BytesIO(data)) as image:
        array = np.asarray(image)
    if array.ndim == 2:
        array = array[None]
    else:
        array = np.moveaxis(array, -1, 0)
    return array.astype(np.float32) / 255.0


# ---------------------------------------------------------------------------------------------- atomic io
# Every output file goes through lightning_sarclip.utils.atomic. An output folder has one builder (two would
# write the same shard indexes), so a temporary file of a destination that is about to be written again can only
# be a killed build's: it is removed at once (not after utils.atomic's STALE_AFTER_S), and a resumed build leaves
# exactly the files of an uninterrupted one.
_STALE_AFTER_S = 0.0


def _write_text(path: Path, text: str) -> None:
    with atomic_open(path, "wb", stale_after_s=_STALE_AFTER_S) as handle:
        handle.write(text.encode("utf-8"))


def _write_table(table: pa.Table, path: Path) -> None:
    with atomic_path(path, stale_after_s=_STALE_AFTER_S) as tmp:
        pq.write_table(table, tmp)


# ---------------------------------------------------------------------------------------------- shards
def _write_shard(rows: list[dict], path: Path, fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {list(FORMATS)}, got {fmt!r}")
    with atomic_path(path, stale_after_s=_STALE_AFTER_S) as tmp:
        if fmt == "arrow":
            table = pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, SHARD_SCHEMA) as writer:
                writer.write_table(table)
        else:
            with tarfile.open(tmp, "w") as tar:
                for row in rows:
                    meta = {name: row[name] for name in SHARD_SCHEMA.names if name != "png"}
                    for suffix, payload in (("png", row["png"]), ("json", json.dumps(meta).encode())):
                        info = tarfile.TarInfo(f"{row['key']}.{suffix}")
                        info.size = len(payload)
                        info.mtime = 0
                        tar.addfile(info, io.BytesIO(payload))


def read_shard(path: str | Path) -> pa.Table:
    """Open an Arrow shard (memory-mapped)."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()


#: Version 2: shards' side files hold ``record_fingerprint`` and shards count ``nonfinite_replaced``; an
#: unfinished build of another version cannot be resumed by key.
STATE_VERSION = 2
_SHARD_FILE = re.compile(r"shard-\d+\.(?:arrow|tar|meta\.parquet)")
_SHARD_TEMP = re.compile(r"\.(shard-\d+\.(?:arrow|tar|meta\.parquet))\.[A-Za-z0-9_]+\.tmp")


@dataclass
class BuildState:
    shards: list[dict] = field(default_factory=list)  # {"file", "records", "first", "nonfinite_replaced"}
    finished: bool = False
    config_hash: str = ""
    version: int = STATE_VERSION

    @property
    def records_done(self) -> int:
        return sum(s["records"] for s in self.shards)

    @property
    def nonfinite_replaced(self) -> int:
        return sum(s.get("nonfinite_replaced", 0) for s in self.shards)


def _config_hash(config: CorpusConfig) -> str:
    payload = asdict(config)
    payload.pop("progress_every", None)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _load_state(out: Path, config: CorpusConfig) -> BuildState:
    """The state of an earlier build in ``out`` (read only: nothing is written before the sources are listed)."""
    path = out / "build_state.json"
    expected = _config_hash(config)
    if not path.exists():
        return BuildState(config_hash=expected)
    try:
        data = json.loads(path.read_text())
        state = BuildState(**{"version": 1, **data})  # files without a version predate resuming by key
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: expected a build-corpus state file ({err}); choose another output folder or "
                         "delete it") from err
    if state.config_hash != expected:
        raise ValueError(
            f"{out}: holds a build of a different configuration (build_state.json config_hash "
            f"{state.config_hash} != {expected}); choose another output folder or delete it"
        )
    if not state.finished and state.version != STATE_VERSION:
        raise ValueError(f"{path}: an unfinished build of another build-corpus version (state version "
                         f"{state.version}, expected {STATE_VERSION}) cannot be resumed; delete {out} and build again")
    return state


def _save_state(out: Path, state: BuildState) -> None:
    _write_text(out / "build_state.json", json.dumps(asdict(state), indent=1))


# ---------------------------------------------------------------------------------------------- resume
@dataclass
class ResumePlan:
    """Per listed record (listing order): its key, and whether a finished shard already holds it."""

    keys: np.ndarray
    written: np.ndarray


def _resume_plan(out: Path, state: BuildState, survey: SourceSurvey) -> ResumePlan:
    """Match the finished shards' rows to the listed records by key; refuses when a stored record is no longer
    listed, or is listed with another fingerprint (the corpus would keep the old one, silently)."""
    written = np.zeros(len(survey.keys), dtype=bool)
    if not state.shards:
        return ResumePlan(survey.keys, written)
    done_keys, done_prints = _stored_records(out, state)
    order = np.argsort(survey.keys, kind="stable")
    ordered = survey.keys[order]
    position = np.minimum(np.searchsorted(ordered, done_keys), len(ordered) - 1)
    listed = ordered[position] == done_keys
    index = order[position[listed]]
    assert survey.fingerprints is not None  # surveyed with fingerprints whenever shards are finished
    changed = survey.fingerprints[index] != done_prints[listed]
    if not listed.all() or changed.any():
        raise SourceChangedError(_changed_message(out, state, done_keys[~listed], done_keys[listed][changed]))
    written[index] = True
    return ResumePlan(survey.keys, written)


def _stored_records(out: Path, state: BuildState) -> tuple[np.ndarray, np.ndarray]:
    """Keys and record fingerprints of the finished shards' rows, read from their side files."""
    keys, prints = [], []
    for shard, meta in _finished_metas(out, state):
        table = pq.read_table(meta, columns=["key", "record_fingerprint"])
        if table.num_rows != shard["records"]:
            raise ValueError(f"{meta}: holds {table.num_rows} rows, build_state.json expects {shard['records']}; "
                             f"the folder was changed by hand: delete {out} and build again")
        keys.append(np.array(table.column("key").to_pylist(), dtype=f"S{KEY_CHARS}"))
        prints.append(table.column("record_fingerprint").to_numpy())
    return np.concatenate(keys), np.concatenate(prints).astype(np.uint64)


def _finished_metas(out: Path, state: BuildState) -> Iterator[tuple[dict, Path]]:
    for shard in state.shards:
        for path in (out / "shards" / shard["file"], out / "shards" / _meta_file(shard["file"])):
            if not path.is_file():
                raise ValueError(f"{path}: finished according to build_state.json but missing; the folder was "
                                 f"changed by hand: delete {out} and build again")
        yield shard, out / "shards" / _meta_file(shard["file"])


def _changed_message(out: Path, state: BuildState, gone: np.ndarray, changed: np.ndarray) -> str:
    parts = []
    for keys, what in ((gone, "are no longer listed"), (changed, "are listed with other contents (image path, "
                                                                  "split, labels, metadata or captions)")):
        if keys.size:
            examples = ", ".join(_stored_names(out, state, set(keys[:5].tolist())))
            parts.append(f"{keys.size} stored record(s) {what}, e.g. {examples}")
    return (f"{out}: the sources changed since this unfinished build stored {state.records_done} records in "
            f"{len(state.shards)} shard(s): {'; '.join(parts)}. Resuming would keep what was stored and mix it with "
            f"what is listed now: delete {out} and build again (or restore the sources as they were)")


def _stored_names(out: Path, state: BuildState, keys: set[bytes]) -> list[str]:
    """``source:source_id`` (and key) of the stored rows with ``keys`` (the error path reads the side files again)."""
    names = []
    for _, meta in _finished_metas(out, state):
        table = pq.read_table(meta, columns=["key", "source", "source_id"])
        for row in table.to_pylist():
            if row["key"].encode("ascii") in keys:
                names.append(f"{row['source']}:{row['source_id']} (key {row['key']})")
    return names


# ---------------------------------------------------------------------------------------------- build
def build_corpus(config: CorpusConfig) -> dict[str, Any]:
    """Build (or resume) the corpus described by ``config``; returns a summary (counts, timings, paths).

    Nothing is written before ``config`` is checked and every source is listed (:class:`CorpusConfigError`), and
    before a resumed build's stored records are matched to the listing (:class:`SourceChangedError`).
    """
    problems = config_problems(config)
    # A finished corpus is only finalised again: its sources are not read (they may be elsewhere by now).
    state = None if problems else _load_state(Path(config.output), config)
    if state is None or not state.finished:
        more, cause = reader_problems(config)
        if problems or more:
            raise CorpusConfigError(problems + more) from cause
    assert state is not None
    out = Path(config.output)
    started = time.perf_counter()
    written = resumed = 0
    if not state.finished:
        plan = _resume_plan(out, state, survey_sources(config, fingerprints=bool(state.shards)))
        resumed = int(plan.written.sum())
        if resumed:
            log.info("build-corpus: resuming, %d of %d listed records are stored already", resumed, len(plan.keys))
        (out / "shards").mkdir(parents=True, exist_ok=True)
        written = _store_records(out, config, state, plan)
        _remove_unfinished_shards(out, state)
        state.finished = True
        _save_state(out, state)
    summary = finalize(out, config, state)
    summary["images_this_run"] = written
    summary["images_already_stored"] = resumed
    summary["nonfinite_pixels_replaced"] = state.nonfinite_replaced
    summary["seconds"] = time.perf_counter() - started
    return summary


def _store_records(out: Path, config: CorpusConfig, state: BuildState, plan: ResumePlan) -> int:
    """Convert, caption and store every listed record that no finished shard holds; returns how many."""
    captioner_cache: dict[tuple, Captioner] = {}
    suffix = "arrow" if config.format == "arrow" else "tar"
    rows: list[dict] = []
    started = time.perf_counter()
    written = listed = 0
    for position, (spec, record, listing, key) in enumerate(_all_keyed_records(config)):
        _check_listed(plan, position, spec, record, key)
        listed = position + 1
        if plan.written[position]:
            continue  # in a finished shard; listing records is cheap, pixels are not read
        rows.append(_make_row(spec, record, listing, config, captioner_cache, key))
        written += 1
        if len(rows) == config.shard_size:
            _flush(out, state, rows, suffix, config.format)
            rows = []
        if written % config.progress_every == 0:
            rate = written / (time.perf_counter() - started)
            log.info("build-corpus: %d images this run (%.0f/s), %d of %d listed", written, rate, listed,
                     len(plan.keys))
    if listed != len(plan.keys):
        raise SourceChangedError(f"{out}: the sources listed {len(plan.keys)} records when the build started and "
                                 f"{listed} now; a source changed during the build: run it again to resume")
    if rows:
        _flush(out, state, rows, suffix, config.format)
    return written


def _all_keyed_records(config: CorpusConfig) -> Iterator[tuple[CorpusSource, SARRecord, SourceListing, str]]:
    for index, spec in enumerate(config.sources):
        for record, listing, key in _keyed_records(config, index):
            yield spec, record, listing, key


def _check_listed(plan: ResumePlan, position: int, spec: CorpusSource, record: SARRecord, key: str) -> None:
    """The build pass must list what the up-front listing did (the resume plan is by position)."""
    if position >= len(plan.keys) or plan.keys[position] != key.encode("ascii"):
        raise SourceChangedError(
            f"{spec.name} at {spec.root}: record {record.key!r} is listed at position {position}, where the listing "
            "at the start of the build had another record; a source changed during the build: run it again to "
            "resume"
        )


def _flush(out: Path, state: BuildState, rows: list[dict], suffix: str, fmt: str) -> None:
    index = len(state.shards)
    name = f"shard-{index:05d}.{suffix}"
    _write_shard(rows, out / "shards" / name, fmt)
    # Side file with everything but pixels, so finalising never decodes images (and works for tar shards), and
    # each record's fingerprint, so a resumed build can tell whether the source still lists it unchanged.
    _write_table(pa.Table.from_pylist(rows, schema=META_SCHEMA), out / "shards" / _meta_file(name))
    state.shards.append({"file": name, "records": len(rows), "first": state.records_done,
                         "nonfinite_replaced": sum(row["nonfinite_replaced"] for row in rows)})
    _save_state(out, state)


def _remove_unfinished_shards(out: Path, state: BuildState) -> None:
    """Remove shard files build_state.json does not list, and their temporary files: a build killed after writing
    a shard but before saving the state leaves one; the resumed build usually writes that index again, but not
    when it has fewer shards left to write."""
    finished = {name for s in state.shards for name in (s["file"], _meta_file(s["file"]))}
    for path in sorted((out / "shards").iterdir()):
        temp = _SHARD_TEMP.fullmatch(path.name)
        name = temp.group(1) if temp else path.name
        if name in finished or not (temp or _SHARD_FILE.fullmatch(name)):
            continue
        if not temp:
            path.unlink(missing_ok=True)
        remove_stale_temps(out / "shards" / name, older_than_s=_STALE_AFTER_S)


def _make_row(
    spec: CorpusSource, record: SARRecord, listing: SourceListing, config: CorpusConfig, captioners: dict, key: str
) -> dict:
    """One shard row, plus ``record_fingerprint`` (side file only) and ``nonfinite_replaced`` (state only)."""
    # Keyed by what the captioner depends on: two roots of one source may resolve different vocabularies.
    vocabulary = listing.vocabulary
    wording = (listing.source, spec.n_captions, vocabulary.fields, tuple(sorted(vocabulary.nouns.items())))
    if wording not in captioners:
        captioners[wording] = listing.captioner(config.caption_styles, spec.n_captions, config.seed)
    pixels, nonfinite = convert_record(record, listing.policy, config.max_side)
    captions, styles = captions_and_styles(captioners[wording], record)
    return {
        "key": key,
        "source": record.source,
        "source_id": record.source_id,
        "split": record.split,
        "png": encode_png(pixels),
        "channels": int(pixels.shape[0]),
        "captions": captions,
        "styles": styles,
        "labels": list(record.labels) or sorted({b.label for b in record.boxes}),
        "metadata": json.dumps(record.metadata, sort_keys=True, default=metadata_json_default),
        "image_hash": content_hash(pixels),
        "phash": perceptual_hash(pixels.astype(np.float32) / 255.0),
        "record_fingerprint": record_fingerprint(record),
        "nonfinite_replaced": nonfinite,
    }


def content_key(record: SARRecord, salt: str = "") -> str:
    """The corpus key of ``record``: a digest of ``source:source_id`` (+ ``salt``, see :func:`_key_salts`)."""
    return hashlib.sha1((record.key + salt).encode()).hexdigest()[:KEY_CHARS]


def captions_and_styles(captioner: Captioner, record: SARRecord) -> tuple[list[str], list[str]]:
    pairs = captioner.captions_with_styles(record)
    return [c for c, _ in pairs], [s for _, s in pairs]


# ---------------------------------------------------------------------------------------------- decide
class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_duplicate_groups(phashes: np.ndarray, image_hashes: list[str], max_distance: int) -> np.ndarray:
    """Group ids: identical pixels, or perceptual hashes within ``max_distance`` bits (multi-index search:
    with ``max_distance + 1`` bands, two hashes that close share at least one band exactly)."""
    n = len(phashes)
    uf = _UnionFind(n)
    first_of: dict[str, int] = {}
    for i, h in enumerate(image_hashes):
        if h in first_of:
            uf.union(first_of[h], i)
        else:
            first_of[h] = i
    if max_distance >= 0 and n:
        bands = max_distance + 1
        width = 64 // bands
        values = phashes.astype(np.uint64)
        for b in range(bands):
            bits = width if b < bands - 1 else 64 - b * width
            keys = (values >> np.uint64(b * width)) & np.uint64((1 << bits) - 1)
            order = np.argsort(keys, kind="stable")
            sorted_keys = keys[order]
            # Runs of equal band value (sorted, not a dict of lists: memory stays a few arrays per band).
            starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
            ends = np.r_[starts[1:], n]
            for lo, hi in zip(starts[ends - starts > 1].tolist(), ends[ends - starts > 1].tolist(), strict=True):
                members = order[lo:hi].tolist()
                for x_pos, x in enumerate(members):
                    for y in members[x_pos + 1 :]:
                        if uf.find(x) != uf.find(y) and bin(int(values[x]) ^ int(values[y])).count("1") <= max_distance:
                            uf.union(x, y)
    return np.array([uf.find(i) for i in range(n)], dtype=np.int64)


def decide(images: pa.Table, max_distance: int) -> tuple[list[str], np.ndarray]:
    """Per image: ``kept`` / ``leak`` / ``duplicate``, and its near-duplicate group id."""
    splits = images.column("split").to_pylist()
    groups = near_duplicate_groups(
        np.array(images.column("phash").to_pylist(), dtype=np.uint64), images.column("image_hash").to_pylist(),
        max_distance,
    )
    best_split: dict[int, int] = {}
    for g, s in zip(groups.tolist(), splits, strict=True):
        best_split[g] = min(best_split.get(g, 9), SPLIT_RANK[s])
    status = []
    first_kept: set[int] = set()
    for g, s in zip(groups.tolist(), splits, strict=True):
        if SPLIT_RANK[s] > best_split[g]:
            status.append("leak")
        elif g in first_kept:
            status.append("duplicate")
        else:
            first_kept.add(g)
            status.append("kept")
    return status, groups


def _meta_file(shard_file: str) -> str:
    return shard_file.rsplit(".", 1)[0] + ".meta.parquet"


def finalize(out: Path, config: CorpusConfig, state: BuildState) -> dict[str, Any]:
    """Decide, then write manifest, variants and stats (each atomically) from the shards' side files."""
    # Only the columns the decision and the manifest need: captions and metadata stay in the shards.
    needed = ["key", "source", "source_id", "split", "styles", "image_hash", "phash"]
    metas = [pq.read_table(out / "shards" / _meta_file(s["file"]), columns=needed) for s in state.shards]
    images = pa.concat_tables(metas) if metas else pa.schema([SHARD_SCHEMA.field(n) for n in needed]).empty_table()
    status, groups = decide(images, config.phash_distance)
    # Per image: where it is stored, its decision and group. Expanded to one row per caption with Arrow
    # kernels (no per-pair Python objects), so finalising stays cheap at millions of pairs.
    shard_of = pa.array([s["file"] for s in state.shards for _ in range(s["records"])], pa.string())
    row_of = pa.array(np.concatenate([np.arange(s["records"]) for s in state.shards]) if state.shards else [],
                      pa.int64())
    per_image = {
        "source": images.column("source"), "source_id": images.column("source_id"), "key": images.column("key"),
        "split": images.column("split"), "image_hash": images.column("image_hash"), "phash": images.column("phash"),
        "group": pa.array(groups, pa.int64()), "shard": shard_of, "row": row_of,
        "status": pa.array(status, pa.string()),
    }
    styles = images.column("styles").combine_chunks() if images.num_rows else pa.array([], pa.list_(pa.string()))
    counts = pc.list_value_length(styles).to_numpy(zero_copy_only=False).astype(np.int64)
    repeat = pa.array(np.repeat(np.arange(images.num_rows), counts), pa.int64())
    caption_index = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    columns = {name: pc.take(column, repeat) for name, column in per_image.items()}
    columns["caption_index"] = pa.array(caption_index, pa.int32())
    columns["caption_style"] = pc.list_flatten(styles)
    manifest = pa.table([columns[name] for name in MANIFEST_SCHEMA.names], schema=MANIFEST_SCHEMA)
    _write_table(manifest, out / "manifest.parquet")
    variants_dir = out / "variants"
    variants_dir.mkdir(exist_ok=True)
    variant_counts = {}
    for name, held in config.held_out.items():
        held_groups = pc.unique(pc.filter(per_image["group"], pc.is_in(per_image["source"], pa.array(held))))
        keep = pc.and_(pc.equal(manifest.column("status"), "kept"),
                       pc.invert(pc.is_in(manifest.column("group"), held_groups)))
        variant = manifest.filter(keep)
        _write_table(variant, variants_dir / f"{name}.parquet")
        variant_counts[name] = variant.num_rows
    stats = corpus_stats(manifest)
    _write_text(out / "stats.md", stats_markdown(stats))
    return {"output": str(out), "images": images.num_rows, "pairs": manifest.num_rows, "status": dict(Counter(status)),
            "variants": variant_counts, "stats": stats}


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
    columns = ["train_images", "train_captions", "val_images", "val_captions", "test_pairs"]
    header = "| Dataset | # Train Imgs | # Train Caps | # Val Imgs | # Val Caps | # Test Pairs |"
    lines = [header, "|---|---:|---:|---:|---:|---:|"]
    totals = Counter()
    for source in sorted(stats):
        values = [stats[source].get(c, 0) for c in columns]
        totals.update(dict(zip(columns, values, strict=True)))
        lines.append(f"| {source} | " + " | ".join(f"{v:,}" for v in values) + " |")
    lines.append("| **total** | " + " | ".join(f"**{totals.get(c, 0):,}**" for c in columns) + " |")
    return "\n".join(lines) + "\n"

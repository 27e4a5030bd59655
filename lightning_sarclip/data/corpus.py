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
    stats.md                       per-source table shaped like the paper's (train/val images and captions, test pairs),
                                   beside the ``reference`` table when the config names one, and each variant's leakage
    build_state.json               progress, for resuming
    rewriter_cache/                the caption rewriter's answers, when the config has one (``rewriter_cache``
                                   puts them elsewhere; :mod:`~lightning_sarclip.data.rewriters`)

The build is three modules, one job each (the names that moved out of this one are importable from here too):

* :mod:`lightning_sarclip.data.corpus_config`: what a config is (:class:`CorpusConfig`, :class:`CorpusSource`) and
  the checks it passes before anything is written (:func:`validate_config`, :class:`CorpusConfigError`);
* :mod:`lightning_sarclip.data.corpus_resume`: the records the sources list and their keys, the up-front survey of
  them (:func:`survey_sources`), and the matching of an unfinished build's stored rows with that survey
  (:func:`~lightning_sarclip.data.corpus_resume.resume_plan`, :class:`SourceChangedError`);
* this module: converting, hashing and storing images in shards, the build state, and finalising (decisions,
  manifest, variants, stats): :func:`build_corpus`.

How it works, and why:

0. **Check first.** Every config value is checked, every source's reader is constructed for every split and its
   records are listed (metadata only, no pixels) before the output folder is created: a typo, a missing root, a
   bad option, an empty source or a record key listed twice is reported, all of them at once
   (:class:`CorpusConfigError`; :mod:`~lightning_sarclip.data.corpus_config` checks the config and constructs the
   readers, :func:`~lightning_sarclip.data.corpus_resume.survey_sources` lists the records), not after hours of
   work on the sources listed before it. Only the records' keys (20 bytes each) are kept; the build pass lists
   the sources again. Rerunning a finished build only finalises it again, without reading its sources.
1. **Stream and store.** Sources are read in config order, records in each reader's deterministic order. Each image
   is read once, converted by its source's policy to [0, 1], bounded to ``max_side``, stored as an 8-bit PNG
   (1 channel ``L``, colour images as their luminance; 2 channels VV/VH as ``LA``), hashed (``image_hash``: BLAKE2b of the stored pixels;
   ``phash``: 64-bit DCT perceptual hash) and captioned (then rewritten, when the config names a ``rewriter``:
   each answer is cached on disk, so a resumed build or a rebuild with the same cache does not ask again). Shards are written to a temporary name and renamed, and
   ``build_state.json`` is replaced atomically after each shard (:mod:`lightning_sarclip.utils.atomic`). A
   killed build resumes by key (:mod:`~lightning_sarclip.data.corpus_resume`): each finished shard's
   ``.meta.parquet`` side file holds its rows' keys and a fingerprint of each record (path, split, labels,
   metadata, captions), so the rerun stores exactly the records not stored yet (an image added since is stored
   once) and refuses (:class:`SourceChangedError`) when a stored record is no longer listed or is listed
   differently, instead of leaving it behind silently. A killed build's
   temporary files are removed when their destinations are written again. Memory is one shard's rows plus the
   listed keys. Non-finite pixels that a policy replaced (``nonfinite: zero``) are counted per shard in
   ``build_state.json`` and reported (``nonfinite_pixels_replaced``).
2. **Decide.** From the stored hashes (and, for candidate pairs only, the stored pixels): identical pixels, or
   perceptual hashes within ``phash_distance`` bits whose pixels agree (``min_pixel_correlation``), are one group
   (:mod:`~lightning_sarclip.data.corpus_dedup`; SARDet-100K, SARLANG-1M and others re-publish the same images).
   In a group, test beats val beats train: an image that is in any test split never reaches train or val, and one
   in val never reaches train (``status`` ``leak``); among copies in the same split the first source wins
   (``duplicate``). Sources without official splits (``split: all``) are split by a stable hash of their
   ``source_id`` (or a ``group_by`` metadata key, so that e.g. SAMPLE's measured/simulated pairs stay together).
3. **Variants.** ``held_out: {wo_mstar: [mstar]}`` writes the kept pairs minus every group that contains an
   image of the held-out sources, so a near-duplicate re-published elsewhere cannot leak it back.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from lightning_sarclip.data.captions import Captioner
from lightning_sarclip.data.corpus_config import (
    FORMATS,
    MIN_MAX_SIDE,
    CorpusConfig,
    CorpusConfigError,
    CorpusSource,
    config_problems,
    reader_problems,
    validate_config,
)
from lightning_sarclip.data.corpus_dedup import PixelLoader, near_duplicate_groups
from lightning_sarclip.data.corpus_report import corpus_stats, leakage_counts, report_markdown, stats_markdown
from lightning_sarclip.data.corpus_resume import (
    KEY_CHARS,
    ResumePlan,
    SourceChangedError,
    SourceSurvey,
    content_key,
    iter_records,
    keyed_records,
    meta_file,
    record_fingerprint,
    resume_plan,
    split_of,
    survey_sources,
)
from lightning_sarclip.data.image import is_colour
from lightning_sarclip.data.io import read_sar
from lightning_sarclip.data.listing import SourceListing
from lightning_sarclip.data.records import SARRecord, metadata_json_default
from lightning_sarclip.data.rewriters import CachedRewriter
from lightning_sarclip.data.transforms import model_array
from lightning_sarclip.utils.atomic import atomic_open, atomic_path, remove_stale_temps

#: Public names, including those defined in :mod:`~lightning_sarclip.data.corpus_config` and
#: :mod:`~lightning_sarclip.data.corpus_resume` that this module used to define (re-exported for existing imports).
__all__ = [
    "FORMATS",
    "KEY_CHARS",
    "MANIFEST_SCHEMA",
    "META_SCHEMA",
    "MIN_MAX_SIDE",
    "SHARD_SCHEMA",
    "SPLIT_RANK",
    "STATE_VERSION",
    "BuildState",
    "CorpusConfig",
    "CorpusConfigError",
    "CorpusSource",
    "ResumePlan",
    "SourceChangedError",
    "SourceSurvey",
    "build_corpus",
    "captions_and_styles",
    "config_problems",
    "content_hash",
    "content_key",
    "convert_record",
    "corpus_captioner",
    "corpus_rewriter",
    "corpus_stats",
    "decide",
    "decode_png",
    "encode_png",
    "finalize",
    "iter_records",
    "near_duplicate_groups",
    "perceptual_hash",
    "read_shard",
    "reader_problems",
    "record_fingerprint",
    "split_of",
    "stats_markdown",
    "store_pixels",
    "stored_pixels",
    "survey_sources",
    "validate_config",
]

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


# ---------------------------------------------------------------------------------------------- conversion
def store_pixels(record: SARRecord, policy, max_side: int) -> np.ndarray:
    """Read, convert to [0, 1] and bound the longest side; returns uint8 (C, H, W) with C in {1, 2}."""
    return convert_record(record, policy, max_side)[0]


def convert_record(record: SARRecord, policy, max_side: int) -> tuple[np.ndarray, int]:
    """:func:`store_pixels` and the number of non-finite pixels the policy replaced (a policy with
    ``nonfinite: zero`` counts them in the image's ``meta["nonfinite_replaced"]``; others refuse them)."""
    image = read_sar(record.image)
    # shards hold 1 or 2 channels: a colour image is stored as its luminance (2 bands would be its red and green)
    unit = model_array(image, policy, 1) if is_colour(image) else policy(image)
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


#: Settings added after corpora were built, left out of the config hash at their default (which is what those
#: corpora were built with), so that existing builds still resume and finalise.
_HASHED_UNLESS_DEFAULT = {"drop_prompt_like": True, "rewriter": None}
#: Source entry settings likewise (an existing config's entries hash as they did).
_SOURCE_HASHED_UNLESS_DEFAULT: dict[str, Any] = {"rename_splits": {}}
#: Settings that change no stored shard: they are applied when finalising (decisions, variants, reports), which
#: every run does again from the stored hashes and pixels. Changing them re-decides a corpus instead of refusing
#: it. Builds whose state holds the hash of earlier releases (these settings included) still match
#: (:func:`_config_hashes`).
_FINALIZE_ONLY = ("phash_distance", "min_pixel_correlation", "held_out", "reference")


def _config_hash(config: CorpusConfig) -> str:
    """The hash of everything the stored shards depend on."""
    return _config_hashes(config)[0]


def _config_hashes(config: CorpusConfig) -> tuple[str, str]:
    """The config's hash, and the form of earlier releases (which also hashed ``phash_distance`` and
    ``held_out``), which an existing build's ``build_state.json`` may hold."""
    payload = asdict(config)
    payload.pop("progress_every", None)
    payload.pop("rewriter_cache", None)  # where answers are kept changes no caption
    for name, default in _HASHED_UNLESS_DEFAULT.items():
        if payload.get(name) == default:
            payload.pop(name)
    for source in payload["sources"] if isinstance(payload.get("sources"), list) else []:
        for name, default in _SOURCE_HASHED_UNLESS_DEFAULT.items():
            if isinstance(source, dict) and source.get(name) == default:
                source.pop(name)
    legacy = {k: v for k, v in payload.items() if k not in ("min_pixel_correlation", "reference")}
    current = {k: v for k, v in payload.items() if k not in _FINALIZE_ONLY}
    return _digest(current), _digest(legacy)


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _load_state(out: Path, config: CorpusConfig) -> BuildState:
    """The state of an earlier build in ``out`` (read only: nothing is written before the sources are listed)."""
    path = out / "build_state.json"
    expected, legacy = _config_hashes(config)
    if not path.exists():
        return BuildState(config_hash=expected)
    try:
        data = json.loads(path.read_text())
        state = BuildState(**{"version": 1, **data})  # files without a version predate resuming by key
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: expected a build-corpus state file ({err}); choose another output folder or "
                         "delete it") from err
    if state.config_hash not in (expected, legacy):
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
    rewriter = corpus_rewriter(config)
    if not state.finished:
        plan = resume_plan(out, state.shards, survey_sources(config, fingerprints=bool(state.shards)))
        resumed = int(plan.written.sum())
        if resumed:
            log.info("build-corpus: resuming, %d of %d listed records are stored already", resumed, len(plan.keys))
        (out / "shards").mkdir(parents=True, exist_ok=True)
        written = _store_records(out, config, state, plan, rewriter)
        _remove_unfinished_shards(out, state)
        state.finished = True
        _save_state(out, state)
    summary = finalize(out, config, state)
    summary["images_this_run"] = written
    summary["images_already_stored"] = resumed
    summary["nonfinite_pixels_replaced"] = state.nonfinite_replaced
    if rewriter is not None:
        summary["rewriter"] = {"calls": rewriter.calls, "cached": rewriter.hits, "cache": str(rewriter.folder)}
    summary["seconds"] = time.perf_counter() - started
    return summary


def corpus_rewriter(config: CorpusConfig) -> CachedRewriter | None:
    """The config's caption rewriter behind its cache (``rewriter_cache``, else ``<output>/rewriter_cache``);
    nothing is loaded until a caption is not in the cache."""
    if config.rewriter is None:
        return None
    return CachedRewriter(config.rewriter, config.rewriter_cache or Path(config.output) / "rewriter_cache")


def _store_records(out: Path, config: CorpusConfig, state: BuildState, plan: ResumePlan,
                   rewriter: CachedRewriter | None = None) -> int:
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
        rows.append(_make_row(spec, record, listing, config, captioner_cache, key, rewriter))
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
        for record, listing, key in keyed_records(config, index):
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
    _write_table(pa.Table.from_pylist(rows, schema=META_SCHEMA), out / "shards" / meta_file(name))
    state.shards.append({"file": name, "records": len(rows), "first": state.records_done,
                         "nonfinite_replaced": sum(row["nonfinite_replaced"] for row in rows)})
    _save_state(out, state)


def _remove_unfinished_shards(out: Path, state: BuildState) -> None:
    """Remove shard files build_state.json does not list, and their temporary files: a build killed after writing
    a shard but before saving the state leaves one; the resumed build usually writes that index again, but not
    when it has fewer shards left to write."""
    finished = {name for s in state.shards for name in (s["file"], meta_file(s["file"]))}
    for path in sorted((out / "shards").iterdir()):
        temp = _SHARD_TEMP.fullmatch(path.name)
        name = temp.group(1) if temp else path.name
        if name in finished or not (temp or _SHARD_FILE.fullmatch(name)):
            continue
        if not temp:
            path.unlink(missing_ok=True)
        remove_stale_temps(out / "shards" / name, older_than_s=_STALE_AFTER_S)


def _make_row(
    spec: CorpusSource, record: SARRecord, listing: SourceListing, config: CorpusConfig, captioners: dict, key: str,
    rewriter: CachedRewriter | None = None,
) -> dict:
    """One shard row, plus ``record_fingerprint`` (side file only) and ``nonfinite_replaced`` (state only)."""
    # Keyed by what the captioner depends on: two roots of one source may resolve different vocabularies.
    vocabulary = listing.vocabulary
    wording = (listing.source, spec.n_captions, vocabulary.fields, tuple(sorted(vocabulary.nouns.items())))
    if wording not in captioners:
        captioners[wording] = corpus_captioner(config, spec, listing, rewriter)
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



def corpus_captioner(config: CorpusConfig, spec: CorpusSource, listing: SourceListing,
                     rewriter: CachedRewriter | None = None) -> Captioner:
    """The captioner of ``spec``'s records: the config's styles, seed and prompt filter, the source's vocabulary,
    and the build's rewriter (:func:`corpus_rewriter`), if any."""
    return listing.captioner(config.caption_styles, spec.n_captions, config.seed,
                             drop_prompt_like=config.drop_prompt_like, rewriter=rewriter)


def captions_and_styles(captioner: Captioner, record: SARRecord) -> tuple[list[str], list[str]]:
    pairs = captioner.captions_with_styles(record)
    return [c for c, _ in pairs], [s for _, s in pairs]


# ---------------------------------------------------------------------------------------------- decide
def decide(images: pa.Table, max_distance: int, pixels: PixelLoader | None = None,
           min_correlation: float = 0.0) -> tuple[list[str], np.ndarray]:
    """Per image: ``kept`` / ``leak`` / ``duplicate``, and its near-duplicate group id
    (:func:`~lightning_sarclip.data.corpus_dedup.near_duplicate_groups`: ``pixels`` loads image ``i``'s stored
    pixels to verify a candidate pair)."""
    splits = images.column("split").to_pylist()
    groups = near_duplicate_groups(
        np.array(images.column("phash").to_pylist(), dtype=np.uint64), images.column("image_hash").to_pylist(),
        max_distance, pixels, min_correlation,
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



def stored_pixels(out: Path, state: BuildState) -> PixelLoader:
    """``index -> uint8 (C, H, W)``: the stored pixels of the corpus's ``index``-th image (shards in order), read
    only when asked (a near-duplicate candidate is verified); the last shard read stays open."""
    starts = np.array([s["first"] for s in state.shards], dtype=np.int64)
    opened: dict[str, Any] = {}

    def load(index: int) -> np.ndarray:
        shard = state.shards[int(np.searchsorted(starts, index, side="right")) - 1]
        path = out / "shards" / shard["file"]
        if shard["file"] not in opened:
            opened.clear()
            opened[shard["file"]] = (read_shard(path).column("png") if path.suffix == ".arrow"
                                     else _tar_pngs(path))
        data = opened[shard["file"]][index - shard["first"]]
        data = data.as_py() if hasattr(data, "as_py") else data
        return (decode_png(data) * 255 + 0.5).astype(np.uint8)

    return load


def _tar_pngs(path: Path) -> list[bytes]:
    """The PNGs of a WebDataset shard, in row order."""
    with tarfile.open(path) as tar:
        return [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".png")]  # type: ignore[union-attr]


def finalize(out: Path, config: CorpusConfig, state: BuildState) -> dict[str, Any]:
    """Decide, then write manifest, variants and stats (each atomically) from the shards' side files."""
    # Only the columns the decision and the manifest need: captions and metadata stay in the shards.
    needed = ["key", "source", "source_id", "split", "styles", "image_hash", "phash"]
    metas = [pq.read_table(out / "shards" / meta_file(s["file"]), columns=needed) for s in state.shards]
    images = pa.concat_tables(metas) if metas else pa.schema([SHARD_SCHEMA.field(n) for n in needed]).empty_table()
    pixels = stored_pixels(out, state)
    status, groups = decide(images, config.phash_distance, pixels, config.min_pixel_correlation)
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
    variant_counts, leakage = {}, {}
    for name, held in config.held_out.items():
        held_groups = pc.unique(pc.filter(per_image["group"], pc.is_in(per_image["source"], pa.array(held))))
        keep_image = pc.and_(pc.equal(per_image["status"], "kept"),
                             pc.invert(pc.is_in(per_image["group"], held_groups)))
        variant = manifest.filter(pc.take(keep_image, repeat))
        _write_table(variant, variants_dir / f"{name}.parquet")
        variant_counts[name] = variant.num_rows
        # An independent check of what was just written: train images of the variant that are near-duplicates
        # of a held-out source's images (0 unless the rule or the variant code is wrong).
        leakage[name] = leakage_counts(images, keep_image.to_numpy(zero_copy_only=False), held,
                                       config.phash_distance, pixels, config.min_pixel_correlation)
    stats = corpus_stats(manifest)
    _write_text(out / "stats.md", report_markdown(stats, config.reference, leakage))
    return {"output": str(out), "images": images.num_rows, "pairs": manifest.num_rows, "status": dict(Counter(status)),
            "variants": variant_counts, "leakage": leakage, "stats": stats}

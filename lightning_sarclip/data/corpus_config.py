"""What a ``build-corpus`` config is, and the checks it passes before anything is written.

:class:`CorpusConfig` (the output folder, captioning, storage and de-duplication settings) holds one
:class:`CorpusSource` per source entry (a registered reader, its root and options).
:mod:`lightning_sarclip.data.corpus` builds from them; this module checks them first, before anything is written,
because a build reads its sources for hours: a typo found at the last source would waste every hour spent on the
sources before it, and leave a half-written output folder behind:

* :func:`config_problems`: every value alone, without opening a file: types and ranges (``max_side``,
  ``shard_size``, ``phash_distance`` ...), caption styles, the caption rewriter (its class imported, not
  constructed, and its arguments bound), the output format, each source entry's fields (a
  registered name, a root, options as a mapping, fractions that leave a train share, a known conversion policy,
  splits the reader has, each once), and ``held_out`` variants (file-safe names that hold out sources of this
  config: a misspelt one would hold out nothing).
* :func:`reader_problems`: every source's reader constructed for every split (roots, layouts and options are
  checked; records are not listed yet), skipping entries whose own fields are already wrong.

Every problem is reported, one line each naming its field and what was expected, in one
:class:`CorpusConfigError` (:func:`validate_config`), not one per run. Listing the records themselves (an empty
source, a key listed twice) is :func:`lightning_sarclip.data.corpus_resume.survey_sources`' check.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lightning_sarclip.data.captions import STYLES
from lightning_sarclip.data.corpus_report import REFERENCE_COUNTS
from lightning_sarclip.data.listing import DETECTION_MODES, SourceListing
from lightning_sarclip.data.rewriters import rewriter_problems
from lightning_sarclip.data.sources import get_source
from lightning_sarclip.data.sources.base import DatasetNotFoundError, SourceFormatError
from lightning_sarclip.data.transforms import build_policy

__all__ = [
    "FORMATS",
    "MIN_MAX_SIDE",
    "CorpusConfig",
    "CorpusConfigError",
    "CorpusSource",
    "config_problems",
    "reader_problems",
    "source_listing",
    "source_splits",
    "validate_config",
]

#: Shard formats: Arrow IPC files, or WebDataset tars of ``<key>.png`` + ``<key>.json``.
FORMATS = ("arrow", "webdataset")
#: Smaller stored images make every perceptual hash alike (everything would be a near-duplicate of everything).
MIN_MAX_SIDE = 8


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
        rename_splits: the corpus split that records of a reader split go to, e.g. ``{test: val}`` puts a
            dataset's held-out chips in the corpus's val split (the paper's ATRNet-STAR); others keep theirs.
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
    rename_splits: dict[str, str] = field(default_factory=dict)


@dataclass
class CorpusConfig:
    """What to build: ``output`` folder, ``sources``, captioning, storage and de-duplication settings.

    Captioning: ``caption_styles``, ``seed`` and ``drop_prompt_like`` (drop generated captions that equal a
    zero-shot prompt; on in our recipes, off in the paper's mode: see :mod:`lightning_sarclip.data.captions`);
    ``rewriter`` (``{class_path, init_args}``, an object with ``rewrite(record, captions) -> list[str]`` applied
    last) and ``rewriter_cache`` (the folder of its answers, default ``<output>/rewriter_cache``; share one between
    builds so that a rebuild elsewhere does not call it again): see :mod:`lightning_sarclip.data.rewriters`.

    De-duplication (:mod:`lightning_sarclip.data.corpus_dedup`): images whose perceptual hashes differ by at most
    ``phash_distance`` bits are candidates, a copy when their stored pixels correlate at least
    ``min_pixel_correlation`` once aligned (0: every candidate is a copy, the rule before verification).
    ``reference`` names a published table to print our counts against (``sarvlm1m``:
    :data:`~lightning_sarclip.data.corpus_report.REFERENCE_COUNTS`).
    """

    output: str
    sources: list[CorpusSource]
    caption_styles: list[str] = field(default_factory=lambda: ["general", "complex", "absolute", "relative"])
    seed: int = 0
    max_side: int = 256
    shard_size: int = 1000
    format: str = "arrow"
    phash_distance: int = 3
    min_pixel_correlation: float = 0.9
    held_out: dict[str, list[str]] = field(default_factory=dict)
    progress_every: int = 1000
    drop_prompt_like: bool = True
    rewriter: dict[str, Any] | None = None
    rewriter_cache: str | None = None
    reference: str | None = None


# ---------------------------------------------------------------------------------------------- errors
class CorpusConfigError(ValueError):
    """Every problem of a corpus config found before anything was written, one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"build-corpus config: {len(self.problems)} problem(s), nothing was written:\n{lines}")


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
    if not isinstance(config.drop_prompt_like, bool):
        problems.append(f"drop_prompt_like: expected true or false, got {config.drop_prompt_like!r}")
    problems += rewriter_problems(config.rewriter)
    if config.rewriter_cache is not None and (not isinstance(config.rewriter_cache, str) or not config.rewriter_cache):
        problems.append(f"rewriter_cache: expected null (<output>/rewriter_cache) or a folder, got "
                        f"{config.rewriter_cache!r}")
    # max_side bounds every stored image; shard_size bounds the rows held in memory.
    problems += _int_problems("max_side", config.max_side, MIN_MAX_SIDE)
    problems += _int_problems("shard_size", config.shard_size, 1)
    if config.format not in FORMATS:
        problems.append(f"format: expected one of {list(FORMATS)}, got {config.format!r}")
    problems += _int_problems("phash_distance", config.phash_distance, 0, 64)  # bits of a 64-bit hash
    problems += _int_problems("progress_every", config.progress_every, 1)
    correlation = config.min_pixel_correlation
    if not ((_is_int(correlation) or isinstance(correlation, float)) and 0 <= correlation <= 1):
        problems.append(f"min_pixel_correlation: expected a number in [0, 1] (0: no pixel check), got {correlation!r}")
    if config.reference is not None and config.reference not in REFERENCE_COUNTS:
        problems.append(f"reference: expected null or one of {sorted(REFERENCE_COUNTS)}, got {config.reference!r}")
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
        problems += _rename_problems(where, spec.rename_splits, tuple(source_cls.splits))
    return problems


def _rename_problems(where: str, rename: Any, known: tuple[str, ...]) -> list[str]:
    parts = ("train", "val", "test")
    if (not isinstance(rename, dict) or any(k not in (*known, "all") for k in rename)
            or any(v not in parts for v in rename.values())):
        return [f"{where}.rename_splits: expected a mapping from the reader's splits {[*known, 'all']} to corpus "
                f"splits {list(parts)}, got {rename!r}"]
    return []


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
    for split in source_splits(spec):
        try:
            source_listing(spec, split)
        except Exception as err:  # whatever a reader raises is a problem of this entry: reported with the others
            field_name = "root" if isinstance(err, DatasetNotFoundError | OSError | SourceFormatError) else "options"
            return (f"sources[{index}].{field_name} ({spec.name} at {spec.root}, split {split!r}): "
                    f"{type(err).__name__}: {err}"), err
    return None, None


# ---------------------------------------------------------------------------------------------- readers
def source_splits(spec: CorpusSource) -> list[str]:
    """The splits ``spec`` takes: its ``splits``, or every split its reader has."""
    return list(spec.splits or get_source(spec.name).splits)


def source_listing(spec: CorpusSource, split: str) -> SourceListing:
    """The listing of one split of ``spec`` (constructing it constructs the reader: roots and layouts are checked)."""
    return SourceListing(spec.name, spec.root, split, options=spec.options, policy=spec.policy,
                         detection=spec.detection)

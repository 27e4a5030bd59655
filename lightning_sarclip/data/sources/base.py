"""Base class and registry for source readers (one module per public SAR dataset in this package).

A source reads a dataset root **in the layout its owners distribute** and yields
:class:`~lightning_sarclip.data.records.SARRecord` lazily, one per image, never touching pixels. It fails fast:
a missing root or an unrecognised layout raises :class:`DatasetNotFoundError` naming the expected tree, and a
malformed file raises :class:`SourceFormatError` naming the file, the field and what was expected, except the
quirks the data card lists as known, which are skipped and counted in ``skipped`` (logged at the end).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from lightning_sarclip.data.records import SARRecord

log = logging.getLogger("lightning_sarclip")

SOURCES: dict[str, type[SARSource]] = {}


class DatasetNotFoundError(FileNotFoundError):
    """The root does not hold the dataset in any layout the source knows."""


class SourceFormatError(ValueError):
    """A file of the dataset does not look as the source expects: the message names file, field, expectation."""

    def __init__(self, file: str | Path, field: str, expected: str, found: Any = None) -> None:
        message = f"{file}: field {field!r}: expected {expected}"
        if found is not None:
            message += f", found {found!r}"
        super().__init__(message)
        self.file, self.field, self.expected, self.found = str(file), field, expected, found


def register_source(name: str):
    """Class decorator: make a source available by name (``get_source("mstar")``, configs, corpus builder)."""

    def decorate(cls: type[SARSource]) -> type[SARSource]:
        if name in SOURCES and SOURCES[name] is not cls:
            raise ValueError(f"source name {name!r} is already registered by {SOURCES[name].__name__}")
        cls.name = name
        SOURCES[name] = cls
        return cls

    return decorate


# Importing this module runs ``lightning_sarclip/data/sources/__init__.py`` first, which imports every reader
# module: by the time anyone can call these, the registry is full.
def get_source(name: str) -> type[SARSource]:
    """The reader class registered under ``name``; the error lists the known names."""
    if name not in SOURCES:
        raise ValueError(f"unknown SAR source {name!r}; known sources: {list_sources()}")
    return SOURCES[name]


def list_sources() -> list[str]:
    """The registered source names (timm's ``list_models`` habit)."""
    return sorted(SOURCES)


class SARSource:
    """One public SAR dataset read from its original layout.

    Subclasses set ``name`` (through :func:`register_source`), ``splits``, ``classnames`` (empty when open-ended),
    ``default_policy`` (a :mod:`~lightning_sarclip.data.transforms` policy spec) and implement :meth:`_records`.

    Args:
        root: the folder the user downloaded/unpacked (the data card shows the expected tree).
        split: one of ``splits``; ``"all"`` yields every split.
    """

    name: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    classnames: ClassVar[list[str]] = []
    default_policy: ClassVar[str | dict] = "integer"
    #: ``classification`` (image-level labels) or ``detection`` (boxes; the corpus builder turns them into pairs).
    task: ClassVar[str] = "classification"
    #: metadata keys worth putting into captions; ``None`` = the captioner's defaults (sensor, band, ...).
    caption_fields: ClassVar[tuple[str, ...] | None] = None
    #: class label -> the noun captions use, for labels that are modifiers alone ("Cargo" -> "cargo ship").
    caption_nouns: ClassVar[dict[str, str]] = {}

    def __init__(self, root: str | Path, split: str = "train") -> None:
        self.root = Path(root).expanduser()
        if split != "all" and split not in self.splits:
            raise ValueError(f"{self.name}: split must be one of {self.splits} or 'all', got {split!r}")
        self.split = split
        self.skipped: Counter[str] = Counter()
        if not self.root.exists():
            raise DatasetNotFoundError(f"{self.name}: dataset root not found: {self.root}. {self.expected_layout()}")

    @classmethod
    def expected_layout(cls) -> str:
        """A one-paragraph description of the tree under ``root`` (the data card has the full one)."""
        return f"See data_cards/{cls.name}.md for the expected layout."

    def skip(self, reason: str, file: str | Path | None = None) -> None:
        """Count (and log at debug level) a known quirk that is skipped instead of failing."""
        self.skipped[reason] += 1
        log.debug("%s: skipping %s (%s)", self.name, file, reason)

    def records(self) -> Iterator[SARRecord]:
        """Yield this split's records; logs the skip counts at the end."""
        yield from self._records()
        if self.skipped:
            log.warning("%s (%s): skipped %s", self.name, self.split, dict(self.skipped))

    def _records(self) -> Iterator[SARRecord]:
        raise NotImplementedError

    def wants(self, split: str) -> bool:
        return self.split == "all" or self.split == split

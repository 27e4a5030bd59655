"""Base class and registry for source readers (one module per public SAR dataset in this package).

A source reads a dataset root **in the layout its owners distribute** and yields
:class:`~lightning_sarclip.data.records.SARRecord` lazily, one per image, never touching pixels. It fails fast:
a missing root or an unrecognised layout raises :class:`DatasetNotFoundError` naming the expected tree, and a
malformed file raises :class:`SourceFormatError` naming the file, the field and what was expected, except the
quirks the data card lists as known, which are skipped and counted in ``skipped`` (logged at the end).

Path policy (one for every reader): every file a reader opens or yields must really lie inside ``root`` (after
following symlinks) or inside one of the folders the user names in ``allowed_roots``. A symlink in a downloaded tree
that points elsewhere (``/etc``, the user's home) is refused with a :class:`SourceFormatError` naming the link, its
target and the option, instead of being followed silently. ``root`` itself may be a symlink.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
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
        allowed_roots: further folders whose files may be read through symlinks (or paths in annotation files)
            that leave ``root``; see :meth:`contained`.
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

    def __init__(self, root: str | Path, split: str = "train", *, allowed_roots: Sequence[str | Path] = ()) -> None:
        self.root = Path(root).expanduser()
        if split != "all" and split not in self.splits:
            raise ValueError(f"{self.name}: split must be one of {self.splits} or 'all', got {split!r}")
        self.split = split
        self.skipped: Counter[str] = Counter()
        if not self.root.exists():
            raise DatasetNotFoundError(f"{self.name}: dataset root not found: {self.root}. {self.expected_layout()}")
        self.allowed_roots = _allowed_roots(allowed_roots, self.name)
        # Resolved once: subclasses may move ``self.root`` to a wrapper folder, the policy stays the user's root. A
        # root that is a file (a table) trusts the folder it was named in.
        base = self.root if self.root.is_dir() else self.root.parent
        self._trusted = (base.resolve(), *(p.resolve() for p in self.allowed_roots))
        self._real_dirs: dict[Path, Path] = {}  # folder -> its real path, so a file costs one lstat, not one per part
        self._inside_dirs: set[str] = set()  # folders (as given) whose real path lies inside root or an allowed root

    @classmethod
    def expected_layout(cls) -> str:
        """A one-paragraph description of the tree under ``root`` (the data card has the full one)."""
        return f"See data_cards/{cls.name}.md for the expected layout."

    def skip(self, reason: str, file: str | Path | None = None) -> None:
        """Count (and log at debug level) a known quirk that is skipped instead of failing."""
        self.skipped[reason] += 1
        log.debug("%s: skipping %s (%s)", self.name, file, reason)

    def contained(self, path: str | Path, field: str = "<path>", referenced_by: str | Path | None = None) -> Path:
        """``path`` itself when its real location (symlinks followed) lies inside ``root`` or an allowed root.

        Call it on every file the reader opens or yields (and on folders it walks through symlinks). ``field`` and
        ``referenced_by`` name where the path came from when an annotation file named it (a COCO ``file_name``, a
        table cell); the error then names that file, the path as written and where it really points.
        """
        text = os.fspath(path)
        name = os.path.basename(text)
        if name not in ("", "..") and os.path.dirname(text) in self._inside_dirs and not os.path.islink(text):
            return Path(path)  # a plain file of a folder already known to lie inside: only its own lstat
        path = Path(path)
        try:
            real = self._real_path(path)
        except (OSError, RuntimeError, ValueError) as err:  # a symlink loop, a NUL byte in a table cell
            raise SourceFormatError(referenced_by if referenced_by is not None else path, field,
                                    "a path that resolves (no NUL byte, no symlink loop)",
                                    f"{path} ({type(err).__name__}: {err})") from err
        self._refuse_outside(path, real, field, referenced_by)
        if name not in ("", "..") and not os.path.islink(text):
            folder = os.path.dirname(text)
            real_folder = self._real_dirs.get(Path(folder))
            if real_folder is not None and any(real_folder.is_relative_to(t) for t in self._trusted):
                self._inside_dirs.add(folder)
        return path

    def _real_path(self, path: Path) -> Path:
        """``path.resolve()``, with the folder's resolution cached: the thousands of files of one folder share it."""
        if path.name in ("", "..") or os.path.islink(path):
            return path.resolve()
        folder = path.parent
        real = self._real_dirs.get(folder)
        if real is None:
            real = self._real_dirs[folder] = folder.resolve()
        return real / path.name

    def _refuse_outside(self, path: Path, real: Path, field: str, referenced_by: str | Path | None) -> None:
        if any(real.is_relative_to(trusted) for trusted in self._trusted):
            return
        allowed = f" or in allowed_roots {[str(p) for p in self._trusted[1:]]}" if len(self._trusted) > 1 else ""
        raise SourceFormatError(
            referenced_by if referenced_by is not None else path, field,
            f"a path inside the dataset root {self._trusted[0]}{allowed}; to read it anyway pass "
            f"allowed_roots=[{str(real.parent)!r}]",
            f"{path} -> {real}",
        )

    def walk(self, top: str | Path) -> Iterator[tuple[Path, list[str], list[str]]]:
        """``os.walk(top)`` (sorted) that follows symlinked folders like the rest of the reader does, refuses one
        that leads outside the allowed roots (:meth:`contained`) and visits each real folder once (no loops).

        The caller may prune ``dirnames`` in place, as with ``os.walk``.
        """
        visited: set[Path] = set()
        for folder, dirnames, filenames in os.walk(top, followlinks=True):
            here = Path(folder)
            real = here.resolve()
            self._refuse_outside(here, real, "<folder>", None)
            if real in visited:  # a symlink back to a folder already read: reading it again would loop
                self.skip("folder reached twice through a symlink", here)
                dirnames[:] = []
                continue
            visited.add(real)
            dirnames.sort()
            filenames.sort()
            yield here, dirnames, filenames

    def records(self) -> Iterator[SARRecord]:
        """Yield this split's records; logs the skip counts at the end."""
        yield from self._records()
        if self.skipped:
            log.warning("%s (%s): skipped %s", self.name, self.split, dict(self.skipped))

    def _records(self) -> Iterator[SARRecord]:
        raise NotImplementedError

    def wants(self, split: str) -> bool:
        return self.split == "all" or self.split == split


def _allowed_roots(roots: Sequence[str | Path] | None, name: str) -> tuple[Path, ...]:
    """The ``allowed_roots`` option as paths; a lone string (a common config slip) is refused, not split."""
    if roots is None:  # ``allowed_roots: null`` in a config
        return ()
    if isinstance(roots, (str, os.PathLike)):
        raise ValueError(f"{name}: allowed_roots must be a list of folders, got the single value {roots!r}")
    paths = tuple(Path(p).expanduser() for p in roots)
    for path in paths:
        if not path.is_dir():
            raise ValueError(f"{name}: allowed_roots: {path} is not an existing folder")
    return paths

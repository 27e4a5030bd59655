"""``sarlang``: SARLANG-1M image captions (Wei et al., TGRS 2026), the caption subset SARVLM-1M trains on.

Layout as the README asks users to arrange it (``Text.zip`` unpacked into ``Text/``)::

    <root>/SARimages/<image>              France_Alpes-Maritimes_Nice_3.png, 0009787.jpg (copied from SARDet-100K)
    <root>/Text/caption/Caption-training.csv   train: concise and complex captions mixed
    <root>/Text/caption/Caption_test.csv       test: complex captions
    <root>/Text/caption/Caption_test1.csv      test: concise captions

The CSV column names are **unconfirmed** (no public copy was inspected): the defaults ``image``/``caption`` follow
the project's notes and can be changed with ``image_column=``/``caption_column=``; a file without them fails
naming the columns it has. Rows repeating an image add captions to one record. The SARDet-100K images are not in
the SARLANG download (users copy them into ``SARimages/``), so a caption whose image is absent is a known quirk:
skipped and counted, not an error. Images named like SARDet-100K's (7 digits) carry ``sardet100k_id`` so the
corpus builder can keep SARDet-100K test images out of training.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import ClassVar

from lightning_sarclip.data.records import ImageRef, SARRecord
from lightning_sarclip.data.sources.base import (
    DatasetNotFoundError,
    SARSource,
    SourceFormatError,
    register_source,
)
from lightning_sarclip.data.sources.image_caption_table import read_table, require_columns

CAPTION_DIR = ("Text", "caption")
#: Split -> [(file, caption kind)].
CAPTION_FILES: dict[str, list[tuple[str, str]]] = {
    "train": [("Caption-training.csv", "mixed")],
    "test": [("Caption_test.csv", "complex"), ("Caption_test1.csv", "concise")],
}
TEST_SETS = ("both", "complex", "concise")
_SARDET_NAME = re.compile(r"^(\d{7})\.(jpg|jpeg|png|bmp|tif|tiff)$", re.IGNORECASE)


@register_source("sarlang")
class SARLANG(SARSource):
    """SARLANG-1M caption pairs (train: ``Caption-training.csv``; test: ``Caption_test.csv`` + ``Caption_test1.csv``).

    Args:
        root: the dataset root holding ``SARimages/`` and ``Text/caption/``.
        split: ``train``, ``test`` or ``all``.
        test_set: which test captions: ``"both"`` (default, complex and concise per image), ``"complex"`` or
            ``"concise"``.
        image_column / caption_column: CSV column names (unconfirmed; see the data card).
        allowed_roots: folders outside ``root`` that symlinks may lead to (``SARSource.contained``).
    """

    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    classnames: ClassVar[list[str]] = []
    default_policy: ClassVar[str | dict] = "integer"
    caption_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, root: str | Path, split: str = "train", *, test_set: str = "both",
                 image_column: str = "image", caption_column: str = "caption",
                 allowed_roots: Sequence[str | Path] = ()) -> None:
        super().__init__(root, split, allowed_roots=allowed_roots)
        if test_set not in TEST_SETS:
            raise ValueError(f"{self.name}: test_set must be one of {TEST_SETS}, got {test_set!r}")
        self.test_set = test_set
        self.image_column, self.caption_column = image_column, caption_column
        self.image_dir = self.root / "SARimages"
        self.caption_dir = self.root.joinpath(*CAPTION_DIR)
        if not self.image_dir.is_dir() or not self.caption_dir.is_dir():
            raise DatasetNotFoundError(f"{self.name}: {self.root} lacks SARimages/ or Text/caption/. "
                                       f"{self.expected_layout()}")

    @classmethod
    def expected_layout(cls) -> str:
        return (
            "Expected <root>/SARimages/<images> and <root>/Text/caption/{Caption-training.csv, Caption_test.csv, "
            "Caption_test1.csv} (Text.zip unpacked; SARDet-100K images copied into SARimages/). "
            "See data_cards/sarlang.md."
        )

    def _files(self, split: str) -> list[tuple[str, str]]:
        files = CAPTION_FILES[split]
        if split == "test" and self.test_set != "both":
            files = [f for f in files if f[1] == self.test_set]
        return files

    def _records(self) -> Iterator[SARRecord]:
        images = {p.name for p in self.image_dir.iterdir()}  # one listing instead of a stat per row
        for split in self.splits:
            if not self.wants(split):
                continue
            grouped: dict[str, SARRecord] = {}
            for file_name, kind in self._files(split):
                path = self.caption_dir / file_name
                if not path.is_file():
                    raise DatasetNotFoundError(f"{self.name}: caption file {path} not found. "
                                               f"{self.expected_layout()}")
                self._read(self.contained(path), kind, split, images, grouped)
            yield from grouped.values()

    def _read(self, path: Path, kind: str, split: str, images: set[str],
              grouped: dict[str, SARRecord]) -> None:
        """Add ``path``'s captions to ``grouped`` (an image's captions may span several files)."""
        columns, rows = read_table(path)
        require_columns(path, columns, {"image_column": self.image_column, "caption_column": self.caption_column})
        for row_number, row in rows:
            name = self._image_name(path, row.get(self.image_column) or "", row_number)
            caption = (row.get(self.caption_column) or "").strip()
            if not caption:
                self.skip("empty caption", f"{path}:{row_number}")
                continue
            record = grouped.get(name)
            if record is None:
                if name not in images:
                    self.skip("image not in SARimages/ (SARDet-100K images must be copied there)", name)
                    continue
                metadata: dict = {"caption_kinds": []}
                match = _SARDET_NAME.match(name)
                if match:
                    metadata["sardet100k_id"] = match.group(1)
                image = self.contained(self.image_dir / name, self.image_column, path)
                record = SARRecord(self.name, name, split, ImageRef(str(image)), metadata=metadata)
                grouped[name] = record
            record.captions.append(caption)
            record.metadata["caption_kinds"].append(kind)

    def _image_name(self, path: Path, value: str, row: int) -> str:
        """The file name under ``SARimages/`` (a ``SARimages/`` prefix in the cell is accepted)."""
        text = value.strip().replace("\\", "/")
        parts = PurePosixPath(text).parts
        if parts and parts[0] == "SARimages":
            parts = parts[1:]
        if len(parts) != 1 or parts[0] in ("", ".", "..") or text.startswith("/"):
            raise SourceFormatError(path, self.image_column,
                                    f"an image file name inside SARimages/ (row {row})", value)
        return parts[0]

"""``image_caption_table``: the user's own image-caption pairs in a CSV, TSV or parquet table.

This is the format open_clip's trainer (``--dataset-type csv --csv-img-key imgpath --csv-caption-key caption``)
and SARVLM's released CSVs use, so a user who already has such a table trains on it without conversion. Rows
that repeat an image add captions to it; a caption cell may also hold several captions as a list (parquet), a
JSON list (``["a", "b"]``) or a ``|``-separated string. Image paths are relative to the table's folder (or
absolute) and must really lie inside that folder, or inside a folder named in ``allowed_roots``: a table is data
from elsewhere, and following its paths blindly would read arbitrary files. A CSV/TSV cell holding a line break is
refused: in caption tables it is almost always an unbalanced quote that swallowed the following rows.

Tables are found as follows: ``root`` may be the table file itself; a folder with ``train``/``val``/``test``
tables (``train.csv``, ``val.tsv``, ``test.parquet`` ...) gives one table per split; otherwise the folder must
hold exactly one table, or ``table=`` names it. Without a split column or per-split tables the records have
split ``"all"`` (the corpus builder splits them).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from lightning_sarclip.data.records import ImageRef, SARRecord
from lightning_sarclip.data.sources.base import (
    DatasetNotFoundError,
    SARSource,
    SourceFormatError,
    register_source,
)

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
#: Split names accepted in split columns and per-split file names, mapped to the canonical ones.
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}


#: A table's rows with where they start: the physical line (CSV/TSV, header = line 1) or the 0-based row (parquet).
NumberedRows = list[tuple[int, dict[str, Any]]]


def read_table(path: Path, separator: str | None = None) -> tuple[list[str], NumberedRows]:
    """Column names and numbered rows (dicts) of a CSV/TSV/parquet file; the separator defaults from the suffix."""
    columns, rows = stream_table(path, separator)
    return columns, list(rows)


def stream_table(path: Path, separator: str | None = None) -> tuple[list[str], Iterator[tuple[int, dict[str, Any]]]]:
    """Like :func:`read_table`, the rows as an iterator: a CSV/TSV is read one row at a time (SARVLM-1M's 1.39M
    rows would otherwise be held as 1.39M dicts at once); errors name the file and the row when they are met."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for broken files
            raise SourceFormatError(path, "<file>", "a readable parquet file", f"{type(err).__name__}: {err}") from err
        return list(table.column_names), enumerate(table.to_pylist())
    delimiter = separator or ("\t" if suffix == ".tsv" else ",")
    rows = _text_rows(path, delimiter)
    header = next(rows, None)
    return (header[1] if header is not None else []), rows


def _text_rows(path: Path, delimiter: str) -> Iterator[tuple[int, list[str] | dict[str, Any]]]:
    """The header's cells first, then ``csv.DictReader``-like rows (blank lines skipped, missing cells ``None``),
    each with its first line, checked that no cell spans lines."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            columns: list[str] | None = None
            start = 1
            for cells in reader:
                if cells:
                    _single_line_cells(path, cells, columns, start)
                    if columns is None:
                        columns = cells
                        yield start, cells
                    else:
                        yield start, dict(zip(columns, cells + [None] * (len(columns) - len(cells)), strict=False))
                start = reader.line_num + 1
    except UnicodeDecodeError as err:
        raise SourceFormatError(path, "<file>", "UTF-8 text", str(err)) from err
    except csv.Error as err:
        raise SourceFormatError(path, "<file>", f"a {delimiter!r}-separated table", str(err)) from err


def _single_line_cells(path: Path, cells: list[str], columns: list[str] | None, line: int) -> None:
    for index, cell in enumerate(cells):
        if "\n" in cell or "\r" in cell:
            name = columns[index] if columns is not None and index < len(columns) else f"#{index + 1}"
            where = f"header, column {index + 1}" if columns is None else f"{name} (row {line})"
            raise SourceFormatError(
                path, where,
                "a cell on one line (a line break inside a cell is nearly always an unbalanced quote that joined "
                "the following lines into it; check the quotes on this line)",
                cell if len(cell) <= 120 else f"{cell[:120]}...",
            )


def require_columns(path: Path, columns: list[str], wanted: dict[str, str | None]) -> None:
    """Fail with the file, the option that names the column, and the columns the file really has."""
    for option, column in wanted.items():
        if column is not None and column not in columns:
            raise SourceFormatError(path, column, f"a column {column!r} (set {option}=...)", f"columns {columns}")


def split_cell(value: Any, separator: str | None) -> list[str]:
    """Texts in a cell: a list (parquet), a JSON list string, a ``separator``-joined string or one string."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        items = value
    else:
        text = str(value).strip()
        items = None
        if text.startswith("[") and text.endswith("]"):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                parsed = None
            if isinstance(parsed, list):
                items = parsed
        if items is None:
            items = text.split(separator) if separator else [text]
    return [str(item).strip() for item in items if item is not None and str(item).strip()]


def image_path(base: Path, value: Any, table: Path, row: int, column: str) -> Path:
    """The image path of a table cell: absolute, or relative to ``base`` (the table's folder). Where it really
    lies is checked by the reader's path policy (:meth:`SARSource.contained`)."""
    text = str(value).strip().replace("\\", "/")
    if not text:
        raise SourceFormatError(table, column, f"an image path (row {row})", value)
    pure = PurePosixPath(text)
    return Path(text) if pure.is_absolute() or Path(text).is_absolute() else base.joinpath(*pure.parts)


@register_source("image_caption_table")
class ImageCaptionTable(SARSource):
    """Image-caption pairs from a CSV/TSV/parquet table (open_clip / SARVLM style).

    Args:
        root: the table file, or a folder with per-split tables or exactly one table.
        split: ``train``/``val``/``test``, or ``all``.
        table: table file name inside ``root`` (when the folder holds several).
        image_column: column with image paths (relative to the table's folder).
        caption_column: column with captions.
        split_column: optional column with ``train``/``val``/``test`` (``valid``/``validation`` accepted).
        label_column: optional class-label column (``|``-separated for several labels).
        separator: CSV field separator; default ``,`` for ``.csv`` and tab for ``.tsv``.
        caption_separator: splits several captions in one cell (``None`` disables).
        image_format: reader name when suffixes do not tell (see :func:`lightning_sarclip.data.io.format_of`).
        allowed_roots: folders outside the table's folder whose images the table may name (absolute paths,
            ``..``, symlinks); ``["/"]`` trusts the table entirely.
        missing_images: ``"error"`` (default) or ``"skip"`` (counted) for rows whose image file does not exist.
    """

    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    classnames: ClassVar[list[str]] = []
    default_policy: ClassVar[str | dict] = "integer"
    caption_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        table: str | None = None,
        image_column: str = "imgpath",
        caption_column: str = "caption",
        split_column: str | None = None,
        label_column: str | None = None,
        separator: str | None = None,
        caption_separator: str | None = "|",
        image_format: str | None = None,
        allowed_roots: Sequence[str | Path] = (),
        missing_images: str = "error",
    ) -> None:
        super().__init__(root, split, allowed_roots=allowed_roots)
        if missing_images not in ("error", "skip"):
            raise ValueError(f"{self.name}: missing_images must be 'error' or 'skip', got {missing_images!r}")
        self.table = table
        self.image_column, self.caption_column = image_column, caption_column
        self.split_column, self.label_column = split_column, label_column
        self.separator, self.caption_separator = separator, caption_separator
        self.image_format = image_format
        self.missing_images = missing_images
        self.tables = self._find_tables()

    @classmethod
    def expected_layout(cls) -> str:
        return (
            "Expected a CSV/TSV/parquet table (root=<file>), a folder with train/val/test tables "
            "(train.csv, val.csv ...), or a folder holding exactly one table (or pass table=<name>); image paths "
            "in the table are relative to the table's folder. See data_cards/image_caption_table.md."
        )

    def _find_tables(self) -> dict[str, Path]:
        """``{split or "all": table}``."""
        root = self.root
        if root.is_file():
            if root.suffix.lower() not in TABLE_SUFFIXES:
                raise DatasetNotFoundError(f"{self.name}: {root} is not a {TABLE_SUFFIXES} table. "
                                           f"{self.expected_layout()}")
            return {"all": root}
        if self.table is not None:
            path = root / self.table
            if not path.is_file():
                raise DatasetNotFoundError(f"{self.name}: table {path} not found. {self.expected_layout()}")
            return {"all": self.contained(path, "table")}
        tables = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES)
        per_split: dict[str, Path] = {}
        for path in tables:
            split = SPLIT_ALIASES.get(path.stem.lower())
            if split is not None:
                if split in per_split:
                    raise DatasetNotFoundError(
                        f"{self.name}: two tables for split {split!r} in {root}: {per_split[split].name}, "
                        f"{path.name}; pass table=<name>"
                    )
                per_split[split] = path
        if per_split:
            return {split: self.contained(path) for split, path in per_split.items()}
        if len(tables) == 1:
            return {"all": self.contained(tables[0])}
        found = [p.name for p in tables] or "no table"
        raise DatasetNotFoundError(
            f"{self.name}: cannot choose a table in {root} (found {found}). {self.expected_layout()}"
        )

    def _records(self) -> Iterator[SARRecord]:
        for file_split, path in self.tables.items():
            if file_split != "all" and not self.wants(file_split):
                continue
            yield from self._table_records(path, file_split)

    def _table_records(self, path: Path, file_split: str) -> Iterator[SARRecord]:
        columns, rows = stream_table(path, self.separator)
        require_columns(path, columns, {"image_column": self.image_column, "caption_column": self.caption_column,
                                        "split_column": self.split_column, "label_column": self.label_column})
        base = path.parent
        grouped: dict[tuple[str, str], SARRecord] = {}
        # a table repeats each image once per caption (SARVLM-1M: about 5 rows an image): its path is resolved,
        # contained and named once per distinct cell, not once per row (that is most of a 1.39M-row listing)
        located: dict[str, tuple[Path, str]] = {}
        for row_number, row in rows:
            split = file_split
            if self.split_column is not None:
                raw = str(row.get(self.split_column) or "").strip().lower()
                if raw not in SPLIT_ALIASES:
                    raise SourceFormatError(path, self.split_column,
                                            f"one of {sorted(SPLIT_ALIASES)} (row {row_number})", raw)
                split = SPLIT_ALIASES[raw]
            if not self.wants(split):
                continue
            cell = row.get(self.image_column) or ""
            where = located.get(cell) if isinstance(cell, str) else None
            if where is None:
                image = image_path(base, cell, path, row_number, self.image_column)
                self.contained(image, f"{self.image_column} (row {row_number})", path)
                where = (image, self._source_id(image, base))
                if isinstance(cell, str):
                    located[cell] = where
            image, source_id = where
            captions = split_cell(row.get(self.caption_column), self.caption_separator)
            if not captions:
                self.skip("empty caption", f"{path}:{row_number}")
                continue
            labels = split_cell(row.get(self.label_column), "|") if self.label_column else []
            key = (split, source_id)
            record = grouped.get(key)
            if record is None:
                if not image.is_file():
                    if self.missing_images == "skip":
                        self.skip("image file missing", image)
                        continue
                    raise SourceFormatError(path, self.image_column,
                                            f"an existing image file (row {row_number})", str(image))
                # ``imgpath`` as the table spells it: a retrieval sample file drawn from this table (SARVLM's
                # released one holds the authors' absolute paths) names images by it, not by the source id.
                record = SARRecord(self.name, source_id, split,
                                   ImageRef(str(image), format=self.image_format),
                                   metadata={"table": path.name, "imgpath": str(row.get(self.image_column)).strip()})
                grouped[key] = record
            record.captions.extend(captions)
            record.labels.extend(label for label in labels if label not in record.labels)
        yield from grouped.values()

    @staticmethod
    def _source_id(image: Path, base: Path) -> str:
        try:
            return image.relative_to(base).as_posix()
        except ValueError:
            return image.as_posix()

"""FUSAR-Ship 1.0 (Fudan): Gaofen-3 C-band ship chips, 15 categories / 98 sub-categories, AIS-matched.

Read from the distributed tree ``FUSAR_Ship1.0/<Category>/<SubCategory>/Ship_CxxSyyNzzzz.tiff`` and its
``meta.csv`` (id, mmsi, length, width, polarMode, centerLookAngle, heightspace, widthspace, path; the path
uses backslashes and the delimiter is sniffed because the README shows tabs). The label is the category
folder; ``label_level="subcategory"`` labels by sub-category instead (an open class list). Folders that are
not among the 15 confirmed categories (the non-ship clutter samples, whose folder names are unconfirmed) are
counted and skipped, not guessed.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from lightning_sarclip.data.records import ImageRef, SARRecord
from lightning_sarclip.data.sources._metadata import ANGLE_0_90, POSITIVE, checked_number
from lightning_sarclip.data.sources.base import (
    DatasetNotFoundError,
    SARSource,
    SourceFormatError,
    log,
    register_source,
)

TOP = "FUSAR_Ship1.0"
CATEGORIES = [
    "Cargo", "DiveVessel", "Dredger", "Fishing", "HighSpeedCraft", "LawEnforce", "Other", "Passenger",
    "PortTender", "Reserved", "SAR", "Tanker", "Tug", "Unspecified", "WingInGrnd",
]
#: Caption-ready names for the category folders whose CamelCase split would read badly.
CATEGORY_NAMES = {
    "DiveVessel": "diving vessel", "HighSpeedCraft": "high-speed craft", "LawEnforce": "law enforcement vessel",
    "PortTender": "port tender", "SAR": "search and rescue vessel", "WingInGrnd": "wing-in-ground craft",
}
META_COLUMNS = ("id", "mmsi", "length", "width", "polarMode", "centerLookAngle", "heightspace", "widthspace",
                "path")
_CHIP_RE = re.compile(r"^Ship_C(?P<c>\d+)S(?P<s>\d+)N(?P<n>\d+)\.tiff?$", re.IGNORECASE)


def readable(name: str) -> str:
    """``BulkCarrier`` -> ``bulk carrier`` (category folders use :data:`CATEGORY_NAMES` where set)."""
    if name in CATEGORY_NAMES:
        return CATEGORY_NAMES[name]
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name).lower()


def _number(text: str | None, kind: type = float) -> Any:
    """A finite number from a cell (``None`` when empty, not a number, ``inf`` or ``nan``)."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return kind(value) if kind is int else value


def read_meta_csv(path: Path) -> dict[str, dict[str, str]]:
    """``id -> row`` of ``meta.csv``; the header is required to be the 9 documented columns (any order), or
    absent (then rows are read in the documented order)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise SourceFormatError(path, "header", f"the columns {', '.join(META_COLUMNS)}", "an empty file")
    delimiter = "\t" if "\t" in lines[0] else ("," if "," in lines[0] else (";" if ";" in lines[0] else None))
    rows = [[cell.strip() for cell in row] for row in
            (csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter) if delimiter
             else (line.split() for line in lines))]
    header = [cell.lower() for cell in rows[0]]
    if "id" in header:
        missing = [c for c in META_COLUMNS if c.lower() not in header]
        if missing:
            raise SourceFormatError(path, "header", f"the columns {', '.join(META_COLUMNS)}", rows[0])
        columns, body, first_line = header, rows[1:], 2
    else:
        columns, body, first_line = [c.lower() for c in META_COLUMNS], rows, 1
    table: dict[str, dict[str, str]] = {}
    for line_no, row in enumerate(body, first_line):
        if len(row) != len(columns):
            raise SourceFormatError(path, f"line {line_no}", f"{len(columns)} cells", len(row))
        entry = dict(zip(columns, row, strict=True))
        if not entry["id"]:
            raise SourceFormatError(path, f"line {line_no} id", "a chip id such as Ship_C01S02N0001", entry["id"])
        if entry["id"] in table:
            raise SourceFormatError(path, f"line {line_no} id", "each chip id once", entry["id"])
        table[entry["id"]] = entry
    return table


@register_source("fusar_ship")
class FUSARShip(SARSource):
    """FUSAR-Ship 1.0 chips, one record per ``Ship_*.tiff``.

    Args:
        root: the folder holding ``FUSAR_Ship1.0/`` (or that folder itself).
        split: only ``"all"``: there is no official split.
        label_level: ``"category"`` (15 classes, default) or ``"subcategory"`` (folder names, open-ended).
        allowed_roots: folders outside ``root`` that symlinks may lead to (``SARSource.contained``).
    """

    splits: ClassVar[tuple[str, ...]] = ("all",)
    classnames: ClassVar[list[str]] = CATEGORIES
    #: Per-chip 1-99 % stretch: the chips' bit depth (8 or 16) and scaling are unconfirmed, and a stretch
    #: gives the same result for an 8-bit display chip and a 16-bit amplitude chip.
    default_policy: ClassVar[str | dict] = {"name": "percentile", "low": 1.0, "high": 99.0, "in_db": False}
    caption_fields: ClassVar[tuple[str, ...]] = ("subcategory", "length_m", "width_m", "look_angle_deg", "sensor",
                                                 "band")

    def __init__(self, root: str | Path, split: str = "all", label_level: str = "category", *,
                 allowed_roots: Sequence[str | Path] = ()) -> None:
        if label_level not in ("category", "subcategory"):
            raise ValueError(f"fusar_ship: label_level must be 'category' or 'subcategory', got {label_level!r}")
        self.label_level = label_level
        self.incomplete: Counter[str] = Counter()
        super().__init__(root, split, allowed_roots=allowed_roots)
        if label_level == "subcategory":
            self.classnames = []  # 98 sub-categories: taken from the folders, not fixed here

    @classmethod
    def expected_layout(cls) -> str:
        return (
            f"Expected {TOP}/<Category>/<SubCategory>/Ship_CxxSyyNzzzz.tiff with Category one of "
            f"{', '.join(CATEGORIES)}, and {TOP}/meta.csv ({', '.join(META_COLUMNS)}); see data_cards/fusar_ship.md."
        )

    def _base(self) -> Path:
        for base in (self.root / TOP, self.root):
            if base.is_dir() and any((base / c).is_dir() for c in CATEGORIES):
                return base
        raise DatasetNotFoundError(f"{self.name}: no category folders under {self.root}. {self.expected_layout()}")

    def records(self) -> Iterator[SARRecord]:
        yield from super().records()
        if self.incomplete:
            log.warning("%s: records kept with incomplete metadata %s", self.name, dict(self.incomplete))

    def _records(self) -> Iterator[SARRecord]:
        base = self._base()
        meta_path = base / "meta.csv"
        if meta_path.is_file():
            meta = read_meta_csv(self.contained(meta_path))
        else:
            meta = {}
            self.incomplete["no meta.csv (no AIS metadata)"] += 1
        seen: set[str] = set()
        for category_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            if category_dir.name not in CATEGORIES:
                self.skip(f"folder {category_dir.name!r} is not a confirmed FUSAR-Ship category", category_dir)
                continue
            for sub_dir in sorted(category_dir.iterdir()):
                if not sub_dir.is_dir():
                    self.skip("file outside a sub-category folder", sub_dir)
                    continue
                for chip in sorted(sub_dir.iterdir()):
                    match = _CHIP_RE.match(chip.name)
                    if not chip.is_file() or match is None:
                        self.skip("file not named Ship_CxxSyyNzzzz.tiff", chip)
                        continue
                    seen.add(chip.stem)
                    yield self._record(base, self.contained(chip), match, meta.get(chip.stem), meta_path)
        for chip_id in sorted(set(meta) - seen):
            self.skip("meta.csv row without an image", f"{meta_path}: {chip_id}")

    def _record(self, base: Path, chip: Path, match: re.Match, row: dict | None, meta_path: Path) -> SARRecord:
        category, subcategory = chip.parent.parent.name, chip.parent.name
        metadata: dict[str, Any] = {
            "sensor": "Gaofen-3", "band": "C", "processing_level": "L1A",
            "category": category, "subcategory": subcategory,
            "category_name": readable(category), "subcategory_name": readable(subcategory),
            "category_index": int(match["c"]), "subcategory_index": int(match["s"]), "sample_index": int(match["n"]),
        }
        if row is None:
            if meta_path.is_file():
                self.incomplete["chip without a meta.csv row (no AIS metadata)"] += 1
        else:
            listed = row["path"].replace("\\", "/").strip("/")
            if listed != f"{category}/{subcategory}":
                raise SourceFormatError(meta_path, f"path of {row['id']}", f"{category}\\{subcategory}",
                                        row["path"])
            mmsi = _number(row["mmsi"], int)
            where = f"{meta_path} ({row['id']})"
            metadata.update({
                "mmsi": mmsi or None,
                # caption numbers: out of range -> dropped and counted; 0 is "not available", as in AIS
                "length_m": checked_number(row["length"], "meta.csv length", POSITIVE, file=where, skip=self.skip,
                                           missing=(0.0,)),
                "width_m": checked_number(row["width"], "meta.csv width", POSITIVE, file=where, skip=self.skip,
                                          missing=(0.0,)),
                "polar_mode": row["polarmode"] or None,
                "look_angle_deg": checked_number(row["centerlookangle"], "meta.csv centerLookAngle", ANGLE_0_90,
                                                 file=where, skip=self.skip),
                "pixel_spacing_height_m": _number(row["heightspace"]),
                "pixel_spacing_width_m": _number(row["widthspace"]),
            })
        return SARRecord(
            source=self.name,
            source_id=chip.relative_to(base).as_posix(),
            split="all",
            image=ImageRef(str(chip)),
            labels=[category if self.label_level == "category" else subcategory],
            metadata=metadata,
        )

"""MSTAR target chips (Sandia X-band airborne SAR, HH, 0.3 m): the 10-class SOC benchmark.

Three layouts are read (``layout=``, auto-detected when ``None``):

``sdms``
    The AFRL SDMS CD trees as unpacked (``MSTAR_PUBLIC_MIXED_TARGETS_CD1/15_DEG/COL2/SCENE1/2S1/HB14931.000``,
    ``MSTAR_PUBLIC_TARGETS_CHIPS_T72_BMP2_BTR70_SLICY/TARGETS/TRAIN/17_DEG/BMP2/SN_9563/HB03333.000`` ...), raw
    Phoenix files. Class, serial, angles come from each file's header (its first kilobytes only); the split from
    ``DesiredDepression`` under a protocol: ``soc`` (17 deg train / 15 deg test, BMP2 SN_9563 and T72 SN_132
    only), ``soc_all_serials`` (as ``soc`` but every BMP2/T72 serial of the TARGETS CD in the test set) or
    ``all`` (every target chip at every depression, split ``all``). Side files (``.JPG``, ``.HTM``, ``.hdr``) and
    the clutter CDs are skipped and counted.
``jpeg_folders``
    Redistributions of 8-bit chips in class folders: ``<root>/{train,test|val}/<class>/*.jpeg`` where ``<class>``
    is a name (``BMP2``, ``BRDM_2``, ``ZSU234`` ...) or the index 0-9 into :data:`SOC_CLASSES` (the alphabetical
    order used by e.g. hunterlew/mstar_deeplearning_project). ``val`` is the 15 deg SOC test set.
``raw_folders``
    The same class-folder tree holding raw Phoenix files (``soc_complex/{train,test}/<class>/HB14931.000``).

The default policy is a fixed dB window for raw magnitude and :class:`IntegerScale` for 8-bit chips, so it is set
per instance from the layout (``self.default_policy``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from lightning_sarclip.data.formats import parse_mstar_header  # importing it registers mstar_raw and mat
from lightning_sarclip.data.io import SARReadError
from lightning_sarclip.data.records import ImageRef, SARRecord
from lightning_sarclip.data.sources._metadata import (
    ANGLE_0_90,
    ANGLE_0_360,
    POSITIVE,
    NumberRange,
    SkipFn,
    checked_number,
)
from lightning_sarclip.data.sources.base import (
    DatasetNotFoundError,
    SARSource,
    SourceFormatError,
    register_source,
)

#: The 10 SOC classes; the position is the class index used by index-named folder redistributions.
SOC_CLASSES = ["2S1", "BMP2", "BRDM_2", "BTR60", "BTR70", "D7", "T62", "T72", "ZIL131", "ZSU_23_4"]
#: Header ``TargetType`` values (confirmed spellings) -> canonical class.
TARGET_TYPES = {
    "2s1_gun": "2S1", "bmp2_tank": "BMP2", "brdm2_truck": "BRDM_2", "btr60_transport": "BTR60",
    "btr70_transport": "BTR70", "d7_bulldozer": "D7", "t62_tank": "T62", "t72_tank": "T72",
    "zil131_truck": "ZIL131", "zsu23-4_gun": "ZSU_23_4", "slicey": "SLICY",
}
#: Folder names and TargetType stems, upper-cased with everything but letters and digits removed -> class.
ALIASES = {
    "2S1": "2S1", "BMP2": "BMP2", "BRDM2": "BRDM_2", "BTR60": "BTR60", "BTR70": "BTR70", "D7": "D7", "T62": "T62",
    "T72": "T72", "ZIL131": "ZIL131", "ZSU234": "ZSU_23_4", "SLICY": "SLICY", "SLICEY": "SLICY",
}
#: SOC serials: the standard protocol trains and tests on one serial per class with several.
SOC_SERIALS = {"BMP2": {"9563"}, "T72": {"132"}}
ALL_TARGETS_CD_SERIALS = {"BMP2": {"9563", "9566", "c21"}, "T72": {"132", "812", "s7"}}
SOC_DEPRESSION_SPLIT = {17: "train", 15: "test"}

LAYOUTS = ("sdms", "jpeg_folders", "raw_folders")
PROTOCOLS = ("soc", "soc_all_serials", "all")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
SIDE_FILE_SUFFIXES = (".jpg", ".jpeg", ".htm", ".html", ".hdr", ".gif", ".txt")
_RAW_NAME = re.compile(r"^HB\d+(\.\d+)?$", re.IGNORECASE)
_DEG_FOLDER = re.compile(r"^(\d+)_DEG$", re.IGNORECASE)
_SPLIT_FOLDERS = {"train": "train", "test": "test", "val": "test"}
HEADER_PROBE_BYTES = 8192

#: The raw-magnitude window: -40 dB keeps the clutter (median about -30 dB on a real chip) above black, +10 dB
#: leaves headroom over the brightest scatterer seen (+5.6 dB).
RAW_POLICY = {"name": "db_window", "low_db": -40.0, "high_db": 10.0}
SENSOR = {"sensor": "Sandia X-band airborne SAR", "band": "X", "resolution_m": 0.3}


def canonical_class(name: str) -> str | None:
    """``bmp2_tank`` / ``BRDM_2`` / ``zsu23-4_gun`` / ``ZSU234`` -> canonical class; ``None`` if unknown."""
    if name.lower() in TARGET_TYPES:
        return TARGET_TYPES[name.lower()]
    for candidate in (name, name.split("_")[0]):
        key = re.sub(r"[^A-Z0-9]", "", candidate.upper())
        if key in ALIASES:
            return ALIASES[key]
    return None


def read_header(path: Path) -> dict[str, Any]:
    """The Phoenix header of ``path``, reading only its first kilobytes (the whole file if the header is longer)."""
    with open(path, "rb") as handle:
        head = handle.read(HEADER_PROBE_BYTES)
        try:
            return parse_mstar_header(head, str(path))
        except SARReadError:
            if len(head) < HEADER_PROBE_BYTES:
                raise
            return parse_mstar_header(head + handle.read(), str(path))


def _ghz(value: Any) -> float | None:
    match = re.match(r"\s*([0-9.]+)\s*GHz", str(value))
    return float(match.group(1)) if match else None


#: Metadata key -> (header field, valid range; ``None`` for text). Numbers outside their range are left out.
_HEADER_FIELDS: dict[str, tuple[str, NumberRange | None]] = {
    "serial": ("TargetSerNum", None), "target_type": ("TargetType", None), "azimuth_deg": ("TargetAz", ANGLE_0_360),
    "depression_deg": ("DesiredDepression", ANGLE_0_90), "measured_depression_deg": ("MeasuredDepression", ANGLE_0_90),
    "range_resolution_m": ("RangeResolution", POSITIVE), "cross_range_resolution_m": ("CrossRangeResolution", POSITIVE),
    "collection_date": ("CollectionDate", None), "site": ("Site", None),
}


def _no_skip(reason: str, file: Any) -> None:
    """``header_metadata`` without a reader: out-of-range numbers are still dropped, just not counted."""


def header_metadata(header: dict[str, Any], file: str | Path = "<MSTAR header>",
                    skip: SkipFn = _no_skip) -> dict[str, Any]:
    """Caption-worthy metadata of a raw chip (snake_case, units in the names); a header number outside its range
    (:data:`_HEADER_FIELDS`) is left out and counted through ``skip``."""
    meta: dict[str, Any] = dict(SENSOR)
    meta["polarization"] = str(header.get("Polarization", "HH"))
    for key, (field, valid) in _HEADER_FIELDS.items():
        if field not in header:
            continue
        if valid is None:
            meta[key] = str(header[field])
        elif checked_number(header[field], f"header {field}", valid, file=file, skip=skip) is not None:
            meta[key] = header[field]  # as typed by the header parser (int or float)
    if (ghz := _ghz(header.get("CenterFrequency"))) is not None:
        meta["center_frequency_ghz"] = ghz
    return meta


@register_source("mstar")
class MSTAR(SARSource):
    """MSTAR 10-class SOC chips from the SDMS CDs or a class-folder redistribution (see the module docstring).

    Args:
        root: the folder holding the ``MSTAR_PUBLIC_*`` CD folders (or one of them), or the class-folder root with
            ``train/`` and ``test/`` (or ``val/``).
        split: ``train`` (17 deg), ``test`` (15 deg) or ``all``.
        layout: ``sdms``, ``jpeg_folders``, ``raw_folders`` or ``None`` to detect it.
        protocol: for ``sdms``: ``soc``, ``soc_all_serials`` or ``all`` (needs ``split="all"``).
        allowed_roots: folders outside ``root`` that symlinks may lead to (``SARSource.contained``).
    """

    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    classnames: ClassVar[list[str]] = SOC_CLASSES
    default_policy: ClassVar[str | dict] = "integer"
    caption_fields: ClassVar[tuple[str, ...]] = ("serial", "azimuth_deg", "depression_deg")

    def __init__(self, root: str | Path, split: str = "train", layout: str | None = None,
                 protocol: str = "soc", *, allowed_roots: Sequence[str | Path] = ()) -> None:
        super().__init__(root, split, allowed_roots=allowed_roots)
        if protocol not in PROTOCOLS:
            raise ValueError(f"mstar: protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if protocol == "all" and split != "all":
            raise ValueError("mstar: protocol 'all' keeps every depression and has no train/test split; "
                             "use split='all'")
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"mstar: layout must be one of {LAYOUTS} or None, got {layout!r}")
        self.protocol = protocol
        self.layout = layout or self._detect_layout()
        if protocol != "soc" and self.layout != "sdms":
            raise ValueError(f"mstar: protocol {protocol!r} applies to the sdms layout only; the folder layouts "
                             "carry their redistributor's split")
        self.default_policy = RAW_POLICY if self.layout in ("sdms", "raw_folders") else "integer"

    @classmethod
    def expected_layout(cls) -> str:
        return (
            "Expected either the SDMS CD folders (<root>/MSTAR_PUBLIC_MIXED_TARGETS_CD1/15_DEG/COL2/SCENE1/2S1/"
            "HB14931.000, <root>/MSTAR_PUBLIC_TARGETS_CHIPS_T72_BMP2_BTR70_SLICY/TARGETS/TRAIN/17_DEG/BMP2/SN_9563/"
            "HB03333.000 ...) or class folders <root>/{train,test|val}/<class name or index 0-9>/<chip>.jpeg "
            "(or raw HB* files). See data_cards/mstar.md."
        )

    # ------------------------------------------------------------------------------------------ layout detection

    def _cd_folders(self) -> list[Path]:
        if self.root.name.upper().startswith("MSTAR_PUBLIC_"):
            return [self.root]
        return sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.upper().startswith("MSTAR_PUBLIC_"))

    def _split_folders(self) -> dict[str, Path]:
        found = {p.name.lower(): p for p in self.root.iterdir() if p.is_dir() and p.name.lower() in _SPLIT_FOLDERS}
        if "test" in found and "val" in found:
            raise DatasetNotFoundError(f"mstar: {self.root} has both test/ and val/; which is the 15 deg SOC test "
                                       "set is ambiguous. Keep one.")
        return {_SPLIT_FOLDERS[name]: path for name, path in found.items()}

    def _detect_layout(self) -> str:
        cds, folders = self._cd_folders(), self._split_folders()
        if cds and folders:
            raise DatasetNotFoundError(
                f"mstar: {self.root} holds both MSTAR_PUBLIC_* CD folders and train/test folders; pass layout="
                f"'sdms', 'jpeg_folders' or 'raw_folders'"
            )
        if cds:
            return "sdms"
        if not folders:
            raise DatasetNotFoundError(f"mstar: no MSTAR layout recognised under {self.root}. {self.expected_layout()}")
        kinds = set()
        for split_dir in folders.values():
            for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
                for file in sorted(class_dir.iterdir()):
                    if file.suffix.lower() in IMAGE_SUFFIXES:
                        kinds.add("jpeg_folders")
                    elif _RAW_NAME.match(file.name):
                        kinds.add("raw_folders")
                if kinds:
                    break
        if len(kinds) != 1:
            raise DatasetNotFoundError(
                f"mstar: class folders under {self.root} hold {'both images and raw HB* files' if kinds else 'no chips'}"
                f"; pass layout='jpeg_folders' or 'raw_folders'. {self.expected_layout()}"
            )
        return kinds.pop()

    # ------------------------------------------------------------------------------------------------- records

    def _records(self) -> Iterator[SARRecord]:
        if self.layout == "sdms":
            yield from self._sdms_records()
        else:
            yield from self._folder_records()

    def _folder_records(self) -> Iterator[SARRecord]:
        folders = self._split_folders()
        if not folders:
            raise DatasetNotFoundError(f"mstar: no train/test|val folders under {self.root}. {self.expected_layout()}")
        raw = self.layout == "raw_folders"
        for split, split_dir in sorted(folders.items()):
            if not self.wants(split):
                continue
            for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
                yield from self._class_folder_records(class_dir, split, raw)

    def _class_folder_records(self, class_dir: Path, split: str, raw: bool) -> Iterator[SARRecord]:
        """The chips of one class folder; a folder without any is an error (a class would vanish silently)."""
        label = self._folder_class(class_dir)
        count = 0
        for file in sorted(p for p in class_dir.iterdir() if p.is_file()):
            if raw and _RAW_NAME.match(file.name):
                header = self._header(self.contained(file))
                found = canonical_class(str(header.get("TargetType", "")))
                if found != label:
                    raise SourceFormatError(file, "TargetType", f"a {label} chip (folder {class_dir.name})",
                                            header.get("TargetType"))
                record = self._raw_record(file, split, label, header)
            elif not raw and file.suffix.lower() in IMAGE_SUFFIXES:
                metadata = {**SENSOR, "polarization": "HH", "depression_deg": 17 if split == "train" else 15}
                record = SARRecord(self.name, file.relative_to(self.root).as_posix(), split,
                                   ImageRef(str(self.contained(file))), labels=[label], metadata=metadata)
            else:
                self.skip("not a chip of this layout", file)
                continue
            count += 1
            yield record
        if count == 0:
            kind = "raw HB* files" if raw else f"{'/'.join(IMAGE_SUFFIXES)} chips"
            raise DatasetNotFoundError(f"mstar: class folder {class_dir} holds no {kind} ({self.layout} layout). "
                                       f"{self.expected_layout()}")

    def _folder_class(self, class_dir: Path) -> str:
        name = class_dir.name
        if name.isdigit():
            index = int(name)
            if index >= len(SOC_CLASSES):
                raise SourceFormatError(class_dir, "class folder", f"an index 0-{len(SOC_CLASSES) - 1}", name)
            return SOC_CLASSES[index]
        label = canonical_class(name)
        if label not in SOC_CLASSES:
            raise SourceFormatError(class_dir, "class folder", f"an SOC class name ({', '.join(SOC_CLASSES)}) "
                                    "or its index", name)
        return label

    def _sdms_records(self) -> Iterator[SARRecord]:
        for cd in self._cd_folders():
            if "CLUTTER" in cd.name.upper():
                self.skip("clutter CD (scenes without target labels)", cd)
                continue
            for folder, _, filenames in self.walk(cd):
                for filename in filenames:
                    file = folder / filename
                    if file.suffix.lower() in SIDE_FILE_SUFFIXES:
                        self.skip("side file (.JPG/.HTM/.hdr ...)", file)
                    elif not _RAW_NAME.match(filename):
                        self.skip("not an HB* data file", file)
                    else:
                        record = self._sdms_record(self.contained(file))
                        if record is not None:
                            yield record

    @staticmethod
    def _header(file: Path) -> dict[str, Any]:
        try:
            return read_header(file)
        except SARReadError as err:
            raise SourceFormatError(file, "Phoenix header", "a parseable MSTAR header", str(err)) from err

    def _sdms_record(self, file: Path) -> SARRecord | None:
        header = self._header(file)
        target_type = str(header.get("TargetType", ""))
        label = canonical_class(target_type)
        if label is None:
            raise SourceFormatError(file, "TargetType", f"one of {sorted(TARGET_TYPES)}", target_type or None)
        depression = header.get("DesiredDepression")
        if not isinstance(depression, int):
            folder_deg = next((int(m.group(1)) for p in file.parents if (m := _DEG_FOLDER.match(p.name))), None)
            if folder_deg is None:
                raise SourceFormatError(file, "DesiredDepression", "an integer depression (or an NN_DEG folder)",
                                        depression)
            header["DesiredDepression"] = depression = folder_deg
        if self.protocol == "all":
            return self._raw_record(file, "all", label, header)
        split = SOC_DEPRESSION_SPLIT.get(depression)
        serial = str(header.get("TargetSerNum", "")).lower().removeprefix("sn_")
        allowed = ALL_TARGETS_CD_SERIALS if (self.protocol == "soc_all_serials" and split == "test") else SOC_SERIALS
        if split is None:
            self.skip(f"not in the SOC protocol (depression {depression} deg)", file)
        elif label not in SOC_CLASSES:
            self.skip(f"not an SOC class ({label})", file)
        elif label in allowed and serial not in allowed[label]:
            self.skip(f"not an SOC serial ({label} {serial})", file)
        elif self.wants(split):
            return self._raw_record(file, split, label, header)
        return None

    def _raw_record(self, file: Path, split: str, label: str, header: dict[str, Any]) -> SARRecord:
        return SARRecord(
            self.name, file.relative_to(self.root).as_posix(), split, ImageRef(str(file), format="mstar_raw"),
            labels=[label], metadata=header_metadata(header, file, self.skip),
            size=(header["NumberOfColumns"], header["NumberOfRows"]),
        )

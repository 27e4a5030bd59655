"""FAIR-CSAR-V1.0 (AIRCAS): Gaofen-3 complex SLC patches with oriented boxes (spotlight SL, fine stripmap FSI).

Read from ``<split>/{SLCMats,PNGImages,Annotations,METAXmls,KeyPoints}/<stem>.*`` where ``<split>`` is ``train``
(or ``trainval``, as in MDNet's copies) or ``test``; ``annfiles/`` is accepted for ``Annotations/``.
Annotations are DOTA lines (four corners, class, difficulty) and become rotated boxes. The image is the complex
``.mat`` (variable ``data``), read by the ``mat`` io format; ``image="png"`` uses the 8-bit quick-look PNG
instead. Imaging parameters come from ``METAXmls/<stem>.xml`` (tags parsed by name) and the product stem
(mode, date, polarisation). ``KeyPoints/`` is not used: it repeats the class names of the boxes.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning_sarclip.data.formats  # noqa: F401  (registers the mat format)
from lightning_sarclip.data.records import ImageRef, SARRecord
from lightning_sarclip.data.sources._detection_common import parse_dota, require_image
from lightning_sarclip.data.sources._metadata import (
    ANGLE_0_90,
    FINITE,
    POSITIVE,
    checked_number,
    required_number,
)
from lightning_sarclip.data.sources.base import (
    DatasetNotFoundError,
    SARSource,
    SourceFormatError,
    register_source,
)

#: SL classes in MDNet's order, then the FSI-only ``Ship`` (FSI's ``Bridge`` and ``Tank`` are shared with SL).
_SL_CLASSES = [
    "Airbus_A220", "Airbus_A320", "Airbus_A330", "Boeing737", "Boeing747", "Boeing767", "Boeing777", "Helicopter",
    "Gulfstream", "Fokker-50", "Airfreighter", "Other_Aircraft", "General_Cargo_Ship", "Bulk_Carrier",
    "Container_Ship", "Oil_Tanker", "Warship", "Motion_Defocusing_Ship", "Other_Ship", "Tank", "Tower", "Bridge",
]  # fmt: skip
_SPLIT_FOLDERS = {"train": ("train", "trainval"), "test": ("test",)}
_MODES = {"SL": "spotlight", "FSI": "fine stripmap I"}
_STEM = re.compile(r"^GF3_[A-Za-z0-9]+_(?P<mode>[A-Z]+)_.*?_(?P<date>\d{8})_L1A_(?P<pol>HH|HV|VH|VV)_")
#: METAXml tag -> metadata key (units from the dataset card; degrees and metres are [U]).
_META_KEYS = {
    "imgingMode": "imaging_mode",
    "imagingMode": "imaging_mode",
    "nominalResolution": "resolution_m",
    "polarizationMode": "polarization",
    "radarCenterFrequency": "center_frequency",
    "lookDirection": "look_direction",
    "incidenceAngle": "incidence_deg",
    "attitudeAngle": "attitude_deg",
    "majorCategory": "major_category",
    "subCategory": "sub_category",
}
_CORNERS = {f"{axis}{i}" for axis in "xy" for i in range(1, 5)}
#: METAXml numbers that go into captions, with their valid range.
_CAPTION_NUMBERS = {"incidenceAngle": ANGLE_0_90, "nominalResolution": POSITIVE}


@register_source("fair_csar")
class FAIRCSAR(SARSource):
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    classnames: ClassVar[list[str]] = [*_SL_CLASSES, "Ship"]
    #: Uncalibrated SLC amplitudes (16-bit range): per-image percentiles in dB, not a fixed dB window.
    default_policy: ClassVar[str | dict] = {"name": "percentile", "low": 1.0, "high": 99.0, "in_db": True}
    task: ClassVar[str] = "detection"
    #: ``major_category``/``sub_category`` are kept in metadata but not captioned: they are per patch while a patch
    #: can hold several classes, and object chips inherit the patch's metadata.
    caption_fields: ClassVar[tuple[str, ...]] = (
        "sensor", "band", "polarization", "resolution_m", "imaging_mode", "incidence_deg", "look_direction",
    )  # fmt: skip

    def __init__(self, root: str | Path, split: str = "train", image: str = "slc", *,
                 allowed_roots: Sequence[str | Path] = ()) -> None:
        if image not in ("slc", "png"):
            raise ValueError(f"fair_csar: image must be 'slc' or 'png', got {image!r}")
        self.image_kind = image
        if image == "png":
            self.default_policy = "integer"
        super().__init__(root, split, allowed_roots=allowed_roots)

    @classmethod
    def expected_layout(cls) -> str:
        return (
            "Expected FAIR-CSAR/{train|trainval,test}/{SLCMats/<stem>.mat, PNGImages/<stem>.png, "
            "Annotations|annfiles/<stem>.txt (DOTA), METAXmls/<stem>.xml}; see data_cards/fair_csar.md."
        )

    def _records(self) -> Iterator[SARRecord]:
        base = self.root if self._split_dir(self.root, "test") or self._split_dir(self.root, "train") else None
        if base is None and (self.root / "FAIR-CSAR").is_dir():
            base = self.root / "FAIR-CSAR"
        if base is None:
            raise DatasetNotFoundError(f"{self.name}: no train/, trainval/ or test/ split folder under {self.root}. "
                                       f"{self.expected_layout()}")
        for split in self.splits:
            if not self.wants(split):
                continue
            folder = self._split_dir(base, split)
            if folder is None:
                raise DatasetNotFoundError(f"{self.name}: no {' or '.join(_SPLIT_FOLDERS[split])}/ folder with "
                                           f"Annotations/ under {base}. {self.expected_layout()}")
            yield from self._split_records(base, folder, split)

    @staticmethod
    def _split_dir(base: Path, split: str) -> Path | None:
        for name in _SPLIT_FOLDERS[split]:
            for ann in ("Annotations", "annfiles"):
                if (base / name / ann).is_dir():
                    return base / name
        return None

    def _split_records(self, base: Path, folder: Path, split: str) -> Iterator[SARRecord]:
        ann_dir = folder / "Annotations" if (folder / "Annotations").is_dir() else folder / "annfiles"
        for ann_file in sorted(ann_dir.glob("*.txt")):
            stem = self.contained(ann_file).stem
            if self.image_kind == "slc":
                path = require_image(self.contained(folder / "SLCMats" / f"{stem}.mat"), ann_file)
                ref = ImageRef(str(path), format="mat", options=(("mat_key", "data"),))
            else:
                path = require_image(self.contained(folder / "PNGImages" / f"{stem}.png"), ann_file)
                ref = ImageRef(str(path))
            metadata, size = self._metadata(folder, stem)
            yield SARRecord(
                source=self.name,
                source_id=f"{folder.name}/{stem}",
                split=split,
                image=ref,
                boxes=parse_dota(ann_file, self.classnames, self.skip, size),
                metadata=metadata,
                size=size,
            )

    def _metadata(self, folder: Path, stem: str) -> tuple[dict[str, Any], tuple[int, int] | None]:
        metadata: dict[str, Any] = {"sensor": "Gaofen-3", "band": "C"}
        match = _STEM.match(stem)
        if match:
            metadata["subset"] = match["mode"]
            metadata["imaging_mode"] = _MODES.get(match["mode"], match["mode"])
            metadata["polarization"] = match["pol"]
            date = match["date"]
            metadata["acquisition_date"] = f"{date[:4]}-{date[4:6]}-{date[6:]}"
        size = None
        meta_file = folder / "METAXmls" / f"{stem}.xml"
        if meta_file.is_file():
            tags = _read_meta_xml(self.contained(meta_file))
            width, height = tags.pop("width", None), tags.pop("height", None)
            if isinstance(width, (int, float)) and isinstance(height, (int, float)):
                size = (int(width), int(height))
            corners = [(tags.pop(f"x{i}", None), tags.pop(f"y{i}", None)) for i in range(1, 5)]
            if all(x is not None and y is not None for x, y in corners):
                metadata["corners"] = corners
            for tag, value in tags.items():
                valid = _CAPTION_NUMBERS.get(tag)
                if valid is not None:
                    if checked_number(value, f"METAXml {tag}", valid, file=meta_file, skip=self.skip) is None:
                        continue  # out of range: left out of the record (counted)
                metadata[_META_KEYS.get(tag, _snake(tag))] = value
            if "imaging_mode" in metadata:
                metadata["imaging_mode"] = _MODES.get(metadata["imaging_mode"], metadata["imaging_mode"])
            if isinstance(metadata.get("resolution_m"), int):
                metadata["resolution_m"] = float(metadata["resolution_m"])
        elif (folder / "METAXmls").is_dir():
            self.skip("patch without METAXml", meta_file)
        return metadata, size


def _read_meta_xml(path: Path) -> dict[str, Any]:
    """Leaf tags by name (the nesting is unconfirmed), numbers parsed; the first occurrence of a tag wins."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise SourceFormatError(path, "xml", "well-formed XML", str(err)) from None
    tags: dict[str, Any] = {}
    for element in root.iter():
        if len(element) or element.text is None or not element.text.strip() or element.tag in tags:
            continue
        tags[element.tag] = _value(element.text.strip())
    # the size clips the boxes and the corners locate the patch: both are needed, so a bad one is an error
    for key in ("width", "height"):
        if key in tags:
            required_number(tags[key], key, POSITIVE, file=path)
    for key in _CORNERS:
        if key in tags:
            required_number(tags[key], key, FINITE, file=path)
    return tags


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()

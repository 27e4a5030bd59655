"""SAR-Ship-Dataset (Wang et al. 2019): 39,729 Gaofen-3 / Sentinel-1 ship chips of 256x256, no official split.

Read from the flat release folder ``ship_dataset_v0/`` of ``<stem>.jpg`` + ``<stem>.txt`` (YOLO lines
``0 cx cy w h``, normalised; pixel boxes need the image size, read from the JPEG header without decoding).
The older release with PASCAL-VOC ``<stem>.xml`` files (next to the images, or in ``labelXml/``) is read too.
File names carry the sensor and polarisation (``Gao_ship_hh_*`` = Gaofen-3 HH, ``Sen_ship_vv_*`` =
Sentinel-1 VV); ``newship*`` / ``ship*`` chips have neither.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

from lightning_sarclip.data.records import ImageRef, SARRecord
from lightning_sarclip.data.sources._detection_common import (
    image_size,
    parse_voc,
    parse_yolo,
    require_image,
    voc_boxes,
)
from lightning_sarclip.data.sources.base import DatasetNotFoundError, SARSource, register_source

_NAME = re.compile(r"^(Gao|Sen)_ship_(hh|hv|vh|vv)_", re.IGNORECASE)
_SENSORS = {"gao": "Gaofen-3", "sen": "Sentinel-1"}


@register_source("sar_ship_dataset")
class SARShipDataset(SARSource):
    splits: ClassVar[tuple[str, ...]] = ("all",)
    classnames: ClassVar[list[str]] = ["ship"]
    default_policy: ClassVar[str | dict] = "integer"
    task: ClassVar[str] = "detection"
    caption_fields: ClassVar[tuple[str, ...]] = ("sensor", "band", "polarization")

    def __init__(self, root: str | Path, split: str = "all", *, allowed_roots: Sequence[str | Path] = ()) -> None:
        super().__init__(root, split, allowed_roots=allowed_roots)

    @classmethod
    def expected_layout(cls) -> str:
        return (
            "Expected a flat folder (ship_dataset_v0/) of <stem>.jpg with YOLO <stem>.txt labels "
            "('0 cx cy w h', normalised), or the older release with VOC <stem>.xml (next to the images or in "
            "labelXml/); see data_cards/sar_ship_dataset.md."
        )

    def _records(self) -> Iterator[SARRecord]:
        base = self._base()
        labels = sorted(base.glob("*.txt"))
        fmt = "yolo"
        if not labels:
            labels, fmt = sorted([*base.glob("*.xml"), *(base / "labelXml").glob("*.xml")]), "voc"
        for label_file in labels:
            self.contained(label_file)
            image = base / f"{label_file.stem}.jpg"
            if fmt == "voc" and not image.is_file():
                image = label_file.with_suffix(".jpg")
            require_image(self.contained(image), label_file)
            if fmt == "yolo":
                size = image_size(image)
                boxes = parse_yolo(label_file, size, {0: "ship"}, self.skip)
            else:
                ann = parse_voc(label_file)
                size = ann.size or image_size(image)
                boxes = voc_boxes(ann, self.classnames, self.skip, size=size)
            yield SARRecord(
                source=self.name,
                source_id=image.relative_to(base).as_posix(),
                split="all",
                image=ImageRef(str(image)),
                boxes=boxes,
                metadata=self._metadata(image.stem),
                size=size,
            )

    def _base(self) -> Path:
        for candidate in (self.root, self.root / "ship_dataset_v0"):
            if any(candidate.glob("*.txt")) or any(candidate.glob("*.xml")) or (candidate / "labelXml").is_dir():
                return candidate
        raise DatasetNotFoundError(f"{self.name}: no label files under {self.root}. {self.expected_layout()}")

    @staticmethod
    def _metadata(stem: str) -> dict:
        match = _NAME.match(stem)
        if not match:
            return {}
        return {"sensor": _SENSORS[match.group(1).lower()], "band": "C", "polarization": match.group(2).upper()}

"""SSDD (Official-SSDD-OPEN): the first public SAR ship detection set, 1,160 images, official train/test split.

Read from the official VOC folders: ``BBox_SSDD/voc_style/{JPEGImages,Annotations}_{train,test}`` for
horizontal boxes, or with ``box_type="rbox"`` ``RBox_SSDD/voc_style/...`` whose ``<rotated_bndbox>`` becomes a
rotated :class:`~lightning_sarclip.data.records.Box`. When the ``*_inshore`` / ``*_offshore`` annotation folders
exist, each image gets ``location`` = ``inshore`` / ``offshore`` (caption material). The combined
``BBox_RBox_PSeg_SSDD`` copy has no split folders and the index rule for the split is unconfirmed, so it is
refused rather than guessed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

from lightning_sarclip.data.records import ImageRef, SARRecord
from lightning_sarclip.data.sources._detection_common import (
    find_root,
    parse_voc,
    require_image,
    voc_boxes,
)
from lightning_sarclip.data.sources.base import DatasetNotFoundError, SARSource, register_source

_BOX_FOLDERS = {"bbox": "BBox_SSDD", "rbox": "RBox_SSDD"}


@register_source("ssdd")
class SSDD(SARSource):
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    classnames: ClassVar[list[str]] = ["ship"]
    default_policy: ClassVar[str | dict] = "integer"
    task: ClassVar[str] = "detection"
    caption_fields: ClassVar[tuple[str, ...]] = ("location",)

    def __init__(self, root: str | Path, split: str = "train", box_type: str = "bbox", *,
                 allowed_roots: Sequence[str | Path] = ()) -> None:
        if box_type not in _BOX_FOLDERS:
            raise ValueError(f"ssdd: box_type must be one of {sorted(_BOX_FOLDERS)}, got {box_type!r}")
        self.box_type = box_type
        super().__init__(root, split, allowed_roots=allowed_roots)

    @classmethod
    def expected_layout(cls) -> str:
        return (
            "Expected Official-SSDD-OPEN/BBox_SSDD/voc_style/{JPEGImages_train,Annotations_train,JPEGImages_test,"
            "Annotations_test}/<6-digit>.{jpg,xml} (RBox_SSDD/voc_style/... for box_type='rbox'; optional "
            "Annotations_test_inshore/_offshore); see data_cards/ssdd.md."
        )

    def _records(self) -> Iterator[SARRecord]:
        folder = _BOX_FOLDERS[self.box_type]
        base = find_root(self.root, folder, ("Official-SSDD-OPEN",))
        if base is None:
            combined = find_root(self.root, "BBox_RBox_PSeg_SSDD", ("Official-SSDD-OPEN",))
            hint = (" Found the combined BBox_RBox_PSeg_SSDD copy, which has no official split folders; "
                    "use the BBox_SSDD/RBox_SSDD folders of the official release.") if combined else ""
            raise DatasetNotFoundError(f"{self.name}: no {folder}/ under {self.root}.{hint} {self.expected_layout()}")
        voc = base / folder / "voc_style"
        for split in self.splits:
            if not self.wants(split):
                continue
            ann_dir, img_dir = voc / f"Annotations_{split}", voc / f"JPEGImages_{split}"
            if not ann_dir.is_dir() or not img_dir.is_dir():
                raise DatasetNotFoundError(f"{self.name}: missing {ann_dir} or {img_dir}. {self.expected_layout()}")
            location = self._locations(voc, split)
            for ann_file in sorted(ann_dir.glob("*.xml")):
                ann = parse_voc(self.contained(ann_file))
                image = require_image(self.contained(img_dir / f"{ann_file.stem}.jpg"), ann_file)
                metadata: dict = {"box_type": self.box_type}
                if ann_file.stem in location:
                    metadata["location"] = location[ann_file.stem]
                yield SARRecord(
                    source=self.name,
                    source_id=image.relative_to(base).as_posix(),
                    split=split,
                    image=ImageRef(str(image)),
                    boxes=voc_boxes(ann, self.classnames, self.skip, rotated=self.box_type == "rbox"),
                    metadata=metadata,
                    size=ann.size,
                )

    @staticmethod
    def _locations(voc: Path, split: str) -> dict[str, str]:
        """Stem -> inshore/offshore from the official subset folders (absent folders give nothing)."""
        found: dict[str, str] = {}
        for where in ("inshore", "offshore"):
            for ann in (voc / f"Annotations_{split}_{where}").glob("*.xml"):
                found[ann.stem] = where
        return found

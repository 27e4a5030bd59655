"""HRSID: high-resolution SAR ship detection and instance segmentation (800x800 tiles, COCO with polygons).

Read from the distributed ``HRSID_JPG`` (or ``HRSID_png``) layout: ``annotations/{train2017,test2017}.json`` and
``JPEGImages/<file_name>``. Boxes come from ``bbox`` (the polygon when ``bbox`` is empty). Tile names
``P<scene>_<a>_<b>_<c>_<d>`` give the source scene, kept as ``scene_id`` (the axis order of the four numbers is
unconfirmed, so they are kept verbatim as ``tile_offsets``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import ClassVar

from lightning_sarclip.data.records import ImageRef, SARRecord
from lightning_sarclip.data.sources._detection_common import find_root, inside, parse_coco, require_image
from lightning_sarclip.data.sources.base import DatasetNotFoundError, SARSource, register_source

_SPLIT_FILES = {"train": "train2017.json", "test": "test2017.json"}
_TILE = re.compile(r"^(P\d+)(?:_(\d+)_(\d+)_(\d+)_(\d+)|_\d+)?$")


@register_source("hrsid")
class HRSID(SARSource):
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    classnames: ClassVar[list[str]] = ["ship"]
    default_policy: ClassVar[str | dict] = "integer"
    task: ClassVar[str] = "detection"
    caption_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def expected_layout(cls) -> str:
        return (
            "Expected HRSID_JPG/annotations/{train2017,test2017}.json (COCO with polygon segmentation) and "
            "HRSID_JPG/JPEGImages/P<scene>_<a>_<b>_<c>_<d>.jpg (or HRSID_png/ with .png images); "
            "see data_cards/hrsid.md."
        )

    def _records(self) -> Iterator[SARRecord]:
        base = find_root(self.root, "annotations", ("HRSID_JPG", "HRSID_png", "HRSID"))
        if base is None or not (base / "JPEGImages").is_dir():
            raise DatasetNotFoundError(f"{self.name}: no annotations/ and JPEGImages/ under {self.root}. "
                                       f"{self.expected_layout()}")
        for split, name in _SPLIT_FILES.items():
            if not self.wants(split):
                continue
            ann_file = base / "annotations" / name
            if not self.contained(ann_file).is_file():
                raise DatasetNotFoundError(f"{self.name}: missing {ann_file}. {self.expected_layout()}")
            for image in parse_coco(ann_file, self.classnames, self.skip):
                field = f"image {image.id} file_name"
                path = inside(base / "JPEGImages", image.file_name, ann_file, field)
                path = require_image(self.contained(path, field, ann_file), ann_file, field)
                metadata: dict = {"coco_image_id": image.id, **image.extra}
                match = _TILE.match(path.stem)
                if match:
                    metadata["scene_id"] = match.group(1)
                    if match.group(2) is not None:
                        metadata["tile_offsets"] = tuple(int(match.group(i)) for i in range(2, 6))
                yield SARRecord(
                    source=self.name,
                    source_id=path.relative_to(base).as_posix(),
                    split=split,
                    image=ImageRef(str(path)),
                    boxes=image.boxes,
                    metadata=metadata,
                    size=image.size,
                )

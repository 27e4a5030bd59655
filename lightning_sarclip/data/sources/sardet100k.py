"""SARDet-100K (NeurIPS 2024): six-class horizontal-box SAR detection merged from ten public datasets.

Read from the released COCO layout: ``Annotations/<split>.json`` and ``JPEGImages/<split>/<file_name>``
(jpg, png and bmp mixed). The ``category_id`` values are 0-based and are mapped through the file's own
``categories``; annotations flagged ``ignore``/``iscrowd`` are left out. The JSON does not say which of the ten
merged datasets an image comes from, so records carry no sensor metadata (see ``data_cards/sardet100k.md``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from lightning_sarclip.data.records import ImageRef, SARRecord
from lightning_sarclip.data.sources._detection_common import find_root, inside, parse_coco, require_image
from lightning_sarclip.data.sources.base import DatasetNotFoundError, SARSource, register_source


@register_source("sardet100k")
class SARDet100K(SARSource):
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    #: ``METAINFO`` order of the official code; the reader maps ids by the JSON's categories, not by this order.
    classnames: ClassVar[list[str]] = ["ship", "aircraft", "car", "tank", "bridge", "harbor"]
    default_policy: ClassVar[str | dict] = "integer"
    task: ClassVar[str] = "detection"
    #: The JSON has no per-image sensor/resolution; captions use the boxes only.
    caption_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def expected_layout(cls) -> str:
        return (
            "Expected SARDet_100K/Annotations/{train,val,test}.json (COCO) and "
            "SARDet_100K/JPEGImages/{train,val,test}/<7-digit id>.{jpg,png,bmp} (or the flattened JPEGImages/); "
            "see data_cards/sardet100k.md."
        )

    def _records(self) -> Iterator[SARRecord]:
        base = find_root(self.root, "Annotations", ("SARDet_100K", "SARDet-100K"))
        if base is None or not (base / "JPEGImages").is_dir():
            raise DatasetNotFoundError(f"{self.name}: no Annotations/ and JPEGImages/ under {self.root}. "
                                       f"{self.expected_layout()}")
        for split in self.splits:
            if not self.wants(split):
                continue
            ann_file = self.contained(base / "Annotations" / f"{split}.json")
            if not ann_file.is_file():
                if self.split == "all" and split == "test":
                    self.skip("test.json not released in this copy", ann_file)
                    continue
                raise DatasetNotFoundError(f"{self.name}: missing {ann_file}. {self.expected_layout()}")
            for image in parse_coco(ann_file, self.classnames, self.skip):
                path = inside(base / "JPEGImages" / split, image.file_name, ann_file, f"image {image.id} file_name")
                if not path.is_file():  # the official MSFA config expects the split folders flattened
                    flat = inside(base / "JPEGImages", image.file_name, ann_file, f"image {image.id} file_name")
                    path = flat if flat.is_file() else path
                require_image(self.contained(path, f"image {image.id} file_name", ann_file), ann_file,
                              f"image {image.id} file_name")
                yield SARRecord(
                    source=self.name,
                    source_id=path.relative_to(base).as_posix(),
                    split=split,
                    image=ImageRef(str(path)),
                    boxes=image.boxes,
                    metadata={"coco_image_id": image.id, **image.extra},
                    size=image.size,
                )

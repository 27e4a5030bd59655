"""SAR-AIRcraft-1.0 (Journal of Radars 2023): Gaofen-3 1 m spotlight airport scenes, seven aircraft types.

Read from the VOC release: ``ImageSets/Main/{train,val,test}.txt`` list the ids, ``Annotations/<id>.xml`` the
boxes, ``JPEGImages/<id>.jpg`` the images. Class names are the dataset's own (``A320/321`` contains a slash, so
it is never used in a path). Every image of the set is GF-3 C-band 1 m spotlight, which the records say.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from lightning_sarclip.data.records import ImageRef, SARRecord
from lightning_sarclip.data.sources._detection_common import (
    find_root,
    inside,
    parse_voc,
    read_list,
    require_image,
    voc_boxes,
)
from lightning_sarclip.data.sources.base import (
    DatasetNotFoundError,
    SARSource,
    SourceFormatError,
    register_source,
)

_CONSTANT_METADATA = {"sensor": "Gaofen-3", "band": "C", "resolution_m": 1.0, "imaging_mode": "spotlight"}


@register_source("sar_aircraft")
class SARAircraft(SARSource):
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    classnames: ClassVar[list[str]] = ["A220", "A320/321", "A330", "ARJ21", "Boeing737", "Boeing787", "other"]
    caption_nouns: ClassVar[dict[str, str]] = {"other": "miscellaneous aircraft"}
    default_policy: ClassVar[str | dict] = "integer"
    task: ClassVar[str] = "detection"
    caption_fields: ClassVar[tuple[str, ...]] = ("sensor", "band", "resolution_m", "imaging_mode")

    @classmethod
    def expected_layout(cls) -> str:
        return (
            "Expected SAR-AIRcraft-1.0/{Annotations/<id>.xml, JPEGImages/<id>.jpg, "
            "ImageSets/Main/{train,val,test}.txt}; see data_cards/sar_aircraft.md."
        )

    def _records(self) -> Iterator[SARRecord]:
        base = find_root(self.root, "ImageSets", ("SAR-AIRcraft-1.0", "SAR_AIRcraft_1.0"))
        if base is None or not (base / "Annotations").is_dir() or not (base / "JPEGImages").is_dir():
            raise DatasetNotFoundError(f"{self.name}: no ImageSets/, Annotations/ and JPEGImages/ under {self.root}. "
                                       f"{self.expected_layout()}")
        for split in self.splits:
            if not self.wants(split):
                continue
            split_file = self.contained(base / "ImageSets" / "Main" / f"{split}.txt")
            if not split_file.is_file():
                raise DatasetNotFoundError(f"{self.name}: missing {split_file}. {self.expected_layout()}")
            for n, image_id in enumerate(read_list(split_file), start=1):
                ann_file = inside(base / "Annotations", f"{image_id}.xml", split_file, f"line {n}")
                if not self.contained(ann_file, f"line {n}", split_file).is_file():
                    raise SourceFormatError(split_file, f"line {n}", "an id with an Annotations/<id>.xml", image_id)
                ann = parse_voc(ann_file)
                image = inside(base / "JPEGImages", f"{image_id}.jpg", split_file, f"line {n}")
                image = require_image(self.contained(image, f"line {n}", split_file), ann_file)
                yield SARRecord(
                    source=self.name,
                    source_id=image.relative_to(base).as_posix(),
                    split=split,
                    image=ImageRef(str(image)),
                    boxes=voc_boxes(ann, self.classnames, self.skip),
                    metadata=dict(_CONSTANT_METADATA),
                    size=ann.size,
                )

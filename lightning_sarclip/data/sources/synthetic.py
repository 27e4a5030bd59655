"""``synthetic``: the procedural SAR scenes of :mod:`lightning_sarclip.data.synthetic` as a corpus source.

Useful to exercise the corpus builder and its benchmarks at any size without a download. ``root`` must be an
existing folder (nothing is read from it); scenes are generated when their pixels are read, so listing records
stays cheap. Records carry the scene's class label only (captions come from the captioner like any
classification chip).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from lightning_sarclip.data.io import SARImage, register_format
from lightning_sarclip.data.records import ImageRef, SARRecord
from lightning_sarclip.data.sources.base import SARSource, register_source
from lightning_sarclip.data.synthetic import DB_WINDOW, SYNTHETIC_CLASSES, SyntheticSARDataset, generate_scene


@register_format("synthetic", needs_bytes=False)
def _read_synthetic(data: bytes, ref: ImageRef) -> SARImage:
    scene = generate_scene(
        int(ref.option("seed")), image_size=int(ref.option("size", 64)), in_chans=int(ref.option("in_chans", 1)),
        label=int(ref.option("label")), n_captions=1,
    )
    # Back from the [0, 1] display window to dB, so source policies apply as to real data.
    db = DB_WINDOW[0] + scene.image * (DB_WINDOW[1] - DB_WINDOW[0])
    return SARImage(np.moveaxis(db, 0, -1).astype(np.float32), "db")


@register_source("synthetic")
class SyntheticSource(SARSource):
    """Generated scenes; ``num_samples`` per split, ``image_size`` px, ``in_chans`` 1 or 2, seeded."""

    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    classnames: ClassVar[list[str]] = list(SYNTHETIC_CLASSES)
    default_policy: ClassVar[str | dict] = {"name": "db_window", "low_db": DB_WINDOW[0], "high_db": DB_WINDOW[1]}
    caption_fields: ClassVar[tuple[str, ...]] = ("sensor",)

    def __init__(self, root: str, split: str = "train", num_samples: int = 100, image_size: int = 64,
                 in_chans: int = 1, seed: int = 0, *, allowed_roots: Sequence[str | Path] = ()) -> None:
        # no file is read, but every reader takes the same options (configs may set allowed_roots for all)
        super().__init__(root, split, allowed_roots=allowed_roots)
        self.num_samples, self.image_size, self.in_chans, self.seed = num_samples, image_size, in_chans, seed

    def _records(self) -> Iterator[SARRecord]:
        for split in self.splits:
            if not self.wants(split):
                continue
            dataset = SyntheticSARDataset(split, self.num_samples, self.image_size, self.in_chans, seed=self.seed)
            for index in range(len(dataset)):
                label = int(dataset.labels[index])
                options = (("seed", dataset.item_seed(index)), ("size", self.image_size),
                           ("in_chans", self.in_chans), ("label", label))
                yield SARRecord(
                    source=self.name, source_id=f"{split}/{index:07d}", split=split,
                    image=ImageRef(path=str(self.root), format="synthetic", options=options),
                    labels=[SYNTHETIC_CLASSES[label]], metadata={"sensor": "simulated X-band SAR"},
                    size=(self.image_size, self.image_size),
                )

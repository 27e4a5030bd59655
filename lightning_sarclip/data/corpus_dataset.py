"""The items of a built corpus: ``CorpusDataset`` (one split, optionally of a held-out variant; SAR-safe augmentation).

The Lightning side (weighted source mixing across ranks) is :class:`~lightning_sarclip.training.datamodules.CorpusDataModule`.

Reads what :mod:`lightning_sarclip.data.corpus` wrote: the manifest (or a held-out variant of it) says which
pairs are kept and in which split, the Arrow shards hold the stored PNGs and captions. Items are exactly what
:class:`~lightning_sarclip.training.datamodules.SARDataModule` batches, so ``SARCLIPModule`` trains on a corpus
unchanged.

* **Mixing.** ``source_weights`` (e.g. ``{mstar: 2.0, sardet100k: 0.5}``) sets each source's share of the
  samples drawn per epoch (sampling with replacement, weight spread over the source's images); without weights
  every image is seen once per epoch in a shuffled order (with ``epoch_unit: pairs`` every kept (image, caption)
  pair, :mod:`lightning_sarclip.data.pairs`, and weights spread over the source's pairs). The sampler is seeded
  by ``seed`` and the epoch;
  Lightning shards it across DDP ranks (``DistributedSamplerWrapper``) and the DataLoader hands indices to
  workers, so every (rank, worker) sees a deterministic, disjoint part.
* **Exact resume.** The caption drawn for a training image and its augmentation come from the sample seed that
  travels with its index (:mod:`lightning_sarclip.data.samplers`), so a run resumed mid-epoch repeats the
  uninterrupted one, whatever ``num_workers``.
* **Augmentation** (train only): random resized crop (scale 0.8-1), horizontal/vertical flips and 90-degree
  rotations. SAR intensities carry meaning, so there is no colour jitter. A caption that names positions
  ("... in the upper left") would be made false by a flip or rotation, so pairs whose drawn caption has style
  ``absolute`` or ``relative`` get no geometric augmentation.
* Evaluation items carry ``eval_captions`` captions per image (cycled when an image has fewer, cut when more),
  because retrieval batches need the same number per image.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from lightning_sarclip.data.augment import POSITIONAL_STYLES, ChipAugment
from lightning_sarclip.data.corpus import decode_png, read_shard
from lightning_sarclip.data.transforms import resize_square, to_model_channels

_CORPUS_AUGMENT = ChipAugment()  # crop 80-100%, flips, 90-degree rotations (no intensity change)
log = logging.getLogger("lightning_sarclip")

__all__ = ["CorpusDataset", "EmptySplitError"]


class EmptySplitError(ValueError):
    """The corpus (or variant) has no kept pairs in the requested split."""


class CorpusDataset(Dataset):
    """The kept images of one split of a built corpus (optionally of a held-out variant)."""

    def __init__(
        self,
        root: str,
        split: str = "train",
        image_size: int = 224,
        in_chans: int = 1,
        variant: str | None = None,
        augment: bool = True,
        eval_captions: int = 5,
        sources: list[str] | None = None,
    ) -> None:
        self.root = Path(root)
        manifest_path = self.root / "variants" / f"{variant}.parquet" if variant else self.root / "manifest.parquet"
        if not manifest_path.exists():
            raise FileNotFoundError(
                f"corpus manifest not found: {manifest_path} (build it with `python -m lightning_sarclip build-corpus`"
                + (f"; variant {variant!r} must be listed under held_out" if variant else "") + ")"
            )
        table = pq.read_table(manifest_path, columns=["source", "split", "shard", "row", "caption_index",
                                                       "caption_style", "status"])
        rows = table.to_pydict()
        images: dict[tuple[str, int], dict[str, Any]] = {}
        for i in range(table.num_rows):
            if rows["status"][i] != "kept" or rows["split"][i] != split:
                continue
            if sources is not None and rows["source"][i] not in sources:
                continue
            key = (rows["shard"][i], rows["row"][i])
            item = images.setdefault(key, {"source": rows["source"][i], "captions": []})
            item["captions"].append((rows["caption_index"][i], rows["caption_style"][i]))
        if not images:
            raise EmptySplitError(f"{manifest_path}: no kept pairs in split {split!r}" + (f" for sources {sources}" if sources else ""))
        self.items = [(shard, row, v["source"], sorted(v["captions"])) for (shard, row), v in sorted(images.items())]
        self.split, self.image_size, self.in_chans = split, image_size, in_chans
        self.augment = augment and split == "train"
        self.eval_captions = eval_captions
        self._shards: dict[str, Any] = {}
        self.classnames = self._classnames()

    def _classnames(self) -> list[str]:
        names = set()
        for shard in sorted({item[0] for item in self.items}):
            meta = pq.read_table(self.root / "shards" / _meta_name(shard), columns=["labels"])
            for labels in meta.column("labels").to_pylist():
                names.update(labels)
        return sorted(names)

    @property
    def sources(self) -> list[str]:
        return [item[2] for item in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def _shard(self, name: str):
        # Opened lazily in each worker (memory-mapped), never pickled across processes.
        if name not in self._shards:
            self._shards[name] = read_shard(self.root / "shards" / name)
        return self._shards[name]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_shards"] = {}
        return state

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Item ``index``; training draws (caption, augmentation) are seeded from the global ``random`` module."""
        return self._item(index, random.Random(random.getrandbits(64)))

    def seeded_item(self, index: int, seed: int) -> dict[str, Any]:
        """Item ``index`` with every training draw taken from ``seed`` (used by the resumable training loader)."""
        return self._item(index, random.Random(seed))

    def caption_counts(self) -> np.ndarray:
        """Kept captions of every image (``epoch_unit: pairs`` samples each (image, caption) pair once)."""
        return np.fromiter((len(item[3]) for item in self.items), dtype=np.int64, count=len(self.items))

    def pair_item(self, index: int, caption: int, seed: int) -> dict[str, Any]:
        """Training item ``index`` with its ``caption``-th kept caption (not drawn), augmented from ``seed``."""
        return self._item(index, random.Random(seed), caption)

    def _item(self, index: int, rng: random.Random, caption: int | None = None) -> dict[str, Any]:
        shard, row, _, kept = self.items[index]
        table = self._shard(shard)
        all_captions = table.column("captions")[row].as_py()
        labels = table.column("labels")[row].as_py()
        image = decode_png(table.column("png")[row].as_py())
        if image.shape[0] == 1 and self.in_chans == 2:
            image = np.concatenate([image, image])  # single-pol source in a dual-pol run: VH := VV (documented)
        image = to_model_channels(image, self.in_chans, f"{shard}#{row}")
        if self.split == "train":
            caption_index, style = rng.choice(kept) if caption is None else kept[caption]
            captions = [all_captions[caption_index]]
            tensor = self._augment(image, geometric=style not in POSITIONAL_STYLES, rng=rng)
        else:
            texts = [all_captions[i] for i, _ in kept]
            captions = [texts[i % len(texts)] for i in range(self.eval_captions)]
            tensor = resize_square(image, self.image_size)
        label = self.classnames.index(labels[0]) if len(labels) == 1 else -1
        return {"image": tensor, "captions": captions, "label": label, "index": index}

    def _augment(self, image: np.ndarray, geometric: bool, rng: random.Random) -> torch.Tensor:
        if self.augment:
            image = _CORPUS_AUGMENT(image, rng, geometric=geometric)
        return resize_square(image, self.image_size)


def _meta_name(shard: str) -> str:
    return shard.rsplit(".", 1)[0] + ".meta.parquet"

"""Training on a built corpus: ``CorpusDataModule`` (weighted source mixing, SAR-safe augmentation).

Reads what :mod:`lightning_sarclip.data.corpus` wrote: the manifest (or a held-out variant of it) says which
pairs are kept and in which split, the Arrow shards hold the stored PNGs and captions. Items are exactly what
:class:`~lightning_sarclip.data.datamodules.SARDataModule` batches, so ``SARCLIPModule`` trains on a corpus
unchanged.

* **Mixing.** ``source_weights`` (e.g. ``{mstar: 2.0, sardet100k: 0.5}``) sets each source's share of the
  samples drawn per epoch (sampling with replacement, weight spread over the source's images); without weights
  every image is seen once per epoch in a shuffled order. The sampler is seeded by ``seed`` and the epoch;
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
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_sarclip.data.corpus import decode_png, read_shard
from lightning_sarclip.data.datamodules import SARDataModule
from lightning_sarclip.data.samplers import WeightedEpochSampler
from lightning_sarclip.data.transforms import resize_square, to_model_channels

POSITIONAL_STYLES = frozenset({"absolute", "relative"})
log = logging.getLogger("lightning_sarclip")

__all__ = ["CorpusDataModule", "CorpusDataset", "EmptySplitError", "WeightedEpochSampler"]


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

    def _item(self, index: int, rng: random.Random) -> dict[str, Any]:
        shard, row, _, kept = self.items[index]
        table = self._shard(shard)
        all_captions = table.column("captions")[row].as_py()
        labels = table.column("labels")[row].as_py()
        image = decode_png(table.column("png")[row].as_py())
        if image.shape[0] == 1 and self.in_chans == 2:
            image = np.concatenate([image, image])  # single-pol source in a dual-pol run: VH := VV (documented)
        image = to_model_channels(image, self.in_chans, f"{shard}#{row}")
        if self.split == "train":
            caption_index, style = rng.choice(kept)
            captions = [all_captions[caption_index]]
            tensor = self._augment(image, geometric=style not in POSITIONAL_STYLES, rng=rng)
        else:
            texts = [all_captions[i] for i, _ in kept]
            captions = [texts[i % len(texts)] for i in range(self.eval_captions)]
            tensor = resize_square(image, self.image_size)
        label = self.classnames.index(labels[0]) if len(labels) == 1 else -1
        return {"image": tensor, "captions": captions, "label": label, "index": index}

    def _augment(self, image: np.ndarray, geometric: bool, rng: random.Random) -> torch.Tensor:
        if not self.augment:
            return resize_square(image, self.image_size)
        c, h, w = image.shape
        if geometric:
            area = rng.uniform(0.8, 1.0) * h * w
            side_h = min(h, max(1, round((area * h / w) ** 0.5)))
            side_w = min(w, max(1, round((area * w / h) ** 0.5)))
            top, left = rng.randint(0, h - side_h), rng.randint(0, w - side_w)
            image = image[:, top : top + side_h, left : left + side_w]
            if rng.random() < 0.5:
                image = image[:, :, ::-1]
            if rng.random() < 0.5:
                image = image[:, ::-1, :]
            image = np.rot90(image, k=rng.randint(0, 3), axes=(1, 2))
        return resize_square(np.ascontiguousarray(image), self.image_size)


def _meta_name(shard: str) -> str:
    return shard.rsplit(".", 1)[0] + ".meta.parquet"


class CorpusDataModule(SARDataModule):
    """Train on a corpus built by ``build-corpus``.

    Args:
        root: the corpus folder (``output`` of the build).
        variant: a held-out variant name (``wo_mstar`` ...) or ``None`` for the full corpus.
        source_weights: per-source sampling weights for training (missing sources weigh 1); ``None`` = each image
            once per epoch.
        samples_per_epoch: training samples per epoch when weighting (default: the number of train images).
        augment: SAR-safe geometric augmentation of training images.
        eval_captions: captions per image in val/test batches.
        seed: sampler seed.
        Other arguments: see :class:`~lightning_sarclip.data.datamodules.SARDataModule`.
    """

    def __init__(
        self,
        root: str,
        variant: str | None = None,
        source_weights: dict[str, float] | None = None,
        samples_per_epoch: int | None = None,
        augment: bool = True,
        eval_captions: int = 5,
        seed: int = 0,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        image_size: int = 224,
        in_chans: int = 1,
        tokenizer: str | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(
            dataset_class=CorpusDataset,
            dataset_kwargs={"root": str(root), "variant": variant, "augment": augment, "eval_captions": eval_captions},
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            image_size=image_size,
            in_chans=in_chans,
            tokenizer=tokenizer,
            pin_memory=pin_memory,
        )
        self.source_weights = dict(source_weights or {}) or None
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed

    def train_seed(self) -> int:
        """The ``seed`` argument: it fixes the mixing draws, the captions and the augmentation of every epoch."""
        return self.seed

    def build_dataset(self, split: str) -> Dataset:
        """A corpus without a val split (e.g. only MSTAR, which ships train/test) validates on test, with a warning."""
        try:
            return super().build_dataset(split)
        except EmptySplitError:
            if split not in ("val", "test"):
                raise
            other = "test" if split == "val" else "val"
            log.warning("corpus %s has no kept %r pairs; using its %r split instead", self.dataset_kwargs["root"],
                        split, other)
            return super().build_dataset(other)

    def train_dataloader(self) -> DataLoader:
        dataset: CorpusDataset = self._dataset("train", "fit")
        weights = None
        if self.source_weights is not None:
            counts: dict[str, int] = defaultdict(int)
            for source in dataset.sources:
                counts[source] += 1
            unknown = set(self.source_weights) - set(counts)
            if unknown:
                raise ValueError(f"source_weights names sources not in the train split: {sorted(unknown)}")
            weights = [self.source_weights.get(s, 1.0) / counts[s] for s in dataset.sources]
        sampler = WeightedEpochSampler(weights, len(dataset), self.samples_per_epoch, self.train_seed())
        return self._loader(dataset, train=True, sampler=sampler)


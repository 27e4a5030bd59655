"""LightningDataModules: one generic base that takes a dataset class (torchgeo style), plus the synthetic one.

A dataset only has to be a map-style ``Dataset`` whose constructor accepts ``split``, ``image_size`` and
``in_chans`` and whose items are ``{"image": (C, S, S) float tensor, "captions": list[str], "label": int,
"index": int}``; it should expose ``classnames`` for zero-shot evaluation. Everything shared (splits per
stage, tokenisation, batching, worker settings) lives once in :class:`SARDataModule`.

Tokenisation happens in the collate function, i.e. in the dataloader workers: the main process, which
also drives the model, never spends time in the BPE tokenizer.

Training loaders are resumable mid-epoch (:mod:`lightning_sarclip.data.samplers`): the order, the caption drawn
for each image and any dataset-side random choice are functions of (seed, epoch, position in the epoch), so a run
restarted from a checkpoint sees exactly the batches the uninterrupted run would have, whatever ``num_workers``.

``epoch_unit`` (every datamodule) says what a training sample is: an image, its caption drawn (``images``), or an
(image, caption) pair, open_clip_train's epoch over a CSV (``pairs``, :mod:`lightning_sarclip.data.pairs`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lightning_sarclip.data.augment import ChipAugment
from lightning_sarclip.data.corpus_dataset import CorpusDataset, EmptySplitError
from lightning_sarclip.data.listing import DETECTION_MODES, SourceListing
from lightning_sarclip.data.pairs import check_epoch_unit, sample_images, training_samples
from lightning_sarclip.data.samplers import (
    ResumableDataLoader,
    SeededDataset,
    SeededEpochSampler,
    WeightedEpochSampler,
    sample_rng,
)
from lightning_sarclip.data.source_dataset import SourceDataset
from lightning_sarclip.data.sources import get_source
from lightning_sarclip.data.splits import PARTS, check_fractions, part_counts, stratified_split
from lightning_sarclip.data.synthetic import SyntheticSARDataset
from lightning_sarclip.utils.atomic import atomic_write_json

log = logging.getLogger("lightning_sarclip")

# Which splits each Lightning stage needs. ``predict`` embeds the test split (features for retrieval/export).
STAGE_SPLITS: dict[str | None, tuple[str, ...]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
    None: ("train", "val", "test"),
}

#: ``SourceDataModule``'s default train/val/test shares for a source without official splits.
DEFAULT_SPLIT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)


def build_tokenizer(name: str) -> Callable[..., torch.Tensor]:
    """open_clip tokenizer of model ``name`` (a registered architecture, built-in name or ``hf-hub:``).

    The architectures shipped with this package are registered first so their names resolve. A plain name
    that open_clip does not know is an error here: open_clip would silently fall back to a 77-token
    tokenizer that then disagrees with the model's context length.
    """
    import open_clip

    from lightning_sarclip.models.registry import register_model_configs

    register_model_configs()
    if ":" not in name and open_clip.get_model_config(name) is None:
        raise ValueError(
            f"tokenizer {name!r} is not a known open_clip architecture; use a name from "
            f"open_clip.list_models() (e.g. 'SARCLIP-ViT-Tiny-64', 'ViT-B-32') or 'hf-hub:org/repo'"
        )
    return open_clip.get_tokenizer(name)


class CaptionCollate:
    """Stack images and tokenize captions inside the dataloader worker (picklable: holds the tokenizer).

    Training (``all_captions=False``) takes one caption per sample, drawn from the sample's ``"seed"`` (set by
    :class:`~lightning_sarclip.data.samplers.SeededDataset`), so the choice depends on neither the worker nor a
    restart; samples without a seed fall back to the torch RNG. Evaluation (``all_captions=True``) keeps all K
    captions of each image, ``text`` is then ``(B, K, L)``, which retrieval metrics need.
    """

    def __init__(self, tokenizer: Callable[..., torch.Tensor], all_captions: bool) -> None:
        self.tokenizer = tokenizer
        self.all_captions = all_captions

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        captions = [list(sample["captions"]) for sample in samples]
        if any(len(c) == 0 for c in captions):
            raise ValueError("every sample needs at least one caption")
        if self.all_captions:
            counts = {len(c) for c in captions}
            if len(counts) != 1:
                raise ValueError(
                    f"evaluation batches need the same number of captions per image, got {sorted(counts)}; "
                    "make the dataset return a fixed number of captions per item"
                )
            per_image = counts.pop()
            text = self.tokenizer([t for c in captions for t in c])
            text = text.view(len(samples), per_image, text.shape[-1])
        else:
            picks = [
                sample_rng(sample["seed"], "caption").randrange(len(c)) if "seed" in sample
                else int(torch.randint(0, len(c), ()))
                for sample, c in zip(samples, captions, strict=True)
            ]
            text = self.tokenizer([c[p] for c, p in zip(captions, picks, strict=True)])
        return {
            "image": torch.stack([torch.as_tensor(sample["image"], dtype=torch.float32) for sample in samples]),
            "text": text.long(),
            "label": torch.tensor([int(sample["label"]) for sample in samples], dtype=torch.long),
            "index": torch.tensor([int(sample["index"]) for sample in samples], dtype=torch.long),
        }


class SARDataModule(pl.LightningDataModule):
    """Generic image-caption datamodule around any dataset class.

    Args:
        dataset_class: dataset type, constructed as ``dataset_class(split=..., image_size=..., in_chans=...,
            **dataset_kwargs_for(split))``.
        dataset_kwargs: extra constructor arguments shared by all splits.
        batch_size: training batch size (also evaluation unless ``eval_batch_size`` is set).
        eval_batch_size: batch size of the val/test/predict loaders.
        num_workers: dataloader worker processes (tokenisation runs there too).
        image_size: side length the dataset delivers; the CLI links it to the model's input size.
        in_chans: SAR channels the dataset delivers (1 single-pol, 2 dual-pol); linked to the model.
        tokenizer: open_clip model name whose tokenizer encodes the captions; the CLI links it from the
            model's ``model_name`` so tokens always match the text tower.
        pin_memory: pin host memory of batches (useful for GPU training).
        epoch_unit: what one training sample is: ``images`` (each image once per epoch, its caption drawn from its
            captions) or ``pairs`` (each (image, caption) pair once per epoch, the caption fixed by the pair:
            open_clip_train's epoch over a CSV of rows; :mod:`lightning_sarclip.data.pairs`). Epoch length,
            ``samples_per_epoch``, source weights and the LR schedule all count these samples.
    """

    def __init__(
        self,
        dataset_class: type[Dataset],
        dataset_kwargs: dict[str, Any] | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        image_size: int = 224,
        in_chans: int = 1,
        tokenizer: str | None = None,
        pin_memory: bool = False,
        epoch_unit: str = "images",
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1 or None, got {eval_batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters(ignore=["dataset_class"])
        self.dataset_class = dataset_class
        self.dataset_kwargs = dict(dataset_kwargs or {})
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.in_chans = in_chans
        self.tokenizer_name = tokenizer
        self.pin_memory = pin_memory
        self.epoch_unit = check_epoch_unit(epoch_unit)
        self.datasets: dict[str, Dataset] = {}
        self._train_samples: tuple[Dataset, Dataset] | None = None  # (train dataset, its samples), built once
        self._tokenizer: Callable[..., torch.Tensor] | None = None

    def check_data(self) -> None:
        """Cheap checks that the data exists and the settings are valid (roots, sources, options), without
        reading pixels. ``fit`` calls this before it builds the model, so a typo costs seconds, not the minutes of
        loading pretrained weights. Subclasses override it; the base has nothing to check."""

    # ------------------------------------------------------------------ datasets
    def dataset_kwargs_for(self, split: str) -> dict[str, Any]:
        """Constructor arguments of ``split`` beyond split/image_size/in_chans; override for per-split ones."""
        return dict(self.dataset_kwargs)

    def build_dataset(self, split: str) -> Dataset:
        return self.dataset_class(split=split, image_size=self.image_size, in_chans=self.in_chans,
                                  **self.dataset_kwargs_for(split))

    def setup(self, stage: str | None = None) -> None:
        if stage not in STAGE_SPLITS:
            raise ValueError(f"unknown stage {stage!r}; expected one of {[s for s in STAGE_SPLITS if s]}")
        for split in STAGE_SPLITS[stage]:
            if split not in self.datasets:
                self.datasets[split] = self.build_dataset(split)
        if self.tokenizer_name is not None and self._tokenizer is None:
            self._tokenizer = build_tokenizer(self.tokenizer_name)

    def pixel_statistics(self, max_images: int = 1000) -> tuple[list[float], list[float]]:
        """Mean and standard deviation per channel of the training images as the model receives them (converted,
        augmented as in training, resized), over all pixels of up to ``max_images`` images spread evenly over the
        train split. Deterministic: the same data give the same numbers on every rank and every run (each image's
        augmentation is drawn from its own seed, as training draws it, leaving the global generators as they were).

        Used by ``image_mean/image_std: dataset`` of :class:`~lightning_sarclip.training.module.SARCLIPModule`.
        """
        if "train" not in self.datasets:
            self.datasets["train"] = self.build_dataset("train")
        dataset = self.datasets["train"]
        count = len(dataset)  # type: ignore[arg-type]
        if count == 0:
            raise ValueError("pixel_statistics: the train split is empty")
        picks = sorted({int(i * count / min(count, max_images)) for i in range(min(count, max_images))})
        total = total_sq = None
        pixels = 0
        seeded = SeededDataset(dataset)  # the training path's own seeded item: augmentation drawn as in training
        for index in picks:
            flat = seeded[(index, index)]["image"].to(torch.float64).flatten(1)
            total = flat.sum(1) if total is None else total + flat.sum(1)
            total_sq = (flat * flat).sum(1) if total_sq is None else total_sq + (flat * flat).sum(1)
            pixels += flat.shape[1]
        mean = total / pixels
        std = (total_sq / pixels - mean * mean).clamp_min(0).sqrt()
        if not bool((std > 1e-6).all()):
            raise ValueError(f"pixel_statistics: the training images are constant in some channel (std {std.tolist()}"
                             f" over {len(picks)} images); give image_mean/image_std as numbers")
        return [float(v) for v in mean], [float(v) for v in std]

    @property
    def classnames(self) -> list[str]:
        """Class names for zero-shot prompts, from the first set-up split among val, test and train."""
        for split in ("val", "test", "train"):
            if split in self.datasets:
                names = getattr(self.datasets[split], "classnames", None)
                if names is None:
                    raise AttributeError(f"{type(self.datasets[split]).__name__} has no 'classnames' attribute")
                return list(names)
        raise RuntimeError("no dataset is set up yet; call setup('fit'), setup('validate') or setup('test') first")

    def train_seed(self) -> int:
        """Seed of the training order, captions and per-sample randomness: ``seed_everything``'s, else 0."""
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    @property
    def tokenizer(self) -> Callable[..., torch.Tensor]:
        if self.tokenizer_name is None:
            raise ValueError(
                "no tokenizer configured: pass tokenizer=<open_clip model name> (e.g. 'SARCLIP-ViT-Tiny-64'); "
                "the CLI links it from model.init_args.model_name"
            )
        if self._tokenizer is None:
            self._tokenizer = build_tokenizer(self.tokenizer_name)
        return self._tokenizer

    # ------------------------------------------------------------------ loaders
    def _dataset(self, split: str, stage: str) -> Dataset:
        if split not in self.datasets:
            raise RuntimeError(f"the {split!r} split is not set up; call setup({stage!r}) first")
        return self.datasets[split]

    def _loader(self, dataset: Dataset, train: bool, sampler: Sampler[int] | None = None) -> DataLoader:
        """The one place loaders are built.

        Training: a :class:`~lightning_sarclip.data.samplers.ResumableDataLoader` over ``sampler`` (an index order,
        default a shuffle seeded by :meth:`train_seed` and the epoch), each index paired with its sample seed.
        Evaluation: the dataset in order.
        """
        common = {
            "num_workers": self.num_workers,
            "collate_fn": CaptionCollate(self.tokenizer, all_captions=not train),
            "pin_memory": self.pin_memory,
            "persistent_workers": self.num_workers > 0,
        }
        if not train:
            return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, **common)
        seed = self.train_seed()
        order = sampler if sampler is not None else WeightedEpochSampler(None, len(dataset), seed=seed)
        return ResumableDataLoader(
            SeededDataset(dataset),
            batch_size=self.batch_size,
            sampler=SeededEpochSampler(order, seed=seed),
            drop_last=len(order) >= self.batch_size,
            **common,
        )

    def train_samples(self) -> Dataset:
        """The training epoch's samples: the train dataset (``epoch_unit: images``) or its (image, caption) pairs
        (``pairs``), indexed once per train dataset (the pairs index of 1.39M rows is a compact array)."""
        dataset = self._dataset("train", "fit")
        if self._train_samples is None or self._train_samples[0] is not dataset:
            self._train_samples = (dataset, training_samples(dataset, self.epoch_unit))
        return self._train_samples[1]

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_samples(), train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("val", "validate"), train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("test", "test"), train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("test", "predict"), train=False)


class SyntheticSARDataModule(SARDataModule):
    """Procedural SAR scenes (:class:`~lightning_sarclip.data.synthetic.SyntheticSARDataset`), no download.

    Geometric augmentation is deliberately not applied: captions name the targets' position in the image,
    and a flip or rotation would make them false.

    Args:
        num_train: scenes in the train split (``num_val`` / ``num_test`` likewise).
        n_captions: captions per scene; evaluation batches carry all of them.
        looks: number of looks of the speckle (higher is smoother).
        seed: base seed; items are seeded from (seed, split, index).
        batch_size: training batch size (also evaluation unless ``eval_batch_size`` is set); 64 by default here.
        image_size: side length of the scenes; the CLI links it to the model's input size. 64 by default here.
        Other arguments: see :class:`SARDataModule` (passed on as ``**kwargs``).
    """

    def __init__(
        self,
        num_train: int = 2000,
        num_val: int = 256,
        num_test: int = 256,
        n_captions: int = 5,
        looks: int = 4,
        seed: int = 0,
        batch_size: int = 64,
        image_size: int = 64,
        **kwargs: Any,
    ) -> None:
        # batch_size and image_size are re-declared only for their smaller defaults; everything else of
        # SARDataModule goes through **kwargs (LightningCLI/jsonargparse resolves it from this super() call).
        super().__init__(
            dataset_class=SyntheticSARDataset,
            dataset_kwargs={"n_captions": n_captions, "looks": looks, "seed": seed},
            batch_size=batch_size,
            image_size=image_size,
            **kwargs,
        )
        self.num_samples = {"train": num_train, "val": num_val, "test": num_test}

    def dataset_kwargs_for(self, split: str) -> dict[str, Any]:
        return {**super().dataset_kwargs_for(split), "num_samples": self.num_samples[split]}


class SourceDataModule(SARDataModule):
    """Train and evaluate on any registered source read from its original layout (one dataset, no corpus).

    The source is listed once (all splits, records only) and its official splits are mapped to the stages:
    ``val`` falls back to ``test`` and ``test`` to ``val`` when a source ships only one of them (MSTAR SOC,
    SARLANG-1M), with a warning. A source without official splits (all records ``"all"``, e.g. a flat
    ``class_folder``) is split on the fly into train/val/test parts by ``split_fractions`` and ``split_seed``:
    stratified by label, object chips and ``split_group_by`` groups kept in one part, independent of the listing
    order (:func:`~lightning_sarclip.data.splits.stratified_split`); the stages then map to those parts (an empty
    part falls back like a missing official split). Under a trainer the split is saved as ``split.json`` in the run
    directory (``trainer.default_root_dir``, rank 0 only); a later ``setup`` that finds that file (a resumed run,
    ``validate``/``test`` of the run) uses the saved parts, and refuses to go on when the source lists other
    records or the split settings differ. Without a trainer the split is made the same way but not saved.
    Label indices come from one class list shared by every split.

    Args:
        source: registered source name (``class_folder``, ``image_caption_table``, ``mstar`` ...).
        root: the dataset's folder (its data card shows the expected tree).
        n_captions: captions per image (evaluation batches carry all of them).
        seed: caption seed (captions are fixed per image and seed).
        caption_styles: caption styles of :class:`~lightning_sarclip.data.captions.Captioner`.
        drop_prompt_like: drop generated captions that equal a zero-shot prompt filled with the class name (our
            default; ``false`` keeps them, as SARVLM-1M does: see :mod:`lightning_sarclip.data.captions`).
        policy: conversion policy spec overriding the source's default (``"db_window"``, ``{"name": ...}``).
        source_options: extra keyword arguments of the source's constructor (e.g. ``{"image_column": "path"}``).
        detection: detection sources (HRSID, SARDet-100K ...) as ``whole`` images captioned with their objects'
            counts and positions, one labelled ``chips`` record per box, or ``both``.
        split_fractions: train, val and test shares for a source without official splits, as ``[0.8, 0.1, 0.1]``
            or ``{train: 0.8, val: 0.1, test: 0.1}`` (non-negative, train > 0, summing to 1). Ignored, with a
            warning when changed, for a source with official splits.
        split_seed: seed of that split (the same records and seed give the same parts; independent of
            ``seed_everything``).
        split_group_by: metadata key whose records must stay in one part (like the corpus builder's ``group_by``,
            e.g. ``pair_id`` of SAMPLE); ``None`` keeps only object chips with their image.
        augment: SAR-safe augmentation of training images (:class:`~lightning_sarclip.data.augment.ChipAugment`):
            ``true`` for its defaults (crop 80-100%, flips, 90-degree rotations; geometry skipped for pairs whose
            captions name positions), a mapping of its fields (``{db_jitter: 2, rot90: false}``), or ``false``.
        cache_images: keep each converted image in memory after its first read, in every split (each loader worker
            holds its own copy): for a source of a few thousand chips that is read again every epoch, where
            decoding costs as much as a training step on a CPU (MSTAR's 600 chips: 39 MB). Augmentation still
            runs on every read. Captions are kept once written, always (they are fixed per image and seed).
        Other arguments: see :class:`SARDataModule` (passed on as ``**kwargs``).
    """

    #: File in the run directory holding a made split (see the class docstring).
    SPLIT_FILE = "split.json"

    def __init__(
        self,
        source: str,
        root: str,
        n_captions: int = 5,
        seed: int = 0,
        caption_styles: tuple[str, ...] = ("general", "complex", "absolute", "relative"),
        drop_prompt_like: bool = True,
        policy: str | dict | None = None,
        source_options: dict[str, Any] | None = None,
        detection: str = "whole",
        split_fractions: tuple[float, float, float] | dict[str, float] = DEFAULT_SPLIT_FRACTIONS,
        split_seed: int = 0,
        split_group_by: str | None = None,
        augment: bool | dict[str, Any] = False,
        cache_images: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            dataset_class=SourceDataset,
            dataset_kwargs={"source": source, "root": str(root), "n_captions": n_captions, "seed": seed,
                            "policy": policy, "source_options": dict(source_options or {}), "detection": detection},
            **kwargs,
        )
        if detection not in DETECTION_MODES:
            raise ValueError(f"detection must be one of {DETECTION_MODES}, got {detection!r}")
        self.source_cls = get_source(source)  # unknown names fail at construction, before any training
        self.caption_styles = tuple(caption_styles)
        if not isinstance(drop_prompt_like, bool):
            raise ValueError(f"drop_prompt_like: expected true or false, got {drop_prompt_like!r}")
        self.drop_prompt_like = drop_prompt_like
        self.split_fractions = check_fractions(split_fractions, "split_fractions")
        if isinstance(split_seed, bool) or not isinstance(split_seed, int):
            raise ValueError(f"split_seed: expected an integer, got {split_seed!r}")
        if split_group_by is not None and (not isinstance(split_group_by, str) or not split_group_by):
            raise ValueError(f"split_group_by: expected null or a metadata key, got {split_group_by!r}")
        self.split_seed = split_seed
        self.split_group_by = split_group_by
        self.cache_images = bool(cache_images)
        if isinstance(augment, dict):
            try:
                self.augment: ChipAugment | None = ChipAugment(**{k: tuple(v) if k == "crop_scale" else v
                                                                  for k, v in augment.items()})
            except TypeError as error:
                raise ValueError(f"augment: expected true/false or a mapping of ChipAugment's fields "
                                 f"(crop_scale, flips, rot90, db_jitter), got {augment!r}") from error
        else:
            self.augment = ChipAugment() if augment else None
        self._listing: SourceListing | None = None
        self._records: dict[str, list] | None = None
        self._made: dict[str, list] | None = None  # the parts of a made split (all three, maybe empty)
        self._served_splits: dict[str, list] | None = None
        self._adopted: Path | None = None  # the split.json whose parts are in use
        self._classnames: list[str] | None = None

    def check_data(self) -> None:
        """The reader is constructed (root exists and holds a known layout, options are the reader's own) and its
        conversion policy is built."""
        _ = self.listing

    @property
    def listing(self) -> SourceListing:
        """The source listed once (all splits): reader instance, policy, class names, caption vocabulary."""
        if self._listing is None:
            kwargs = self.dataset_kwargs
            self._listing = SourceListing(kwargs["source"], kwargs["root"], "all", options=kwargs["source_options"],
                                          policy=kwargs["policy"], detection=kwargs["detection"])
        return self._listing

    def _list_records(self) -> dict[str, list]:
        """All records of the source by split, read once; also fixes the shared class list."""
        if self._records is None:
            by_split: dict[str, list] = {}
            for record in self.listing.records():
                by_split.setdefault(record.split, []).append(record)
            if not by_split:
                raise ValueError(f"source {self.source_cls.name!r} at {self.dataset_kwargs['root']} has no records")
            self._records = by_split
            labels = {label for records in by_split.values() for r in records for label in r.labels}
            self._classnames = self.listing.classnames or sorted(labels)
        return self._records

    def _served(self) -> dict[str, list]:
        """The records that serve the stages, by split: the official splits, or the non-empty parts of the split
        made for a source without them (computed once; replaced by a saved split, see :meth:`setup`)."""
        if self._served_splits is None:
            by_split = self._list_records()
            if set(by_split) == {"all"}:
                if self._made is None:
                    self._made = stratified_split(by_split["all"], self.split_fractions, self.split_seed,
                                                  self.split_group_by)
                self._served_splits = {part: records for part, records in self._made.items() if records}
            else:
                changed = [name for name, value, default in (
                    ("split_fractions", tuple(self.split_fractions.values()), DEFAULT_SPLIT_FRACTIONS),
                    ("split_seed", self.split_seed, 0), ("split_group_by", self.split_group_by, None),
                ) if value != default]
                if changed:
                    log.warning("source %r has official splits %s; %s ignored", self.source_cls.name,
                                sorted(by_split), ", ".join(changed))
                self._served_splits = by_split
        return self._served_splits

    def source_split(self, split: str) -> str:
        """The source split (or made part) that serves the datamodule's ``split`` (see the class docstring)."""
        available = self._served()
        if split in available:
            return split
        name = self.source_cls.name
        made = self._made is not None
        what = "part" if made else "split"
        if split == "train":
            raise ValueError(f"source {name!r} has no train split (it has {sorted(available)})")
        for fallback in {"val": ("test", "all"), "test": ("val", "all")}.get(split, ()):
            if fallback in available:
                log.warning("source %r has no %r %s; using its %r %s instead%s", name, split, what, fallback, what,
                            f" (split_fractions {self.split_fractions} left it empty)" if made else "")
                return fallback
        if made:
            total = sum(len(records) for records in self._made.values())
            raise ValueError(
                f"source {name!r} has no official splits, and split_fractions {self.split_fractions} left both val "
                f"and test empty ({total} records, {len(self._classnames or [])} classes; a class keeps at least one "
                "train image): give val/test larger shares or add images"
            )
        raise ValueError(f"source {name!r} has no {split!r} split (it has {sorted(available)})")

    def build_dataset(self, split: str) -> Dataset:
        records = self._served()[self.source_split(split)]
        captioner = self.listing.captioner(self.caption_styles, self.dataset_kwargs["n_captions"],
                                           self.dataset_kwargs["seed"], drop_prompt_like=self.drop_prompt_like)
        return SourceDataset.from_listing(self.listing, records, split, image_size=self.image_size,
                                          in_chans=self.in_chans, captioner=captioner,
                                          n_captions=self.dataset_kwargs["n_captions"], classnames=self._classnames,
                                          augment=self.augment if split == "train" else None,
                                          cache_images=self.cache_images)

    # ------------------------------------------------------------------ made split in the run directory
    def setup(self, stage: str | None = None) -> None:
        """Set up as :meth:`SARDataModule.setup`; for a made split under a trainer, first use the run directory's
        ``split.json`` when there is one, and afterwards write it when there is none (global rank 0)."""
        run_dir = self._run_dir()
        if run_dir is not None and set(self._list_records()) == {"all"}:
            self._adopt_saved_split(run_dir / self.SPLIT_FILE)
        super().setup(stage)
        if run_dir is not None and self._made is not None and self.trainer.is_global_zero:
            path = run_dir / self.SPLIT_FILE
            if not path.exists():  # every rank made the same split; one writes it
                atomic_write_json(path, self.split_manifest(), default=str)
                self._adopted = path

    def _run_dir(self) -> Path | None:
        """The attached trainer's run directory (``default_root_dir``, which the CLI sets to ``runs/<name>``)."""
        trainer = getattr(self, "trainer", None)
        return Path(trainer.default_root_dir) if trainer is not None else None

    def split_manifest(self) -> dict[str, Any]:
        """The made split as saved in ``split.json``: settings, source, per-part class counts and record ids."""
        self._served()
        if self._made is None:
            raise RuntimeError(f"source {self.source_cls.name!r} has official splits; nothing was split")
        kwargs = self.dataset_kwargs
        return {
            "version": 1,
            "source": self.source_cls.name,
            "root": str(Path(kwargs["root"]).resolve()),
            "source_options": kwargs["source_options"],
            "detection": kwargs["detection"],
            "fractions": self.split_fractions,
            "seed": self.split_seed,
            "group_by": self.split_group_by,
            "records": sum(len(records) for records in self._made.values()),
            "counts": part_counts(self._made),
            "parts": {part: [r.source_id for r in records] for part, records in self._made.items()},
        }

    def _adopt_saved_split(self, path: Path) -> None:
        """Use the parts saved in ``path`` (if it exists), after checking they belong to this source and settings
        and that the source still lists exactly the saved records."""
        if self._adopted == path or not path.is_file():
            return
        try:
            saved = json.loads(path.read_text())
            saved_parts = {part: list(saved["parts"][part]) for part in PARTS}
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a split file written by SourceDataModule ({error!r}); delete it to split "
                             "again") from error
        wanted = {"source": self.source_cls.name, "fractions": self.split_fractions, "seed": self.split_seed,
                  "group_by": self.split_group_by}
        differ = [f"{key} {saved.get(key)!r} there, {value!r} now" for key, value in wanted.items()
                  if saved.get(key) != value]
        remedy = ("the run's split must stay as it was; start a new run (another --name, or --new_run true) for a new "
                  f"split, or delete {path} if nothing of this run should be kept")
        if differ:
            raise ValueError(f"{path} holds this run's split, made with other settings: {'; '.join(differ)}; {remedy}")
        listed = {r.source_id: r for r in self._list_records()["all"]}
        saved_ids = [i for part in PARTS for i in saved_parts[part]]
        added = sorted(set(listed) - set(saved_ids))
        removed = sorted(set(saved_ids) - set(listed))
        if added or removed or len(saved_ids) != len(set(saved_ids)):
            change = "; ".join(f"{len(ids)} {how} (e.g. {ids[:3]})"
                               for how, ids in (("added", added), ("removed", removed)) if ids)
            raise ValueError(f"{path}: source {self.source_cls.name!r} at {self.dataset_kwargs['root']} no longer "
                             f"lists the records this run was split with: {change or 'repeated ids in the file'}; "
                             f"{remedy}")
        made = {part: [listed[i] for i in saved_parts[part]] for part in PARTS}
        current = self._made
        if current is not None and any([r.source_id for r in current[p]] != saved_parts[p] for p in PARTS):
            for split in [s for s in self.datasets if s in PARTS]:  # built from a split that is not the run's
                del self.datasets[split]
        self._made = made
        self._served_splits = None
        self._adopted = path


class CorpusDataModule(SARDataModule):
    """Train on a corpus built by ``build-corpus``.

    Args:
        root: the corpus folder (``output`` of the build).
        variant: a held-out variant name (``wo_mstar`` ...) or ``None`` for the full corpus.
        source_weights: per-source sampling weights for training (missing sources weigh 1); ``None`` = each sample
            (image, or pair with ``epoch_unit: pairs``) once per epoch.
        samples_per_epoch: training samples per epoch (default: the number of training samples, images or pairs by
            ``epoch_unit``); without ``source_weights``, seeded permutations of the samples cut at this count (see
            :class:`~lightning_sarclip.data.samplers.WeightedEpochSampler`).
        augment: SAR-safe geometric augmentation of training images.
        eval_captions: captions per image in val/test batches.
        seed: sampler seed.
        Other arguments: see :class:`SARDataModule` (passed on as ``**kwargs``).
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
        **kwargs: Any,
    ) -> None:
        super().__init__(
            dataset_class=CorpusDataset,
            dataset_kwargs={"root": str(root), "variant": variant, "augment": augment, "eval_captions": eval_captions},
            **kwargs,
        )
        self.source_weights = dict(source_weights or {}) or None
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed

    def check_data(self) -> None:
        """The corpus folder holds the manifest (or the variant's) that ``build-corpus`` writes."""
        root = Path(self.dataset_kwargs["root"])
        variant = self.dataset_kwargs["variant"]
        manifest = root / "variants" / f"{variant}.parquet" if variant else root / "manifest.parquet"
        if manifest.is_file():
            return
        if not root.is_dir():
            raise FileNotFoundError(f"corpus root not found: {root} (build it with `python -m lightning_sarclip "
                                    "build-corpus --config ...`)")
        known = sorted(p.stem for p in (root / "variants").glob("*.parquet"))
        raise FileNotFoundError(f"{manifest} not found: {root} is not a finished corpus build"
                                + (f" (variants: {known})" if variant else ""))

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
        samples = self.train_samples()
        weights = None
        if self.source_weights is not None:
            dataset: CorpusDataset = self._dataset("train", "fit")
            # a source's weight is spread over its samples (images or pairs), as arrays: 1.39M pairs stay cheap
            names, codes, counts = np.unique(np.asarray(dataset.sources)[sample_images(samples)],
                                             return_inverse=True, return_counts=True)
            unknown = set(self.source_weights) - set(names.tolist())
            if unknown:
                raise ValueError(f"source_weights names sources not in the train split: {sorted(unknown)}")
            weights = (np.array([self.source_weights.get(n, 1.0) for n in names.tolist()]) / counts)[codes]
        sampler = WeightedEpochSampler(weights, len(samples), self.samples_per_epoch, self.train_seed())
        return self._loader(samples, train=True, sampler=sampler)

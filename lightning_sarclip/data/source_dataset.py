"""``SourceDataset``: any registered source as the map-style image-caption dataset the datamodules batch.

The source's records (cheap: paths, labels, metadata) are listed once at construction; pixels are read in
``__getitem__`` (so in dataloader workers) with the reader instance's conversion policy, and captions come from
the source itself or the :class:`~lightning_sarclip.data.captions.Captioner` (handed the reader's vocabulary). An unreadable image raises the io
error naming the file: substituting another image would silently change the training data.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from lightning_sarclip.data.augment import POSITIONAL_STYLES, ChipAugment
from lightning_sarclip.data.captions import STYLES, Captioner
from lightning_sarclip.data.listing import SourceListing, sized_input
from lightning_sarclip.data.records import SARRecord

#: Listings up to this many records keep every record's captions once written (about 1 kB a record).
CAPTION_MEMO_LIMIT = 200_000

__all__ = ["SourceDataset", "fixed_count"]


def fixed_count(captions: Sequence[str], n: int) -> list[str]:
    """Exactly ``n`` captions: the first ``n``, or all of them repeated in order (evaluation batches need a
    fixed number per image)."""
    if not captions:
        raise ValueError("fixed_count: no captions to choose from")
    return [captions[i % len(captions)] for i in range(n)]


class SourceDataset(Dataset):
    """Image-caption pairs of one split of one source (``{"image", "captions", "label", "index"}`` items).

    ``SourceDataset("mstar", root, "test", image_size=128)`` lists the source itself; the datamodule, the
    evaluation callback and ``evaluate``, which list a source once for several splits or subsets, build it
    with :meth:`from_listing`. Either way the reader instance decides the conversion policy and the class names
    (:class:`~lightning_sarclip.data.listing.SourceListing`).

    Args:
        source: registered source name (``class_folder``, ``mstar`` ...).
        root: the dataset's folder (see its data card).
        split: ``train``, ``val``, ``test`` or ``all``.
        image_size: side of the square images returned.
        in_chans: channels returned (1 single-pol, 2 dual-pol).
        n_captions: captions per item (padded by cycling, or cut: evaluation batches need a fixed number; the
            captioner itself never repeats shipped captions).
        seed: caption seed.
        caption_styles: styles of the captioner.
        policy: conversion policy spec overriding the reader instance's ``default_policy``.
        source_options: extra keyword arguments of the source's constructor.
        detection: detection sources as ``whole`` images, object ``chips`` or ``both``.
        classnames: class list fixing label indices; default: the reader's class names, else the sorted labels seen.
        drop_prompt_like: drop generated captions that equal a zero-shot prompt (see
            :mod:`lightning_sarclip.data.captions`).
    """

    def __init__(
        self,
        source: str,
        root: str,
        split: str = "train",
        image_size: int = 224,
        in_chans: int = 1,
        n_captions: int = 5,
        seed: int = 0,
        caption_styles: Sequence[str] = STYLES,
        policy: str | dict | None = None,
        source_options: dict[str, Any] | None = None,
        detection: str = "whole",
        classnames: Sequence[str] | None = None,
        drop_prompt_like: bool = True,
    ) -> None:
        listing = SourceListing(source, root, split, options=source_options, policy=policy, detection=detection)
        captioner = listing.captioner(caption_styles, n_captions, seed, drop_prompt_like=drop_prompt_like)
        self._setup(listing, list(listing.records()), split, image_size, in_chans, captioner, n_captions, classnames)

    @classmethod
    def from_listing(
        cls,
        listing: SourceListing,
        records: Sequence[SARRecord],
        split: str,
        image_size: int = 224,
        in_chans: int = 1,
        captioner: Captioner | None = None,
        n_captions: int = 5,
        classnames: Sequence[str] | None = None,
        augment: ChipAugment | None = None,
        cache_images: bool = False,
    ) -> SourceDataset:
        """A dataset over ``records`` of ``listing`` (e.g. one split of an ``all`` listing, or a subset);
        ``augment`` applies to every item (the datamodule passes it for training only); ``cache_images`` keeps
        each converted image in memory after its first read (see :meth:`converted`)."""
        dataset = cls.__new__(cls)
        dataset._setup(listing, list(records), split, image_size, in_chans,
                       captioner or listing.captioner(n_captions=n_captions), n_captions, classnames)
        dataset.augment = augment
        dataset._arrays = {} if cache_images else None
        return dataset

    def _setup(self, listing: SourceListing, records: list[SARRecord], split: str, image_size: int, in_chans: int,
               captioner: Captioner, n_captions: int, classnames: Sequence[str] | None) -> None:
        if n_captions < 1:
            raise ValueError(f"n_captions must be >= 1, got {n_captions}")
        self.listing = listing
        self.source, self.root, self.split = listing.source, listing.root, split
        self.image_size, self.in_chans, self.n_captions = image_size, in_chans, n_captions
        self.records: list[SARRecord] = records
        if not self.records:
            raise ValueError(
                f"source {listing.source!r} at {listing.root} has no records for split {split!r} (a source without "
                "official splits yields them as split 'all'; check the data card's expected layout)"
            )
        if classnames is not None:
            self.classnames = list(classnames)
        else:
            self.classnames = listing.classnames or sorted({label for r in self.records for label in r.labels})
        self._class_index = {name: i for i, name in enumerate(self.classnames)}
        self.captioner = captioner
        self.policy = listing.policy
        self.augment: ChipAugment | None = None
        self._arrays: dict[int, np.ndarray] | None = None  # converted images, when cached
        # A record's captions are a pure function of the captioner's seed and the record: written once, kept (a
        # rewriter may sample, so its output is not kept; a very long listing is not kept whole in memory).
        self._captions: dict[int, list[tuple[str, str]]] | None = (
            {} if captioner.rewriter is None and len(records) <= CAPTION_MEMO_LIMIT else None)

    def converted(self, index: int) -> np.ndarray:
        """Item ``index``'s image converted by the source's policy, ``(in_chans, H, W)`` at its own size; read from
        disk each time, or once and then from memory with ``cache_images`` (each loader worker keeps its own copy:
        about ``H * W * in_chans * 4`` bytes an image, 39 MB for MSTAR's 600 chips of 128 x 128)."""
        if self._arrays is None:
            return self.listing.load_array(self.records[index], self.in_chans)
        array = self._arrays.get(index)
        if array is None:
            array = self._arrays[index] = self.listing.load_array(self.records[index], self.in_chans)
        return array

    def styled_captions(self, index: int) -> list[tuple[str, str]]:
        """Item ``index``'s captions with the style that wrote each (:meth:`Captioner.captions_with_styles`)."""
        if self._captions is None:
            return self.captioner.captions_with_styles(self.records[index])
        styled = self._captions.get(index)
        if styled is None:
            styled = self._captions[index] = self.captioner.captions_with_styles(self.records[index])
        return styled

    def __len__(self) -> int:
        return len(self.records)

    def label_of(self, record: SARRecord) -> int:
        """Index of the record's single label in ``classnames``; -1 for none, several or an unknown one."""
        label = record.label
        return self._class_index.get(label, -1) if label is not None else -1

    def caption_counts(self) -> np.ndarray:
        """Training captions of every item, without writing them (``epoch_unit: pairs`` samples each once)."""
        return np.fromiter((self.captioner.caption_count(r) for r in self.records), dtype=np.int64,
                           count=len(self.records))

    def __getitem__(self, index: int) -> dict[str, Any]:
        styled = self.styled_captions(index)
        captions = [text for text, _ in styled]
        # geometry only when no caption of the image names a position (any of them may be drawn for it)
        rng = random.Random(random.getrandbits(64)) if self.augment is not None else None
        image = self._image(index, rng, geometric=not any(style in POSITIONAL_STYLES for _, style in styled))
        return self._item(index, image, fixed_count(captions, self.n_captions))

    def pair_item(self, index: int, caption: int, seed: int) -> dict[str, Any]:
        """Item ``index`` with its ``caption``-th caption only (of all :meth:`styled_captions`, not cut to
        ``n_captions``), augmented from ``seed``; geometry only when that caption names no position."""
        text, style = self.styled_captions(index)[caption]
        return self._item(index, self._image(index, random.Random(seed), geometric=style not in POSITIONAL_STYLES),
                          [text])

    def _image(self, index: int, rng: random.Random | None, geometric: bool) -> Any:
        array = self.converted(index)
        if self.augment is not None and rng is not None:
            array = self.augment(array, rng, geometric=geometric)
        return sized_input(array, self.image_size)  # never the cached array itself

    def _item(self, index: int, image: Any, captions: list[str]) -> dict[str, Any]:
        return {"image": image, "captions": captions, "label": self.label_of(self.records[index]), "index": index}

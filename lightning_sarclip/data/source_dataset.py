"""``SourceDataset``: any registered source as the map-style image-caption dataset the datamodules batch.

The source's records (cheap: paths, labels, metadata) are listed once at construction; pixels are read in
``__getitem__`` (so in dataloader workers) with the source's conversion policy, and captions come from the
source itself or the :class:`~lightning_sarclip.data.captions.Captioner`. An unreadable image raises the io
error naming the file: substituting another image would silently change the training data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from lightning_sarclip.data.captions import Captioner
from lightning_sarclip.data.io import read_sar
from lightning_sarclip.data.records import SARRecord
from lightning_sarclip.data.sources.base import get_source
from lightning_sarclip.data.transforms import build_policy, resize_square, to_model_channels

__all__ = ["SourceDataset", "fixed_count"]


def fixed_count(captions: Sequence[str], n: int) -> list[str]:
    """Exactly ``n`` captions: the first ``n``, or all of them repeated in order (evaluation batches need a
    fixed number per image)."""
    if not captions:
        raise ValueError("fixed_count: no captions to choose from")
    return [captions[i % len(captions)] for i in range(n)]


class SourceDataset(Dataset):
    """Image-caption pairs of one split of one source (``{"image", "captions", "label", "index"}`` items).

    Args:
        source: registered source name (``class_folder``, ``mstar`` ...).
        root: the dataset's folder (see its data card).
        split: ``train``, ``val``, ``test`` or ``all``.
        image_size: side of the square images returned.
        in_chans: channels returned (1 single-pol, 2 dual-pol).
        captioner: caption writer; default ``Captioner(n_captions=n_captions, seed=seed)``.
        n_captions: captions per item (padded by cycling, or cut).
        seed: caption seed of the default captioner.
        policy: conversion policy spec overriding the source's ``default_policy``.
        source_options: extra keyword arguments of the source's constructor.
        classnames: class list fixing label indices (the datamodule passes one list to every split);
            default: the source's ``classnames``, else the sorted labels seen.
        records: records already listed (the datamodule lists all splits in one pass); default: read them.
    """

    def __init__(
        self,
        source: str,
        root: str,
        split: str = "train",
        image_size: int = 224,
        in_chans: int = 1,
        captioner: Captioner | None = None,
        n_captions: int = 5,
        seed: int = 0,
        policy: str | dict | None = None,
        source_options: dict[str, Any] | None = None,
        classnames: Sequence[str] | None = None,
        records: Sequence[SARRecord] | None = None,
    ) -> None:
        if n_captions < 1:
            raise ValueError(f"n_captions must be >= 1, got {n_captions}")
        self.source_cls = get_source(source)
        self.source, self.root, self.split = source, str(root), split
        self.image_size, self.in_chans, self.n_captions = image_size, in_chans, n_captions
        if records is None:
            reader = self.source_cls(root, split, **(source_options or {}))
            records = list(reader.records())
            known = list(getattr(reader, "classnames", None) or [])
        else:
            known = list(self.source_cls.classnames)
        self.records: list[SARRecord] = list(records)
        if not self.records:
            raise ValueError(
                f"source {source!r} at {root} has no records for split {split!r} (a source without official "
                "splits yields them as split 'all'; check the data card's expected layout)"
            )
        if classnames is not None:
            self.classnames = list(classnames)
        else:
            self.classnames = known or sorted({label for r in self.records for label in r.labels})
        self._class_index = {name: i for i, name in enumerate(self.classnames)}
        self.captioner = captioner or Captioner(n_captions=n_captions, seed=seed)
        self.policy = build_policy(policy if policy is not None else self.source_cls.default_policy)

    def __len__(self) -> int:
        return len(self.records)

    def label_of(self, record: SARRecord) -> int:
        """Index of the record's single label in ``classnames``; -1 for none, several or an unknown one."""
        label = record.label
        return self._class_index.get(label, -1) if label is not None else -1

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image = read_sar(record.image)
        array = to_model_channels(self.policy(image), self.in_chans, record.image.name)
        return {
            "image": resize_square(array, self.image_size).clamp_(0.0, 1.0).to(torch.float32),
            "captions": fixed_count(self.captioner.captions(record), self.n_captions),
            "label": self.label_of(record),
            "index": index,
        }

"""What one training sample is: an image (``epoch_unit: images``) or an (image, caption) pair (``pairs``).

``images`` (the default) is one sample per image per epoch, its caption drawn from the image's captions by the
sample seed. ``pairs`` is open_clip_train's epoch (``--dataset-type csv``: every row of the CSV is a sample): an
image with 5 captions is seen 5 times an epoch, each time with another of its captions, fixed by the pair and not
drawn. For SARVLM-1M that is 1,385,993 samples an epoch instead of 279,996, so with the same ``max_epochs`` a run
takes about 5 times the steps, and the LR schedule (which reads the loader's length) follows.

:class:`CaptionPairs` is the training view of a dataset in ``pairs``. Its index is compact: one ``int32`` image
index per pair plus one offset per image (about 8 MB for SARVLM-1M's 1.39M rows), never a list of per-pair
objects. What it needs from the dataset:

* ``caption_counts()``: the number of training captions of every image (pairs per image), without reading pixels;
* optionally ``pair_item(index, caption, seed)``: item ``index`` with its ``caption``-th caption as the only one
  and every random draw (augmentation) taken from ``seed``. Without it the item is read as the images path reads
  it (:func:`~lightning_sarclip.data.samplers.seeded_item`) and its ``caption``-th caption kept.

Items keep the *image* ``index``, so two pairs of one image in a batch are one group for label-aware positives.
The samplers (:mod:`lightning_sarclip.data.samplers`) see only the view's length, so shuffling, source weights,
``samples_per_epoch``, DDP sharding and mid-epoch resume count pairs without knowing about them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Dataset

from lightning_sarclip.data.samplers import seeded_item

__all__ = ["EPOCH_UNITS", "CaptionPairs", "check_epoch_unit", "sample_images", "training_samples"]

EPOCH_UNITS: tuple[str, ...] = ("images", "pairs")


def check_epoch_unit(value: Any) -> str:
    """``value`` if it names an epoch unit, else an error naming the setting and the choices."""
    if value not in EPOCH_UNITS:
        raise ValueError(f"epoch_unit: expected one of {list(EPOCH_UNITS)}, got {value!r}")
    return value


class CaptionPairs(Dataset):
    """Every (image, caption) pair of ``dataset`` as one sample, pairs of an image next to each other."""

    def __init__(self, dataset: Dataset) -> None:
        counts_of = getattr(dataset, "caption_counts", None)
        if not callable(counts_of):
            raise TypeError(f"epoch_unit 'pairs': {type(dataset).__name__} has no caption_counts() (the number of "
                            "training captions of each image); add it, or train with epoch_unit 'images'")
        counts = np.asarray(counts_of(), dtype=np.int64)
        if counts.shape != (len(dataset),) or (counts < 1).any():  # type: ignore[arg-type]
            raise ValueError(f"epoch_unit 'pairs': {type(dataset).__name__}.caption_counts() must give a count >= 1 "
                             f"for each of its {len(dataset)} images, got shape {counts.shape}, "  # type: ignore[arg-type]
                             f"minimum {counts.min() if counts.size else None}")
        self.dataset = dataset
        #: first pair of every image, and one past the last pair
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        #: the image of every pair (int32: 2 billion images is beyond any SAR corpus)
        self.images = np.repeat(np.arange(len(counts), dtype=np.int32), counts)

    def __len__(self) -> int:
        return len(self.images)

    def locate(self, pair: int) -> tuple[int, int]:
        """``(image index, caption index)`` of ``pair``."""
        image = int(self.images[pair])
        return image, int(pair) - int(self.offsets[image])

    def seeded_item(self, pair: int, seed: int) -> dict[str, Any]:
        """The pair's item, its draws taken from ``seed`` (what :class:`~lightning_sarclip.data.samplers.SeededDataset`
        calls in training)."""
        image, caption = self.locate(pair)
        own = getattr(self.dataset, "pair_item", None)
        if callable(own):
            return own(image, caption, seed)
        item = seeded_item(self.dataset, image, seed)
        return {**item, "captions": [item["captions"][caption]]}

    def __getitem__(self, pair: int) -> dict[str, Any]:
        image, caption = self.locate(pair)
        item = self.dataset[image]
        return {**item, "captions": [item["captions"][caption]]}


def training_samples(dataset: Dataset, epoch_unit: str) -> Dataset:
    """The samples of a training epoch: ``dataset`` itself (``images``) or its :class:`CaptionPairs`."""
    return CaptionPairs(dataset) if check_epoch_unit(epoch_unit) == "pairs" else dataset


def sample_images(samples: Dataset) -> np.ndarray:
    """The image index of every training sample (per-image values such as a source become per-sample ones)."""
    if isinstance(samples, CaptionPairs):
        return samples.images
    return np.arange(len(samples))  # type: ignore[arg-type]

"""torchmetrics wrappers of the retrieval and zero-shot functions that are correct under DDP.

Why these exist: retrieval recall and zero-shot accuracy are not averages of per-batch values. Every query is
ranked against *all* keys of the evaluation set, so features must be accumulated over the epoch and gathered
from every rank before anything is computed. torchmetrics' own ``RetrievalRecall`` gets this wrong: it divides
by the world size (TM #2852), and it knows nothing of the duplicates a ``DistributedSampler`` pads each rank
with. These metrics only *accumulate* (list states reduced with ``dist_reduce_fx="cat"``, which torchmetrics
all-gathers across ranks, uneven lengths included) and at :meth:`~torchmetrics.Metric.compute` call the plain
functions of :mod:`lightning_sarclip.eval` on the gathered, de-duplicated set. The result is therefore exactly
what one process would compute on the whole set:

* rows are gathered from all ranks, then sorted by the sample ``index`` passed to ``update``, and only the first
  occurrence of every index is kept (the padding a ``DistributedSampler`` adds repeats whole samples, so the
  copies are identical; sorting makes the result independent of the world size and of the sampler's order);
* nothing is divided by the world size; each value is a plain fraction over the de-duplicated set.

``index`` must identify a sample within the evaluation set (the ``"index"`` that
:class:`~lightning_sarclip.training.datamodules.CaptionCollate` puts in every batch). Every rank must call
``update`` at least once before ``compute`` (a ``DistributedSampler`` always gives each rank a sample).
Features and logits are stored as float32 (the scores are computed in float32 anyway); accumulating
``N x K x D`` caption features costs ``4 N K D`` bytes per rank after the gather.

Metric names, and the names of the same numbers elsewhere:

==========================  ====================================  ==================================
here                        CLIP_benchmark                        open_clip (``open_clip_train``)
==========================  ====================================  ==================================
``i2t_R@K``                 ``text_retrieval_recall@K``           ``image_to_text_R@K``
``t2i_R@K``                 ``image_retrieval_recall@K``          ``text_to_image_R@K``
``mean_recall``             (not reported; mean of the above)     (not reported)
``topK``                    ``acc1``, ``acc5``                    ``<dataset>-zeroshot-val-top1/top5``
``mean_per_class``          ``mean_per_class_recall``             (not reported)
==========================  ====================================  ==================================

With several captions per image, ``i2t`` counts an image as a hit when any of its captions is in the top K
(CLIP_benchmark's rule); open_clip's training-time metrics assume one caption per image, where all agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_sarclip.eval.classification import classification_metrics, confusion_matrix
from lightning_sarclip.eval.retrieval import TIE_RULES, recall_at_k

__all__ = ["RetrievalRecall", "ZeroShotAccuracy", "first_occurrences"]


def first_occurrences(index: Tensor) -> Tensor:
    """Positions that keep, in ascending ``index`` order, the first occurrence of every distinct index.

    ``rows[first_occurrences(index)]`` is the de-duplicated set sorted by sample index: the canonical order in
    which a single process would have seen the samples.
    """
    if index.ndim != 1:
        raise ValueError(f"index must be 1-D, got shape {tuple(index.shape)}")
    if index.numel() == 0:
        return index.new_zeros(0, dtype=torch.long)
    order = torch.argsort(index, stable=True)
    sorted_index = index[order]
    first = torch.ones_like(sorted_index, dtype=torch.bool)
    first[1:] = sorted_index[1:] != sorted_index[:-1]
    return order[first]


def _check_index(index: Tensor | Sequence[int], batch: int) -> Tensor:
    index = torch.as_tensor(index)
    if index.ndim != 1 or index.shape[0] != batch:
        raise ValueError(f"index must have shape ({batch},) (one sample index per row), got {tuple(index.shape)}")
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise ValueError(f"index must hold integer sample indices, got dtype {index.dtype}")
    return index.detach().long()


class RetrievalRecall(Metric):
    """Image<->text Recall@K over the whole (gathered, de-duplicated) evaluation set.

    ``compute()`` returns :func:`~lightning_sarclip.eval.retrieval.recall_at_k` of the accumulated features:
    ``{"i2t_R@K": ..., "t2i_R@K": ..., "mean_recall": ...}`` (fractions). After ``compute()``,
    :attr:`num_images` and :attr:`captions_per_image` describe the set it was computed on.

    Args:
        ks: the K of Recall@K.
        chunk_size: queries scored per block (memory bound), passed to ``recall_at_k``.
        ties: how exact score ties are counted (``recall_at_k``'s ``ties``; default their expected value).
        kwargs: torchmetrics ``Metric`` options (``process_group``, ``compute_on_cpu``, ...).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, ks: Sequence[int] = (1, 5, 10), chunk_size: int | None = None, ties: str = "expected",
                 **kwargs: Any) -> None:
        if ties not in TIE_RULES:
            raise ValueError(f"ties must be one of {TIE_RULES}, got {ties!r}")
        super().__init__(**kwargs)
        self.ks = tuple(ks)
        self.chunk_size = chunk_size
        self.ties = ties
        self.num_images: int | None = None
        self.captions_per_image: int | None = None
        self.add_state("image_features", default=[], dist_reduce_fx="cat")
        self.add_state("text_features", default=[], dist_reduce_fx="cat")
        self.add_state("sample_index", default=[], dist_reduce_fx="cat")

    def update(self, image_features: Tensor, text_features: Tensor, index: Tensor | Sequence[int]) -> None:
        """Add a batch of ``B`` images with ``K`` captions each.

        Args:
            image_features: ``(B, D)``.
            text_features: ``(B, K, D)``, or ``(B * K, D)`` with the K captions of each image consecutive
                (image-major, as ``text.flatten(0, 1)`` of a ``(B, K, L)`` token batch gives). K must be the same
                in every update.
            index: ``(B,)`` sample indices within the evaluation set (used to drop sampler padding).
        """
        if image_features.ndim != 2:
            raise ValueError(f"image_features must have shape (B, D), got {tuple(image_features.shape)}")
        batch, dim = image_features.shape
        if text_features.ndim == 2:
            if batch == 0 or text_features.shape[0] % batch:
                raise ValueError(
                    f"flat text_features need B * K rows for B={batch} images, got {text_features.shape[0]}"
                )
            text_features = text_features.reshape(batch, text_features.shape[0] // batch, -1)
        if text_features.ndim != 3 or text_features.shape[0] != batch or text_features.shape[2] != dim:
            raise ValueError(
                f"text_features must be (B, K, D) or (B * K, D) with B={batch}, D={dim}; "
                f"got {tuple(text_features.shape)}"
            )
        if self.text_features and self.text_features[0].shape[1] != text_features.shape[1]:
            raise ValueError(
                f"captions per image changed from {self.text_features[0].shape[1]} to {text_features.shape[1]}; "
                "every image needs the same number of captions"
            )
        index = _check_index(index, batch).to(image_features.device)
        self.image_features.append(image_features.detach().float())
        self.text_features.append(text_features.detach().float())
        self.sample_index.append(index)

    def compute(self) -> dict[str, float]:
        if self.update_count == 0:
            raise ValueError("RetrievalRecall.compute() called before any update()")
        keep = first_occurrences(dim_zero_cat(self.sample_index))
        images = dim_zero_cat(self.image_features)[keep]
        texts = dim_zero_cat(self.text_features)[keep]
        num_images, per_image = texts.shape[0], texts.shape[1]
        self.num_images, self.captions_per_image = num_images, per_image
        text_to_image = torch.arange(num_images).repeat_interleave(per_image)
        return recall_at_k(images, texts.flatten(0, 1), text_to_image, ks=self.ks, chunk_size=self.chunk_size,
                           ties=self.ties)


class ZeroShotAccuracy(Metric):
    """Top-K accuracy and mean per-class recall of zero-shot logits over the whole evaluation set.

    ``compute()`` returns :func:`~lightning_sarclip.eval.classification.classification_metrics` of the
    accumulated logits (``{"top1", "top3", "top5", "mean_per_class"}``; ``topK`` is NaN when K exceeds the
    number of classes), or ``{}`` when no sample carried a class label. Samples with a negative target
    (multi-label scenes, caption-only data) are not scored. :attr:`num_samples` is the number scored.

    Args:
        topk: the K of top-K accuracy.
        kwargs: torchmetrics ``Metric`` options.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, topk: Sequence[int] = (1, 3, 5), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.topk = tuple(topk)
        self.num_samples: int | None = None
        self.add_state("logits", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")
        self.add_state("sample_index", default=[], dist_reduce_fx="cat")

    def update(self, logits: Tensor, targets: Tensor, index: Tensor | Sequence[int]) -> None:
        """Add ``(B, C)`` logits with ``(B,)`` integer targets (``< 0``: unlabelled, ignored) and ``(B,)`` indices."""
        if logits.ndim != 2 or logits.shape[1] == 0:
            raise ValueError(f"logits must have shape (B, C) with C > 0, got {tuple(logits.shape)}")
        batch = logits.shape[0]
        targets = torch.as_tensor(targets)
        if targets.ndim != 1 or targets.shape[0] != batch:
            raise ValueError(f"targets must have shape ({batch},), got {tuple(targets.shape)}")
        if targets.is_floating_point() or targets.dtype == torch.bool:
            raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")
        if self.logits and self.logits[0].shape[1] != logits.shape[1]:
            raise ValueError(f"number of classes changed from {self.logits[0].shape[1]} to {logits.shape[1]}")
        index = _check_index(index, batch).to(logits.device)
        labelled = (targets >= 0).to(logits.device)
        self.logits.append(logits.detach().float()[labelled])
        self.targets.append(targets.detach().long().to(logits.device)[labelled])
        self.sample_index.append(index[labelled])

    def compute(self) -> dict[str, float]:
        if self.update_count == 0:
            raise ValueError("ZeroShotAccuracy.compute() called before any update()")
        index = dim_zero_cat(self.sample_index)
        self.num_samples = 0
        if index.numel() == 0:
            return {}
        keep = first_occurrences(index)
        self.num_samples = int(keep.numel())
        logits, targets = dim_zero_cat(self.logits)[keep], dim_zero_cat(self.targets)[keep]
        # Kept for figures: the confusion matrix of exactly the samples the accuracies count (all ranks).
        self.confusion = confusion_matrix(logits, targets, logits.shape[1]).cpu()
        return classification_metrics(logits, targets, self.topk)

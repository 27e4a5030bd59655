"""Classification metrics with CLIP_benchmark semantics (top-K accuracy, mean per-class recall, confusion).

Why: zero-shot and linear-probe tables in the paper are computed the way CLIP_benchmark's
``zeroshot_classification.py`` does it, and these functions reproduce those numbers from logits alone:

* ``topK`` is the fraction of samples whose target is among the K highest logits (``torch.topk``; order among
  tied logits is implementation-defined, as in CLIP_benchmark). When K exceeds the number of classes the value
  is NaN, matching CLIP_benchmark, which reports ``acc5 = nan`` for datasets with fewer than 5 classes.
* ``mean_per_class`` is balanced accuracy: the argmax prediction's recall for each class that occurs in the
  targets, averaged over those classes. Classes absent from the targets are ignored (not counted as 0),
  which is what ``sklearn.metrics.balanced_accuracy_score`` (used by CLIP_benchmark) does. Argmax ties go to
  the lowest class index (``torch.argmax``), as in CLIP_benchmark.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["classification_metrics", "confusion_matrix"]


def _check_targets(targets: Tensor, num_samples: int, num_classes: int) -> Tensor:
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")
    if targets.ndim != 1 or targets.shape[0] != num_samples:
        raise ValueError(f"targets must have shape ({num_samples},), got {tuple(targets.shape)}")
    targets = targets.long()
    if num_samples and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
        raise ValueError(
            f"targets must lie in [0, {num_classes}), got range [{int(targets.min())}, {int(targets.max())}]"
        )
    return targets


def _check_logits(logits: Tensor) -> Tensor:
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(
            f"logits must have shape (num_samples, num_classes) with both > 0, got {tuple(logits.shape)}"
        )
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got dtype {logits.dtype}")
    return logits.detach().float()


def confusion_matrix(preds_or_logits: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """Count matrix ``cm[t, p]`` = number of samples with true class ``t`` predicted as ``p``.

    Args:
        preds_or_logits: ``(N,)`` integer predictions, or ``(N, num_classes)`` logits (argmax is taken,
            ties to the lowest index).
        targets: ``(N,)`` integer true classes in ``[0, num_classes)``.
        num_classes: ``C``; fixes the matrix size so classes never seen still get a row and column.

    Returns:
        ``(C, C)`` int64 tensor on the device of ``targets``: rows are true classes, columns predicted
        classes; it sums to ``N`` and its row sums are the per-class support.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(preds_or_logits, Tensor):
        raise TypeError(f"preds_or_logits must be a torch.Tensor, got {type(preds_or_logits).__name__}")
    if preds_or_logits.ndim == 2:
        if preds_or_logits.shape[1] != num_classes:
            raise ValueError(
                f"logits have {preds_or_logits.shape[1]} columns but num_classes is {num_classes}"
            )
        preds = preds_or_logits.detach().argmax(dim=1)
    elif preds_or_logits.ndim == 1:
        if preds_or_logits.is_floating_point() or preds_or_logits.dtype == torch.bool:
            raise ValueError(
                f"1-D predictions must be integer class indices, got dtype {preds_or_logits.dtype}"
            )
        preds = preds_or_logits.detach().long()
    else:
        raise ValueError(
            f"preds_or_logits must be (N,) predictions or (N, C) logits, got {tuple(preds_or_logits.shape)}"
        )
    targets = _check_targets(targets, preds.shape[0], num_classes)
    preds = preds.to(targets.device)
    if preds.numel() and (int(preds.min()) < 0 or int(preds.max()) >= num_classes):
        raise ValueError(
            f"predictions must lie in [0, {num_classes}), got range [{int(preds.min())}, {int(preds.max())}]"
        )
    flat = targets * num_classes + preds
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(
    logits: Tensor, targets: Tensor, topk: Sequence[int] = (1, 3, 5)
) -> dict[str, float]:
    """Top-K accuracies and mean per-class recall from ``(N, C)`` logits and ``(N,)`` targets.

    Returns ``{"top1": ..., "top3": ..., "top5": ..., "mean_per_class": ...}`` (one ``topK`` key per requested
    K, fractions in ``[0, 1]``). ``topK`` is NaN when ``K > C`` (CLIP_benchmark's acc5 convention for fewer
    than 5 classes). ``mean_per_class`` averages argmax recall over the classes present in ``targets`` only,
    so it equals ``sklearn.metrics.balanced_accuracy_score(targets, logits.argmax(1))``.
    """
    logits = _check_logits(logits)
    num_samples, num_classes = logits.shape
    targets = _check_targets(targets, num_samples, num_classes).to(logits.device)
    ks: list[int] = []
    for k in topk:
        try:
            value = 0 if isinstance(k, bool) else operator.index(k)
        except TypeError:
            value = 0
        if value < 1:
            raise ValueError(f"every K in topk must be a positive int, got {k!r}")
        ks.append(value)
    ks = list(dict.fromkeys(ks))
    if not ks:
        raise ValueError("topk must contain at least one K")

    metrics: dict[str, float] = {}
    valid = [k for k in ks if k <= num_classes]
    if valid:
        top = logits.topk(max(valid), dim=1, largest=True, sorted=True).indices  # (N, Kmax)
        correct = top.eq(targets[:, None])
    for k in ks:
        if k > num_classes:
            metrics[f"top{k}"] = float("nan")
        else:
            metrics[f"top{k}"] = correct[:, :k].any(dim=1).double().mean().item()

    cm = confusion_matrix(logits.argmax(dim=1), targets, num_classes).double()
    support = cm.sum(dim=1)
    present = support > 0
    metrics["mean_per_class"] = (cm.diagonal()[present] / support[present]).mean().item()
    return metrics

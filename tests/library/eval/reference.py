"""Reference implementations the metric tests compare against (not tests themselves).

The CLIP_benchmark functions are a faithful transcription of ``clip_benchmark/metrics/zeroshot_retrieval.py``
(``recall_at_k`` / ``batchify`` / the metric loop) and of its ``accuracy``; :class:`LargestTensor` records the
largest tensor any op produces, to check memory bounds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["LargestTensor", "cb_accuracy", "cb_recall_at_k", "cb_retrieval"]


def cb_recall_at_k(scores: torch.Tensor, positive_pairs: torch.Tensor, k: int) -> torch.Tensor:
    """CLIP_benchmark ``recall_at_k``: per-query fraction of positives found in the top k."""
    nb_texts, nb_images = scores.shape
    topk_indices = torch.topk(scores, k, dim=1)[1]
    nb_positive = positive_pairs.sum(dim=1)
    topk_indices_onehot = F.one_hot(topk_indices, num_classes=nb_images)
    positive_pairs_reshaped = positive_pairs.view(nb_texts, 1, nb_images)
    nb_true_positive = (topk_indices_onehot * positive_pairs_reshaped).sum(dim=(1, 2))
    return nb_true_positive / nb_positive


def cb_batchify(func, x, y, batch_size: int, *args, **kwargs) -> torch.Tensor:
    results = []
    for start in range(0, len(x), batch_size):
        end = start + batch_size
        results.append(func(x[start:end], y[start:end], *args, **kwargs).cpu())
    return torch.cat(results)


def cb_retrieval(images_emb, texts_emb, texts_image_index, recall_k_list, batch_size: int = 16) -> dict:
    """CLIP_benchmark's retrieval metric loop on (already computed) embeddings.

    One deliberate deviation: ``k`` is clamped to the number of keys, because CLIP_benchmark's ``torch.topk``
    raises when k exceeds it; with the clamp "top k" is "all keys", the natural meaning (recall 1).
    """
    images_emb = F.normalize(images_emb.float(), dim=-1)
    texts_emb = F.normalize(texts_emb.float(), dim=-1)
    texts_image_index = torch.as_tensor(texts_image_index)
    scores = texts_emb @ images_emb.t()
    positive_pairs = torch.zeros_like(scores, dtype=torch.bool)
    positive_pairs[torch.arange(len(scores)), texts_image_index] = True
    nb_texts, nb_images = scores.shape
    metrics = {}
    for k in recall_k_list:
        metrics[f"image_retrieval_recall@{k}"] = (
            (cb_batchify(cb_recall_at_k, scores, positive_pairs, batch_size, k=min(k, nb_images)) > 0)
            .float()
            .mean()
            .item()
        )
        metrics[f"text_retrieval_recall@{k}"] = (
            (cb_batchify(cb_recall_at_k, scores.T, positive_pairs.T, batch_size, k=min(k, nb_texts)) > 0)
            .float()
            .mean()
            .item()
        )
    return metrics


def cb_accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[float]:
    """CLIP_benchmark ``accuracy`` (top-k hits over all samples)."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    n = len(target)
    # CLIP_benchmark wraps this sum in float(...numpy()), which numpy>=2 rejects for 1-element arrays; .item()
    # is the same value.
    return [correct[:k].reshape(-1).float().sum(0, keepdim=True).item() / n for k in topk]


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces, to check that no N x M score matrix is ever built."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out

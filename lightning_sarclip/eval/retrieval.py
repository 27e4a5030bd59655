"""Exact, memory-bounded image<->text retrieval recall (CLIP_benchmark semantics).

Why this module exists: the paper tables report retrieval recall as computed by CLIP_benchmark
(``clip_benchmark/metrics/zeroshot_retrieval.py``), which materialises the full ``M x N`` caption x image
score matrix plus an ``M x N`` boolean positive-pair matrix and a one-hot ``M x K x N`` tensor per batch.
That does not scale to large SAR test sets, so we compute the *same numbers* from per-query ranks, one
chunk of queries at a time, never holding more than ``chunk x max(N, M)`` scores.

Semantics (identical to CLIP_benchmark for inputs without score ties):

* Features are L2-normalised here, so scores are cosine similarities, computed in float32 whatever the input
  dtype (float16/bfloat16 embeddings are upcast), on the device of ``image_features``.
* ``text_to_image[j]`` is the index of the image that caption ``j`` describes. An image may have several
  captions and must have at least one.
* image -> text (``i2t``, "text retrieval"): each image queries all ``M`` captions; it is a hit at K if ANY of
  its captions is among the top K. CLIP_benchmark computes per-image recall and then ``(recall > 0)``, which
  is the same "any positive" rule.
* text -> image (``t2i``, "image retrieval"): each caption queries all ``N`` images; it is a hit at K if its
  image is among the top K.
* ``mean_recall`` is the mean of all requested ``i2t_R@K`` and ``t2i_R@K`` values (the paper's "mean recall").

Key names and their equivalents elsewhere:

================  ==================================  =========================
this module       CLIP_benchmark                      open_clip (training eval)
================  ==================================  =========================
``i2t_R@K``       ``text_retrieval_recall@K``         ``image_to_text_R@K``
``t2i_R@K``       ``image_retrieval_recall@K``        ``text_to_image_R@K``
================  ==================================  =========================

(open_clip's own ``get_clip_metrics`` assumes exactly one caption per image; with one caption per image all
three agree.)

Rank and tie rule: the rank of a query is the number of keys whose score is STRICTLY greater than the score
of its best positive (for i2t the maximum over the image's captions, for t2i its single image). A query is a
hit at K iff ``rank < K``. Keys tied with the best positive therefore never push it down: ties are resolved
optimistically, in favour of the positive. CLIP_benchmark uses ``torch.topk``, whose order among tied scores
is implementation-defined, so the two can differ only when a positive is tied with a negative exactly at the
K boundary (this does not happen with real-valued embeddings in practice). When K exceeds the number of keys,
every query is a hit (CLIP_benchmark's ``topk`` would raise instead).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["chance_recall_at_k", "recall_at_k", "retrieval_ranks"]

#: Budget for one block of float32 scores when ``chunk_size`` is not given (64 MiB).
DEFAULT_SCORE_BLOCK_BYTES = 64 * 1024 * 1024


def _check_features(name: str, features: Tensor) -> None:
    if not isinstance(features, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(features).__name__}")
    if features.ndim != 2:
        raise ValueError(f"{name} must have shape (num, dim), got shape {tuple(features.shape)}")
    if features.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(features.shape)})")
    if not features.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {features.dtype}")
    if not bool(torch.isfinite(features).all()):
        # NaN scores compare False against everything, which would silently count as a perfect hit.
        raise ValueError(f"{name} contains NaN or infinite values")


def _format_indices(indices: Tensor, limit: int = 10) -> str:
    values = indices.tolist()
    shown = ", ".join(str(v) for v in values[:limit])
    more = f", ... ({len(values)} in total)" if len(values) > limit else ""
    return f"[{shown}{more}]"


def _as_index_tensor(text_to_image: Tensor | Sequence[int], num_texts: int, num_images: int) -> Tensor:
    """Validate ``text_to_image`` and return it as a CPU int64 tensor of shape ``(M,)``.

    Accepts a tensor, a list/tuple of ints or any array ``torch.as_tensor`` understands (e.g. numpy int
    arrays).
    """
    try:
        index = torch.as_tensor(text_to_image).detach()
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"text_to_image must be a sequence of integer image indices: {err}") from None
    if index.ndim != 1 or index.numel() != num_texts:
        raise ValueError(
            f"text_to_image must have shape ({num_texts},) (one image index per caption), "
            f"got {tuple(index.shape)}"
        )
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise ValueError(f"text_to_image must hold integer image indices, got dtype {index.dtype}")
    index = index.to("cpu", torch.long)
    bad = ((index < 0) | (index >= num_images)).nonzero().flatten()
    if bad.numel():
        raise ValueError(
            f"text_to_image has image indices outside [0, {num_images}) at caption positions "
            f"{_format_indices(bad)}: values {_format_indices(index[bad])}"
        )
    counts = torch.bincount(index, minlength=num_images)
    missing = (counts == 0).nonzero().flatten()
    if missing.numel():
        raise ValueError(
            f"every image needs at least one caption; images without captions: {_format_indices(missing)}"
        )
    return index


#: Rows with fewer keys than this are counted in float32, where sums of 0/1 values are exact.
_FLOAT_COUNT_LIMIT = 2**24


def _count_above_(scores: Tensor, threshold: Tensor) -> Tensor:
    """Per row, how many entries of ``scores`` are strictly greater than ``threshold[row]``; clobbers ``scores``.

    Why in place and in float: the ranking pass runs once per score, right after the matmul, and a fresh bool
    mask summed into int64 (a cast copy per element) costs as much again as half the matmul on a CPU.
    Comparing in place and summing the 0/1 floats keeps it a single cheap pass over the block.
    """
    if scores.shape[1] < _FLOAT_COUNT_LIMIT:
        return scores.gt_(threshold[:, None]).sum(dim=1).long()
    return (scores > threshold[:, None]).sum(dim=1)


def _resolve_chunk(chunk_size: int | None, num_keys: int) -> int:
    if chunk_size is None:
        return max(1, DEFAULT_SCORE_BLOCK_BYTES // (4 * num_keys))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return chunk_size


def retrieval_ranks(
    image_features: Tensor,
    text_features: Tensor,
    text_to_image: Tensor | Sequence[int],
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Rank of the best positive for every query, in both directions, computed chunk by chunk.

    Returns ``(i2t_ranks, t2i_ranks)``: int64 CPU tensors of shape ``(N,)`` and ``(M,)``. ``i2t_ranks[i]`` is
    the number of captions scoring strictly higher against image ``i`` than the best of image ``i``'s own
    captions; ``t2i_ranks[j]`` is the number of images scoring strictly higher against caption ``j`` than its
    own image. Rank 0 means the positive is (possibly jointly) first; a query is a hit at K iff ``rank < K``.
    Exposed so callers can derive other rank statistics (median rank, MRR) from the same pass.

    Memory is ``O(chunk_size x max(N, M))``; with ``chunk_size=None`` the chunk is chosen so one float32 score
    block stays within :data:`DEFAULT_SCORE_BLOCK_BYTES`. See the module docstring for the full semantics.
    """
    _check_features("image_features", image_features)
    _check_features("text_features", text_features)
    if image_features.shape[1] != text_features.shape[1]:
        raise ValueError(
            f"image_features and text_features must share the embedding dim, got {image_features.shape[1]} "
            f"and {text_features.shape[1]}"
        )
    num_images, num_texts = image_features.shape[0], text_features.shape[0]
    index_cpu = _as_index_tensor(text_to_image, num_texts, num_images)

    device = image_features.device
    with torch.no_grad():
        images = F.normalize(image_features.detach().to(device, torch.float32), dim=-1)
        texts = F.normalize(text_features.detach().to(device, torch.float32), dim=-1)
        index = index_cpu.to(device)

        # CSR grouping of captions by image: captions of image i are caption_order[offsets[i]:offsets[i + 1]].
        counts = torch.bincount(index_cpu, minlength=num_images)
        offsets = torch.zeros(num_images + 1, dtype=torch.long)
        torch.cumsum(counts, dim=0, out=offsets[1:])
        caption_order = torch.argsort(index, stable=True)
        counts_dev = counts.to(device)

        # image -> text: queries are images, keys are all M captions.
        i2t_ranks = torch.empty(num_images, dtype=torch.long)
        chunk = _resolve_chunk(chunk_size, num_texts)
        block = torch.empty(min(chunk, num_images), num_texts, device=device)
        for start in range(0, num_images, chunk):
            stop = min(start + chunk, num_images)
            scores = torch.mm(images[start:stop], texts.T, out=block[: stop - start])  # (c, M)
            lo, hi = int(offsets[start]), int(offsets[stop])
            cols = caption_order[lo:hi]
            rows = torch.repeat_interleave(torch.arange(stop - start, device=device), counts_dev[start:stop])
            best = torch.full((stop - start,), float("-inf"), device=device, dtype=scores.dtype)
            best = best.scatter_reduce(0, rows, scores[rows, cols], reduce="amax", include_self=True)
            i2t_ranks[start:stop] = _count_above_(scores, best).cpu()
        del block

        # text -> image: queries are captions, keys are all N images.
        t2i_ranks = torch.empty(num_texts, dtype=torch.long)
        chunk = _resolve_chunk(chunk_size, num_images)
        block = torch.empty(min(chunk, num_texts), num_images, device=device)
        for start in range(0, num_texts, chunk):
            stop = min(start + chunk, num_texts)
            scores = torch.mm(texts[start:stop], images.T, out=block[: stop - start])  # (c, N)
            positive = scores.gather(1, index[start:stop, None]).squeeze(1)
            t2i_ranks[start:stop] = _count_above_(scores, positive).cpu()
        del block

    return i2t_ranks, t2i_ranks


def _check_ks(ks: Sequence[int]) -> list[int]:
    checked: list[int] = []
    for k in ks:
        value = _positive_int(k)
        if value is None:
            raise ValueError(f"every K in ks must be a positive int, got {k!r}")
        checked.append(value)
    if not checked:
        raise ValueError("ks must contain at least one K")
    return list(dict.fromkeys(checked))


def _positive_int(value: object) -> int | None:
    """``int(value)`` for positive integers (Python or numpy/torch integer scalars), else ``None``."""
    if isinstance(value, bool):
        return None
    try:
        number = operator.index(value)
    except TypeError:
        return None
    return number if number >= 1 else None


def recall_at_k(
    image_features: Tensor,
    text_features: Tensor,
    text_to_image: Tensor | Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Image->text and text->image Recall@K, exactly as CLIP_benchmark defines them, in bounded memory.

    Args:
        image_features: ``(N, D)`` image embeddings (any float dtype; normalised here).
        text_features: ``(M, D)`` caption embeddings (any float dtype; normalised here).
        text_to_image: ``(M,)`` index of each caption's image; every image needs at least one caption.
        ks: the K values to report (positive ints; duplicates are reported once).
        chunk_size: queries scored per block; ``None`` picks one keeping a score block within ~64 MiB.

    Returns:
        ``{"i2t_R@K": ..., "t2i_R@K": ..., "mean_recall": ...}`` with fractions in ``[0, 1]``; ``mean_recall``
        is the mean over all reported i2t and t2i values. i2t counts an image as a hit when ANY of its
        captions is in the top K (CLIP_benchmark's ``text_retrieval_recall@K``); t2i is CLIP_benchmark's
        ``image_retrieval_recall@K``. Ties are resolved in favour of the positive (see module docstring).

    Raises:
        ValueError: on shape/dtype mismatches, non-finite features, out-of-range caption indices, images
            without captions, or invalid ``ks``/``chunk_size``.
    """
    ks = _check_ks(ks)
    i2t_ranks, t2i_ranks = retrieval_ranks(image_features, text_features, text_to_image, chunk_size)
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"i2t_R@{k}"] = (i2t_ranks < k).double().mean().item()
    for k in ks:
        metrics[f"t2i_R@{k}"] = (t2i_ranks < k).double().mean().item()
    values = [metrics[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in ks]
    metrics["mean_recall"] = sum(values) / len(values)
    return metrics


def chance_recall_at_k(captions_per_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Expected ``recall_at_k`` of random scores, with the same keys: the floor a trained model is judged against.

    t2i: the query's one image lands in the top K of N with probability ``K / N``. i2t: at least one of the
    image's ``c`` captions lands in the top K of M with probability ``1 - C(M - c, K) / C(M, K)``, averaged
    over images.
    """
    counts = [int(c) for c in captions_per_image]
    if not counts or min(counts) < 1:
        raise ValueError("captions_per_image: need at least one image, each with at least one caption")
    n, m = len(counts), sum(counts)
    result: dict[str, float] = {}
    for k in _check_ks(ks):
        miss = [math.comb(m - c, k) / math.comb(m, k) if k <= m else 0.0 for c in counts]
        result[f"i2t_R@{k}"] = 1.0 - sum(miss) / n
    for k in _check_ks(ks):
        result[f"t2i_R@{k}"] = min(1.0, k / n)
    result["mean_recall"] = sum(result.values()) / len(result)
    return result

"""Exact, memory-bounded image<->text retrieval recall (CLIP_benchmark semantics, honest about score ties).

Why this module exists: the paper tables report retrieval recall as computed by CLIP_benchmark
(``clip_benchmark/metrics/zeroshot_retrieval.py``), which materialises the full ``M x N`` caption x image
score matrix plus an ``M x N`` boolean positive-pair matrix and a one-hot ``M x K x N`` tensor per batch.
That does not scale to large SAR test sets, so we compute the *same numbers* from per-query rank counts, one
chunk of queries at a time, never holding more than ``chunk x max(N, M)`` scores (plus a boolean mask of the
same shape).

Semantics (identical to CLIP_benchmark whenever no key is tied with a query's best positive):

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
* ``i2t_tied_queries`` / ``t2i_tied_queries`` count the queries whose best positive score is exactly equal to
  the score of at least one negative key, i.e. the queries where the tie rule below matters.

Key names and their equivalents elsewhere:

================  ==================================  =========================
this module       CLIP_benchmark                      open_clip (training eval)
================  ==================================  =========================
``i2t_R@K``       ``text_retrieval_recall@K``         ``image_to_text_R@K``
``t2i_R@K``       ``image_retrieval_recall@K``        ``text_to_image_R@K``
================  ==================================  =========================

(open_clip's own ``get_clip_metrics`` assumes exactly one caption per image; with one caption per image all
three agree.)

Rank and tie rule. For one query let ``s*`` be the score of its best positive (for i2t the maximum over the
image's captions, for t2i its single image), ``g`` the number of keys scoring strictly above ``s*`` (all of
them negatives), ``p >= 1`` the number of positives scoring exactly ``s*`` and ``n`` the number of negatives
scoring exactly ``s*`` (float32 equality is the tie criterion). A ranking must put the ``p + n`` tied keys in
some order, and the rule decides which:

* ``ties="expected"`` (default): the tied keys are taken in a uniformly random order and the query counts the
  *probability* that it is a hit. With ``X`` the number of tied negatives ahead of the first tied positive,
  ``P(X >= x) = prod_{i<x} (n - i) / (n + p - i)`` and the query's hit at K is ``P(g + X < K)``, a fraction in
  ``[0, 1]`` computed exactly (not sampled), so the result is deterministic. Its expected rank is
  ``g + n / (p + 1)``. This is what CLIP_benchmark's ``torch.topk`` would score on average if it broke ties at
  random, and it gives chance-level recall to a model that scores every key the same.
* ``ties="pessimistic"``: every tied negative goes first (rank ``g + n``); a lower bound.
* ``ties="optimistic"``: every tied negative goes last (rank ``g``); an upper bound. This was this module's
  only rule before; it gives R@K = 1 to a text tower that returns one constant vector, because generated
  captions repeat word for word and exact ties are then the rule, not the exception.

Without ties (``n = 0``) all three agree with each other and with CLIP_benchmark, whose ``torch.topk`` order
among tied scores is implementation-defined. When K exceeds the number of keys, every query is a hit
(CLIP_benchmark's ``topk`` would raise instead).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "TIE_RULES",
    "RankCounts",
    "TieRule",
    "chance_recall_at_k",
    "recall_at_k",
    "retrieval_rank_counts",
    "retrieval_ranks",
]

#: Budget for one block of float32 scores when ``chunk_size`` is not given (64 MiB).
DEFAULT_SCORE_BLOCK_BYTES = 64 * 1024 * 1024

#: How a query's best positive is ranked among keys with exactly the same score (see the module docstring).
TieRule = Literal["expected", "pessimistic", "optimistic"]
TIE_RULES: tuple[str, ...] = get_args(TieRule)


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


#: Rows with fewer keys than this are counted in float32, where sums of -1/0/+1 values are exact.
_FLOAT_COUNT_LIMIT = 2**24


def _count_above_and_tied_(scores: Tensor, threshold: Tensor, tied_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per row, how many entries of ``scores`` are ``>`` and ``==`` ``threshold[row]``; clobbers both buffers.

    ``tied_mask`` is a bool scratch buffer of the shape of ``scores``. Why this shape of computation: the
    counting pass runs once per score, right after the matmul, and summing a bool mask (an int64 reduction
    with a cast per element) costs several times as much as summing floats on a CPU. So both exact
    comparisons are folded into the score block itself, as +1 (above), -1 (tied) and 0 (below): its row sum
    is ``above - tied`` and its absolute row sum is ``above + tied``. Comparisons, not a subtraction, set the
    signs, so a tie is exact float equality even where denormals are flushed to zero.
    """
    thr = threshold[:, None]
    if scores.shape[1] >= _FLOAT_COUNT_LIMIT:
        return (scores > thr).sum(dim=1), (scores == thr).sum(dim=1)
    torch.eq(scores, thr, out=tied_mask)
    signed = scores.gt_(thr).masked_fill_(tied_mask, -1.0)
    difference = signed.sum(dim=1).long()
    total = signed.abs_().sum(dim=1).long()
    return (total + difference) // 2, (total - difference) // 2


def _resolve_chunk(chunk_size: int | None, num_keys: int) -> int:
    if chunk_size is None:
        return max(1, DEFAULT_SCORE_BLOCK_BYTES // (4 * num_keys))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return chunk_size


class RankCounts(NamedTuple):
    """Per-query counts that fix a query's rank under every tie rule: int64 CPU tensors, one entry per query.

    * ``greater``: keys scoring strictly above the query's best positive (necessarily negatives). This is the
      optimistic rank.
    * ``tied_positives``: positives scoring exactly the best positive's score (``>= 1``: the best one counts).
    * ``tied_negatives``: negatives scoring exactly the best positive's score. The pessimistic rank is
      ``greater + tied_negatives``; the expected rank under a uniformly random order of the tied keys is
      ``greater + tied_negatives / (tied_positives + 1)``.
    """

    greater: Tensor
    tied_positives: Tensor
    tied_negatives: Tensor


def retrieval_rank_counts(
    image_features: Tensor,
    text_features: Tensor,
    text_to_image: Tensor | Sequence[int],
    chunk_size: int | None = None,
) -> tuple[RankCounts, RankCounts]:
    """:class:`RankCounts` of the best positive of every query, in both directions, computed chunk by chunk.

    Returns ``(i2t, t2i)``: ``i2t`` has one entry per image (queries over all ``M`` captions, positives = the
    image's captions), ``t2i`` one per caption (queries over all ``N`` images, the single positive = its
    image, so ``t2i.tied_positives`` is all ones). Exposed so callers can derive other tie-aware rank
    statistics (median rank, MRR) from the same pass; :func:`recall_at_k` is built on it.

    Memory is ``O(chunk_size x max(N, M))``: one float32 score block plus a bool mask of the same shape. With
    ``chunk_size=None`` the chunk is chosen so the score block stays within :data:`DEFAULT_SCORE_BLOCK_BYTES`.
    See the module docstring for the full semantics.
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
        i2t = RankCounts(*(torch.empty(num_images, dtype=torch.long) for _ in RankCounts._fields))
        chunk = _resolve_chunk(chunk_size, num_texts)
        block = torch.empty(min(chunk, num_images), num_texts, device=device)
        mask = torch.empty(block.shape, dtype=torch.bool, device=device)
        for start in range(0, num_images, chunk):
            stop = min(start + chunk, num_images)
            scores = torch.mm(images[start:stop], texts.T, out=block[: stop - start])  # (c, M)
            lo, hi = int(offsets[start]), int(offsets[stop])
            cols = caption_order[lo:hi]
            rows = torch.repeat_interleave(torch.arange(stop - start, device=device), counts_dev[start:stop])
            positive = scores[rows, cols]  # a copy: read before the counting pass overwrites the block
            best = torch.full((stop - start,), float("-inf"), device=device, dtype=scores.dtype)
            best = best.scatter_reduce(0, rows, positive, reduce="amax", include_self=True)
            tied_pos = torch.zeros(stop - start, dtype=torch.long, device=device)
            tied_pos.scatter_add_(0, rows, (positive == best[rows]).long())
            above, tied = _count_above_and_tied_(scores, best, mask[: stop - start])
            i2t.greater[start:stop] = above.cpu()
            i2t.tied_positives[start:stop] = tied_pos.cpu()
            i2t.tied_negatives[start:stop] = (tied - tied_pos).cpu()
        del block, mask

        # text -> image: queries are captions, keys are all N images.
        t2i = RankCounts(
            torch.empty(num_texts, dtype=torch.long),
            torch.ones(num_texts, dtype=torch.long),
            torch.empty(num_texts, dtype=torch.long),
        )
        chunk = _resolve_chunk(chunk_size, num_images)
        block = torch.empty(min(chunk, num_texts), num_images, device=device)
        mask = torch.empty(block.shape, dtype=torch.bool, device=device)
        for start in range(0, num_texts, chunk):
            stop = min(start + chunk, num_texts)
            scores = torch.mm(texts[start:stop], images.T, out=block[: stop - start])  # (c, N)
            positive = scores.gather(1, index[start:stop, None]).squeeze(1)
            above, tied = _count_above_and_tied_(scores, positive, mask[: stop - start])
            t2i.greater[start:stop] = above.cpu()
            t2i.tied_negatives[start:stop] = (tied - 1).cpu()  # the positive itself is the one tied positive
        del block, mask

    return i2t, t2i


def retrieval_ranks(
    image_features: Tensor,
    text_features: Tensor,
    text_to_image: Tensor | Sequence[int],
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Optimistic rank of the best positive for every query, in both directions, computed chunk by chunk.

    Returns ``(i2t_ranks, t2i_ranks)``: int64 CPU tensors of shape ``(N,)`` and ``(M,)``. ``i2t_ranks[i]`` is
    the number of captions scoring strictly higher against image ``i`` than the best of image ``i``'s own
    captions; ``t2i_ranks[j]`` is the number of images scoring strictly higher against caption ``j`` than its
    own image. This is ``RankCounts.greater`` of :func:`retrieval_rank_counts`: exact (and equal to
    CLIP_benchmark's rank) for queries without ties, but it ignores keys tied with the positive, i.e. resolves
    ties in its favour. For tie-aware statistics use :func:`retrieval_rank_counts`; :func:`recall_at_k` does.
    """
    i2t, t2i = retrieval_rank_counts(image_features, text_features, text_to_image, chunk_size)
    return i2t.greater, t2i.greater


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


def _check_ties(ties: object) -> TieRule:
    if not isinstance(ties, str) or ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {', '.join(map(repr, TIE_RULES))}; got {ties!r}")
    return ties  # type: ignore[return-value]  # narrowed to the Literal by the membership test


def _hit_probability(counts: RankCounts, k: int, ties: TieRule) -> Tensor:
    """Per query, the probability (float64, 0 or 1 without ties) that a positive is within the top ``k``."""
    greater, tied_positives, tied_negatives = counts
    if ties == "optimistic":
        return (greater < k).double()
    if ties == "pessimistic":
        return (greater + tied_negatives < k).double()
    # How many tied negatives may precede the first tied positive before it drops out of the top k.
    room = (k - greater).clamp_(min=0)
    # room 0: a sure miss; room beyond every tied negative: a sure hit; in between it depends on the order.
    hit = (room > tied_negatives).double()
    partial = ((room > 0) & (room <= tied_negatives)).nonzero().flatten()
    if partial.numel():
        x = room[partial]
        n, p = tied_negatives[partial].double(), tied_positives[partial].double()
        # P(X >= x) = prod_{i<x} (n - i) / (n + p - i), X = tied negatives drawn before the first positive.
        # An exact running product rather than a sampled order, so the metric is deterministic; x <= k, so it
        # takes at most k vectorised steps, over the tied queries only. Every factor is positive as x <= n.
        survive = torch.ones_like(n)
        for i in range(int(x.max())):
            survive = torch.where(x > i, survive * ((n - i) / (n + p - i)), survive)
        hit[partial] = 1.0 - survive
    return hit


def recall_at_k(
    image_features: Tensor,
    text_features: Tensor,
    text_to_image: Tensor | Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int | None = None,
    ties: TieRule = "expected",
) -> dict[str, float]:
    """Image->text and text->image Recall@K as CLIP_benchmark defines them, in bounded memory, fair to ties.

    Args:
        image_features: ``(N, D)`` image embeddings (any float dtype; normalised here).
        text_features: ``(M, D)`` caption embeddings (any float dtype; normalised here).
        text_to_image: ``(M,)`` index of each caption's image; every image needs at least one caption.
        ks: the K values to report (positive ints; duplicates are reported once).
        chunk_size: queries scored per block; ``None`` picks one keeping a score block within ~64 MiB.
        ties: how keys scoring exactly the best positive's score are ordered: ``"expected"`` (default; the
            exact expectation over a uniformly random order of the tied keys), ``"pessimistic"`` (tied
            negatives first) or ``"optimistic"`` (tied negatives last). See the module docstring.

    Returns:
        ``{"i2t_R@K": ..., "t2i_R@K": ..., "mean_recall": ..., "i2t_tied_queries": ..., "t2i_tied_queries": ...}``.
        The recalls are fractions in ``[0, 1]``; ``mean_recall`` is the mean over the reported i2t and t2i
        recalls only. i2t counts an image as a hit when ANY of its captions is in the top K (CLIP_benchmark's
        ``text_retrieval_recall@K``); t2i is CLIP_benchmark's ``image_retrieval_recall@K``. Without ties every
        rule gives CLIP_benchmark's numbers. ``*_tied_queries`` are ints: the number of queries whose best
        positive is tied with at least one negative (where ``ties`` changes the result).

    Raises:
        ValueError: on shape/dtype mismatches, non-finite features, out-of-range caption indices, images
            without captions, or invalid ``ks``/``chunk_size``/``ties``.
    """
    ks = _check_ks(ks)
    ties = _check_ties(ties)
    i2t, t2i = retrieval_rank_counts(image_features, text_features, text_to_image, chunk_size)
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"i2t_R@{k}"] = _hit_probability(i2t, k, ties).mean().item()
    for k in ks:
        metrics[f"t2i_R@{k}"] = _hit_probability(t2i, k, ties).mean().item()
    values = [metrics[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in ks]
    metrics["mean_recall"] = sum(values) / len(values)
    metrics["i2t_tied_queries"] = int((i2t.tied_negatives > 0).sum())
    metrics["t2i_tied_queries"] = int((t2i.tied_negatives > 0).sum())
    return metrics


def chance_recall_at_k(captions_per_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Expected ``recall_at_k`` of random scores: the floor a trained model is judged against.

    Same recall keys and ``mean_recall`` as :func:`recall_at_k` (no ``*_tied_queries``). t2i: the query's one
    image lands in the top K of N with probability ``K / N``. i2t: at least one of the image's ``c`` captions
    lands in the top K of M with probability ``1 - C(M - c, K) / C(M, K)``, averaged over images. This is also
    exactly what :func:`recall_at_k` (``ties="expected"``) gives a model that scores every key the same.
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

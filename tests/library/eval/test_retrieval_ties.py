"""Recall@K under exact score ties: expected value over a random tie order, with pessimistic/optimistic bounds.

Why these tests exist: generated captions repeat word for word across the images of a class, so exact score
ties are common, and the old rule (a key tied with the positive never counts against it) gave a text tower
that returns one constant vector an image-to-text R@K of 1.0. The references here are independent of the
implementation: the closed-form chance level, a transcription of CLIP_benchmark's ``topk`` definition, and an
exhaustive average over every order of the keys.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from lightning_sarclip.eval.retrieval import (
    TIE_RULES,
    chance_recall_at_k,
    recall_at_k,
    retrieval_rank_counts,
    retrieval_ranks,
)
from tests.library.eval.reference import LargestTensor, cb_retrieval

KS = (1, 5, 10)


def _recalls(metrics: dict[str, float]) -> dict[str, float]:
    """The ``R@K`` entries and ``mean_recall`` (what :func:`chance_recall_at_k` reports)."""
    return {key: value for key, value in metrics.items() if "_R@" in key or key == "mean_recall"}


def _caption_index(counts: list[int]) -> torch.Tensor:
    """``text_to_image`` for ``counts[i]`` captions of image ``i``, in a shuffled caption order."""
    index = torch.arange(len(counts)).repeat_interleave(torch.tensor(counts))
    return index[torch.randperm(len(index), generator=torch.Generator().manual_seed(0))]


# ----------------------------------------------------------------------------------------------------
# a collapsed tower scores at chance, not at 1.0
# ----------------------------------------------------------------------------------------------------


def test_constant_text_tower_gives_chance_level_image_to_text():
    counts = [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 3, 3]
    num_images, num_texts = len(counts), sum(counts)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(num_images, 16, generator=gen)
    texts = torch.randn(1, 16, generator=gen).expand(num_texts, 16).contiguous()  # every caption embeds alike
    t2i = _caption_index(counts)
    chance = chance_recall_at_k(counts, ks=KS)
    for chunk_size in (None, 1, 5):
        out = recall_at_k(images, texts, t2i, ks=KS, chunk_size=chunk_size)
        assert out["i2t_tied_queries"] == num_images  # every image sees all M captions tied
        for k in KS:
            # Independent of chance_recall_at_k: miss iff all K of the image's top-K slots go to the M - c others.
            exact = (
                sum(1 - math.comb(num_texts - c, k) / math.comb(num_texts, k) for c in counts) / num_images
            )
            assert out[f"i2t_R@{k}"] == pytest.approx(exact, abs=1e-12), k
            assert out[f"i2t_R@{k}"] == pytest.approx(chance[f"i2t_R@{k}"], abs=1e-12), k
            assert out[f"i2t_R@{k}"] < 1.0
    # The bounds bracket it; the old (optimistic) rule is the one that called a collapsed tower perfect.
    assert recall_at_k(images, texts, t2i, ks=KS, ties="optimistic")["i2t_R@1"] == 1.0
    assert recall_at_k(images, texts, t2i, ks=KS, ties="pessimistic")["i2t_R@1"] == 0.0


def test_constant_image_tower_gives_chance_level_text_to_image():
    counts = [2, 1, 3, 2, 2, 1, 4, 2]  # 8 images: K = 10 exceeds N, a sure hit
    num_images, num_texts = len(counts), sum(counts)
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(1, 16, generator=gen).expand(num_images, 16).contiguous()
    texts = torch.randn(num_texts, 16, generator=gen)
    t2i = _caption_index(counts)
    chance = chance_recall_at_k(counts, ks=KS)
    for chunk_size in (None, 1, 3):
        out = recall_at_k(images, texts, t2i, ks=KS, chunk_size=chunk_size)
        assert out["t2i_tied_queries"] == num_texts
        for k in KS:
            assert out[f"t2i_R@{k}"] == pytest.approx(min(1.0, k / num_images), abs=1e-12), k
            assert out[f"t2i_R@{k}"] == pytest.approx(chance[f"t2i_R@{k}"], abs=1e-12), k


def test_both_towers_constant_equal_chance_recall_exactly():
    counts = [3, 1, 2, 5, 1, 4, 2, 2, 3, 1, 2]
    t2i = _caption_index(counts)
    out = recall_at_k(torch.ones(len(counts), 4), torch.ones(sum(counts), 4), t2i, ks=(1, 2, 5, 30))
    assert _recalls(out) == pytest.approx(chance_recall_at_k(counts, ks=(1, 2, 5, 30)), abs=1e-12)
    assert out["mean_recall"] < 0.5  # the old rule gave 1.0 everywhere
    assert (out["i2t_tied_queries"], out["t2i_tied_queries"]) == (len(counts), sum(counts))


# ----------------------------------------------------------------------------------------------------
# without ties: CLIP_benchmark's numbers, whatever the rule
# ----------------------------------------------------------------------------------------------------


def _cb_retrieval(images: torch.Tensor, texts: torch.Tensor, text_to_image: torch.Tensor, ks) -> dict[str, float]:
    """CLIP_benchmark's numbers under this module's key names."""
    ref = cb_retrieval(images, texts, text_to_image, ks)
    return {name: ref[f"{cb}_retrieval_recall@{k}"] for k in ks
            for name, cb in ((f"t2i_R@{k}", "image"), (f"i2t_R@{k}", "text"))}


@pytest.mark.parametrize("ties", TIE_RULES)
@pytest.mark.parametrize("chunk_size", [None, 1, 7])
def test_tie_free_features_match_clip_benchmark(ties, chunk_size):
    gen = torch.Generator().manual_seed(3)
    counts = torch.randint(1, 5, (41,), generator=gen)
    images = torch.randn(41, 16, generator=gen)
    t2i = _caption_index(counts.tolist())
    texts = images[t2i] + 1.5 * torch.randn(len(t2i), 16, generator=gen)
    out = recall_at_k(images, texts, t2i, ks=KS, chunk_size=chunk_size, ties=ties)
    ref = _cb_retrieval(images, texts, t2i, KS)
    assert out["i2t_tied_queries"] == out["t2i_tied_queries"] == 0
    for key, value in ref.items():
        assert out[key] == pytest.approx(value, abs=1e-6), key
    assert 0.0 < out["i2t_R@1"] < 1.0 and 0.0 < out["t2i_R@5"] < 1.0  # a regime where ranks matter
    assert out["mean_recall"] == pytest.approx(sum(ref.values()) / len(ref))


# ----------------------------------------------------------------------------------------------------
# brute force: the average over every order of the keys
# ----------------------------------------------------------------------------------------------------


def _four_squares(total: int) -> list[int]:
    """Four non-negative ints whose squares sum to ``total`` (Lagrange: always possible)."""
    bound = math.isqrt(total)
    for a in range(bound + 1):
        for b in range(a, bound + 1):
            for c in range(b, bound + 1):
                rest = total - a * a - b * b - c * c
                if rest >= 0 and math.isqrt(rest) ** 2 == rest:
                    return [a, b, c, math.isqrt(rest)]
    raise AssertionError(total)


def _features_with_scores(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features whose cosine score (image i, caption j) is ``values[i, j] / sqrt(S)`` exactly, S shared by all.

    Images are one-hot, so a score is one coordinate of a normalised caption; captions are integer vectors
    padded with four integers to the same squared norm S, so they share one (exactly computed) norm. Equal
    integers then give bitwise-equal float scores, and distinct ones distinct scores, in either direction.
    """
    num_images, num_texts = values.shape
    target = int((values**2).sum(0).max()) + 1
    pads = [_four_squares(target - int((values[:, j] ** 2).sum())) for j in range(num_texts)]
    texts = torch.cat([values.T.float(), torch.tensor(pads, dtype=torch.float32)], dim=1)
    images = torch.eye(num_images, texts.shape[1])
    return images, texts


def _brute_force(values: torch.Tensor, positives: torch.Tensor, k: int) -> tuple[float, float, float]:
    """(mean, min, max) over all key orders consistent with the scores of the per-query hit at ``k``, averaged.

    ``values`` (Q, L) integer scores, ``positives`` (Q, L) bool. Each permutation of the L keys breaks every
    tie (at every score level, not only the positive's), all L! equally likely: the exact expectation.
    """
    num_queries, num_keys = values.shape
    priority = torch.tensor(list(itertools.permutations(range(num_keys))))  # (L!, L)
    mean = low = high = 0.0
    for q in range(num_queries):
        order = values[q] * num_keys + priority  # distinct keys; ties in values broken by the permutation
        top = order.topk(min(k, num_keys), dim=1).indices
        hits = positives[q][top].any(dim=1).double()
        mean += hits.mean().item()
        low += hits.min().item()
        high += hits.max().item()
    return mean / num_queries, low / num_queries, high / num_queries


def _tied_case(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, text_to_image) for 5 images and 7 captions; scores on three levels, so ties everywhere."""
    gen = torch.Generator().manual_seed(seed)
    t2i = torch.cat([torch.randperm(5, generator=gen), torch.randint(0, 5, (2,), generator=gen)])
    return torch.randint(0, 3, (5, 7), generator=gen), t2i


SEEDS = range(8)


@pytest.mark.parametrize("seed", SEEDS)
def test_expected_rule_equals_average_over_all_tie_orders(seed):
    values, t2i = _tied_case(seed)
    num_images = values.shape[0]
    images, texts = _features_with_scores(values)

    # Premise: the float32 cosine scores have exactly the tie structure and order of the integers.
    scores = F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).T
    assert torch.equal(scores[:, :, None] == scores[:, None, :], values[:, :, None] == values[:, None, :])
    assert torch.equal(scores[:, :, None] > scores[:, None, :], values[:, :, None] > values[:, None, :])

    positives = F.one_hot(t2i, num_images).T.bool()  # (N, M): caption j describes image i
    ks = (1, 2, 3, 5, 7, 8)
    results = {ties: recall_at_k(images, texts, t2i, ks=ks, ties=ties) for ties in TIE_RULES}
    for chunk_size in (1, 2, 3):
        for ties in TIE_RULES:
            assert recall_at_k(images, texts, t2i, ks=ks, chunk_size=chunk_size, ties=ties) == results[ties]
    for k in ks:
        for direction, vals, pos in (("i2t", values, positives), ("t2i", values.T, positives.T)):
            mean, low, high = _brute_force(vals, pos, k)
            key = f"{direction}_R@{k}"
            assert results["expected"][key] == pytest.approx(mean, abs=1e-12), key
            assert results["pessimistic"][key] == pytest.approx(low, abs=1e-12), key
            assert results["optimistic"][key] == pytest.approx(high, abs=1e-12), key
            assert results["pessimistic"][key] <= results["expected"][key] <= results["optimistic"][key]


def test_brute_force_cases_exercise_partial_ties():
    """The seeds above include queries with several tied positives and hits strictly between 0 and 1."""
    multi_positive = partial = 0
    for seed in SEEDS:
        values, t2i = _tied_case(seed)
        i2t, _ = retrieval_rank_counts(*_features_with_scores(values), t2i)
        multi_positive += int(((i2t.tied_positives > 1) & (i2t.tied_negatives > 0)).sum())
        partial += int(((i2t.tied_negatives > 0) & (i2t.greater < 3)).sum())
    assert multi_positive > 0 and partial > 0


# ----------------------------------------------------------------------------------------------------
# a hand-made case: counts, recalls under each rule
# ----------------------------------------------------------------------------------------------------


def _hand_case() -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    a = 2**-0.5
    images = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])  # I3 normalises to (a, a, 0)
    texts = torch.tensor(
        [
            [1.0, 1, 0],  # T0 -> I0: I0 = I1 = a, I3 = 1 higher          -> greater 1, one tied negative
            [0, 1, 0],  # T1 -> I1: 1, nothing else close                  -> greater 0, no tie
            [0, 1, 1],  # T2 -> I2: I2 = I1 = a, I3 = 0.5                  -> greater 0, one tied negative
            [1, 0, 0],  # T3 -> I3: a, I0 = 1 higher                       -> greater 1, no tie
            [0, 0, 1],  # T4 -> I0: 0 tied with I1 and I3, I2 = 1 higher   -> greater 1, two tied negatives
        ]
    )
    scores = F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).T
    assert scores[3, 3] == scores[3, 1] == pytest.approx(a) and scores[0, 0] == scores[1, 0] == scores[1, 2]
    return images, texts, [0, 1, 2, 3, 0]


@pytest.mark.parametrize("chunk_size", [None, 1, 2])
def test_hand_made_rank_counts_and_tied_queries(chunk_size):
    images, texts, t2i = _hand_case()
    i2t_counts, t2i_counts = retrieval_rank_counts(images, texts, t2i, chunk_size=chunk_size)
    # I0: best of {T0: a, T4: 0} is a, T3 = 1 above. I1: T1 = 1. I2: T4 = 1 above T2 = a. I3: T3 = a tied with
    # T1 = a, T0 = 1 above.
    assert i2t_counts.greater.tolist() == [1, 0, 1, 1]
    assert i2t_counts.tied_positives.tolist() == [1, 1, 1, 1]
    assert i2t_counts.tied_negatives.tolist() == [0, 0, 0, 1]
    assert t2i_counts.greater.tolist() == [1, 0, 0, 1, 1]
    assert t2i_counts.tied_positives.tolist() == [1] * 5
    assert t2i_counts.tied_negatives.tolist() == [1, 0, 1, 0, 2]
    # retrieval_ranks keeps its meaning: keys strictly above the best positive.
    i2t_ranks, t2i_ranks = retrieval_ranks(images, texts, t2i, chunk_size=chunk_size)
    assert i2t_ranks.tolist() == [1, 0, 1, 1] and t2i_ranks.tolist() == [1, 0, 0, 1, 1]
    out = recall_at_k(images, texts, t2i, ks=(1, 2), chunk_size=chunk_size)
    assert out["i2t_tied_queries"] == 1 and out["t2i_tied_queries"] == 3
    assert isinstance(out["i2t_tied_queries"], int) and isinstance(out["t2i_tied_queries"], int)


def test_hand_made_recalls_under_each_rule():
    images, texts, t2i = _hand_case()
    # Per-query hits at K = 1 and K = 2 (I3, T0, T2: one tied negative; T4: two).
    expected = {
        "expected": {
            "i2t_R@1": (0 + 1 + 0 + 0) / 4,
            "i2t_R@2": (1 + 1 + 1 + 1 / 2) / 4,
            "t2i_R@1": (0 + 1 + 1 / 2 + 0 + 0) / 5,
            "t2i_R@2": (1 / 2 + 1 + 1 + 1 + 1 / 3) / 5,
        },
        "pessimistic": {"i2t_R@1": 1 / 4, "i2t_R@2": 3 / 4, "t2i_R@1": 1 / 5, "t2i_R@2": 3 / 5},
        "optimistic": {"i2t_R@1": 1 / 4, "i2t_R@2": 1.0, "t2i_R@1": 2 / 5, "t2i_R@2": 1.0},
    }
    for ties, recalls in expected.items():
        out = recall_at_k(images, texts, t2i, ks=(1, 2), ties=ties)
        assert list(out) == [*recalls, "mean_recall", "i2t_tied_queries", "t2i_tied_queries"]
        assert _recalls(out) == pytest.approx(
            {**recalls, "mean_recall": sum(recalls.values()) / 4}, abs=1e-12
        )
        assert (out["i2t_tied_queries"], out["t2i_tied_queries"]) == (1, 3)  # the same under every rule


def test_unknown_tie_rule_is_rejected_with_the_choices():
    images, texts, t2i = _hand_case()
    for bad in ("random", "Expected", None, 1):
        with pytest.raises(ValueError, match="'expected', 'pessimistic', 'optimistic'"):
            recall_at_k(images, texts, t2i, ties=bad)


# ----------------------------------------------------------------------------------------------------
# memory bound with ties
# ----------------------------------------------------------------------------------------------------


def test_chunked_tie_counting_stays_within_one_block():
    num_images, per_image, chunk = 300, 3, 16
    gen = torch.Generator().manual_seed(4)
    images = torch.randn(num_images, 8, generator=gen)
    texts = torch.randn(12, 8, generator=gen)[torch.randint(0, 12, (num_images * per_image,), generator=gen)]
    t2i = torch.arange(num_images).repeat_interleave(per_image)  # 12 distinct captions: ties in every query
    full = recall_at_k(images, texts, t2i)
    with LargestTensor() as probe:
        chunked = recall_at_k(images, texts, t2i, chunk_size=chunk)
    assert chunked == full and full["i2t_tied_queries"] > 0
    assert probe.max_numel <= chunk * num_images * per_image

"""Tests for lightning_sarclip.eval: parity with CLIP_benchmark / open_clip semantics, tie rule, memory bound.

The CLIP_benchmark reference (``tests/library/eval/reference.py``) is a faithful transcription of
``clip_benchmark/metrics/zeroshot_retrieval.py`` (``recall_at_k`` / ``batchify`` / the metric loop) and of the
accuracy / balanced-accuracy computation in ``zeroshot_classification.py``, so the paper tables'
semantics are pinned independently of our implementation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_sarclip.eval import (
    TEMPLATE_SETS,
    build_zeroshot_classifier,
    classification_metrics,
    confusion_matrix,
    get_templates,
    recall_at_k,
    retrieval_ranks,
    zeroshot_logits,
)
from tests.library.eval.reference import LargestTensor, cb_accuracy, cb_retrieval


def _balanced_accuracy(targets: torch.Tensor, preds: torch.Tensor) -> float:
    """sklearn.metrics.balanced_accuracy_score by hand: mean recall over classes present in targets."""
    recalls = [(preds[targets == c] == c).float().mean().item() for c in targets.unique().tolist()]
    return sum(recalls) / len(recalls)


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------


def _paired_features(num_images: int, captions_per_image: torch.Tensor, dim: int, noise: float, seed: int):
    """Images plus noisy captions of them (so recall is neither 0 nor 1), captions in shuffled order."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(num_images, dim, generator=gen)
    text_to_image = torch.repeat_interleave(torch.arange(num_images), captions_per_image)
    perm = torch.randperm(len(text_to_image), generator=gen)
    text_to_image = text_to_image[perm]
    texts = images[text_to_image] + noise * torch.randn(len(text_to_image), dim, generator=gen)
    return images, texts, text_to_image


def _assert_matches_cb(images, texts, text_to_image, ks, chunk_size) -> dict:
    ours = recall_at_k(images, texts, text_to_image, ks=ks, chunk_size=chunk_size)
    ref = cb_retrieval(images, texts, text_to_image, ks)
    for k in ks:
        assert ours[f"i2t_R@{k}"] == pytest.approx(ref[f"text_retrieval_recall@{k}"], abs=1e-6), (
            k,
            chunk_size,
        )
        assert ours[f"t2i_R@{k}"] == pytest.approx(ref[f"image_retrieval_recall@{k}"], abs=1e-6), (
            k,
            chunk_size,
        )
    expected_mean = sum(ours[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in ks) / (2 * len(ks))
    assert ours["mean_recall"] == pytest.approx(expected_mean)
    assert set(ours) == {f"{d}_R@{k}" for d in ("i2t", "t2i") for k in ks} | {
        "mean_recall", "i2t_tied_queries", "t2i_tied_queries"}
    assert ours["i2t_tied_queries"] == ours["t2i_tied_queries"] == 0  # continuous features: no exact ties
    return ours


# ----------------------------------------------------------------------------------------------------
# retrieval
# ----------------------------------------------------------------------------------------------------

CHUNKS = [None, 1, 7, 13]


@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_recall_single_caption_matches_clip_benchmark(chunk_size):
    images, texts, t2i = _paired_features(60, torch.ones(60, dtype=torch.long), dim=16, noise=1.5, seed=0)
    out = _assert_matches_cb(images, texts, t2i, (1, 5, 10), chunk_size)
    assert 0.0 < out["t2i_R@1"] < 1.0 and 0.0 < out["i2t_R@10"] < 1.0  # non-trivial regime


@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_recall_multi_caption_matches_clip_benchmark(chunk_size):
    counts = torch.randint(1, 6, (53,), generator=torch.Generator().manual_seed(1))
    images, texts, t2i = _paired_features(53, counts, dim=16, noise=1.5, seed=2)
    assert len(t2i) % 7 and len(t2i) % 13 and 53 % 7 and 53 % 13  # chunks never divide N or M
    out = _assert_matches_cb(images, texts, t2i.tolist(), (1, 5, 10), chunk_size)
    assert 0.0 < out["i2t_R@1"] < 1.0 and 0.0 < out["t2i_R@5"] < 1.0


@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_recall_fewer_than_ten_images(chunk_size):
    counts = torch.tensor([3, 1, 2, 5, 1, 4])
    images, texts, t2i = _paired_features(6, counts, dim=8, noise=2.0, seed=3)
    out = _assert_matches_cb(images, texts, t2i, (1, 5, 10), chunk_size)
    assert out["t2i_R@10"] == 1.0  # K >= N: every caption's image is within the "top 10" of 6 images


def test_recall_low_precision_inputs_compute_in_float32():
    images, texts, t2i = _paired_features(40, torch.full((40,), 2), dim=16, noise=1.0, seed=4)
    for dtype in (torch.float16, torch.bfloat16):
        low = recall_at_k(images.to(dtype), texts.to(dtype), t2i, chunk_size=9)
        ref = recall_at_k(images.to(dtype).float(), texts.to(dtype).float(), t2i)
        assert low == ref


def test_recall_optimistic_tie_rule():
    """ties="optimistic": keys tied with the best positive do not count against it: rank = #keys with strictly greater score."""
    a = 2**-0.5
    images = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])  # I3 normalises to (a, a, 0)
    texts = torch.tensor(
        [
            [1.0, 1, 0],  # T0 -> I0: ties with I1 (both a), I3 strictly higher -> rank 1
            [0, 1, 0],  # T1 -> I1: rank 0
            [0, 1, 1],  # T2 -> I2: ties with I1 (both a), nothing higher -> rank 0
            [1, 0, 0],  # T3 -> I3: score a, I0 scores 1 -> rank 1
            [0, 0, 1],  # T4 -> I0 (second caption): score 0 tied with I1, I3; I2 scores 1 -> rank 1
        ]
    )
    text_to_image = [0, 1, 2, 3, 0]
    scores = F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).T
    assert scores[3, 3] == scores[3, 1] == pytest.approx(a)  # the I3 tie really is exact
    for chunk_size in (None, 1, 2):
        i2t, t2i = retrieval_ranks(images, texts, text_to_image, chunk_size=chunk_size)
        # I0: best of {T0: a, T4: 0} is a, T3 scores 1 -> 1. I1: T1 = 1 -> 0. I2: T4 = 1 beats T2 = a -> 1.
        # I3: T3 = a tied with T1 = a, T0 = 1 higher -> 1 (a pessimistic rule would give 2).
        assert i2t.tolist() == [1, 0, 1, 1]
        assert t2i.tolist() == [1, 0, 0, 1, 1]
    out = recall_at_k(images, texts, text_to_image, ks=(1, 2), ties="optimistic")
    assert out == pytest.approx(
        {"i2t_R@1": 0.25, "i2t_R@2": 1.0, "t2i_R@1": 0.4, "t2i_R@2": 1.0, "mean_recall": 2.65 / 4,
         "i2t_tied_queries": 1, "t2i_tied_queries": 3}
    )

    # All scores equal: every query is (jointly) first.
    same = recall_at_k(torch.ones(4, 3), torch.ones(6, 3), [0, 1, 2, 3, 3, 2], ks=(1,), ties="optimistic")
    assert same == {"i2t_R@1": 1.0, "t2i_R@1": 1.0, "mean_recall": 1.0, "i2t_tied_queries": 4, "t2i_tied_queries": 6}


def test_recall_is_invariant_to_feature_scale_and_caption_order():
    images, texts, t2i = _paired_features(20, torch.randint(1, 4, (20,)), dim=8, noise=1.0, seed=5)
    base = recall_at_k(images, texts, t2i)
    perm = torch.randperm(len(t2i))
    assert recall_at_k(3.0 * images, 0.1 * texts[perm], t2i[perm], chunk_size=3) == base


def test_recall_chunked_memory_bound_and_agreement():
    num_images, num_texts, dim = 2000, 6000, 32
    images, texts, t2i = _paired_features(
        num_images, torch.full((num_images,), 3), dim=dim, noise=1.2, seed=6
    )
    full = recall_at_k(images, texts, t2i, chunk_size=None)
    with LargestTensor() as probe:
        chunked = recall_at_k(images, texts, t2i, chunk_size=64)
    assert chunked == full
    assert 0.0 < full["i2t_R@1"] < 1.0
    assert probe.max_numel <= 64 * max(num_images, num_texts)  # never the 12M-entry N x M matrix


def test_recall_input_validation():
    images, texts = torch.randn(3, 4), torch.randn(4, 4)
    with pytest.raises(ValueError, match=r"without captions: \[2\]"):
        recall_at_k(images, texts, [0, 1, 1, 0])
    with pytest.raises(ValueError, match="outside"):
        recall_at_k(images, texts, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="outside"):
        recall_at_k(images, texts, torch.tensor([0, 1, 2, -1]))
    with pytest.raises(ValueError, match="shape"):
        recall_at_k(images, texts, [0, 1, 2])
    with pytest.raises(ValueError, match="integer"):
        recall_at_k(images, texts, torch.tensor([0.0, 1, 2, 2]))
    with pytest.raises(ValueError, match="embedding dim"):
        recall_at_k(images, torch.randn(4, 5), [0, 1, 2, 2])
    with pytest.raises(ValueError, match="NaN"):
        recall_at_k(images, texts.clone().fill_(float("nan")), [0, 1, 2, 2])
    with pytest.raises(ValueError, match="chunk_size"):
        recall_at_k(images, texts, [0, 1, 2, 2], chunk_size=0)
    with pytest.raises(ValueError, match="positive int"):
        recall_at_k(images, texts, [0, 1, 2, 2], ks=(0,))


# ----------------------------------------------------------------------------------------------------
# classification
# ----------------------------------------------------------------------------------------------------


def test_classification_matches_clip_benchmark():
    gen = torch.Generator().manual_seed(7)
    targets = torch.randint(0, 10, (500,), generator=gen)
    logits = torch.randn(500, 10, generator=gen) + 1.5 * F.one_hot(targets, 10)
    out = classification_metrics(logits, targets)
    acc1, acc5 = cb_accuracy(logits, targets, topk=(1, 5))
    (acc3,) = cb_accuracy(logits, targets, topk=(3,))
    assert out["top1"] == pytest.approx(acc1) and out["top3"] == pytest.approx(acc3)
    assert out["top5"] == pytest.approx(acc5)
    assert out["mean_per_class"] == pytest.approx(_balanced_accuracy(targets, logits.argmax(1)))
    assert 0.0 < out["top1"] < out["top3"] < out["top5"] < 1.0
    assert set(out) == {"top1", "top3", "top5", "mean_per_class"}


def test_classification_topk_nan_when_fewer_classes():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 2.0, 1.0], [1.0, 2.0, 0.0]])
    targets = torch.tensor([0, 1, 1, 2])
    out = classification_metrics(logits, targets, topk=(1, 3, 5))
    assert out["top1"] == pytest.approx(0.5)  # samples 0 and 2
    assert out["top3"] == 1.0  # K == C: everything is in the top 3
    assert math.isnan(out["top5"])


def test_mean_per_class_ignores_absent_classes():
    # 4 classes, class 2 never occurs in the targets (but is predicted once).
    targets = torch.tensor([0, 0, 0, 1, 1, 3])
    preds = torch.tensor([0, 0, 2, 1, 0, 3])
    logits = F.one_hot(preds, 4).float()
    out = classification_metrics(logits, targets, topk=(1,))
    # recalls: class0 2/3, class1 1/2, class3 1/1 -> mean over 3 present classes (not 4).
    assert out["mean_per_class"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert out["mean_per_class"] == pytest.approx(_balanced_accuracy(targets, preds))
    assert out["top1"] == pytest.approx(4 / 6)


def test_confusion_matrix_hand_count():
    targets = torch.tensor([0, 0, 0, 1, 1, 3])
    preds = torch.tensor([0, 0, 2, 1, 0, 3])
    cm = confusion_matrix(preds, targets, num_classes=4)
    expected = torch.tensor([[2, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]])
    assert cm.dtype == torch.long and torch.equal(cm, expected)
    assert int(cm.sum()) == len(targets)
    assert torch.equal(confusion_matrix(F.one_hot(preds, 4).float(), targets, 4), expected)  # logits input
    with pytest.raises(ValueError):
        confusion_matrix(preds, targets, num_classes=3)
    with pytest.raises(ValueError):
        confusion_matrix(torch.randn(6, 5), targets, num_classes=4)


def test_classification_input_validation():
    with pytest.raises(ValueError):
        classification_metrics(torch.randn(4, 3), torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ValueError):
        classification_metrics(torch.randn(4, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError):
        classification_metrics(torch.randn(4), torch.tensor([0, 1, 2, 0]))


# ----------------------------------------------------------------------------------------------------
# templates
# ----------------------------------------------------------------------------------------------------


def test_template_sets():
    assert {k: len(v) for k, v in TEMPLATE_SETS.items()} == {
        "sar": 9,
        "optical": 9,
        "sar_opt": 15,
        "isprs": 5,
        "simple": 1,
    }
    assert TEMPLATE_SETS["sar_opt"] == TEMPLATE_SETS["sar"][:6] + TEMPLATE_SETS["optical"][:6] + (
        "a photo of {}.",
        "an image of {}.",
        "{}.",
    )
    assert TEMPLATE_SETS["simple"] == ("a photo of {}.",)
    assert (
        TEMPLATE_SETS["sar"][0] == "a SAR image of {}."
        and TEMPLATE_SETS["isprs"][3] == "SAR land cover image of {}."
    )
    for name, templates in TEMPLATE_SETS.items():
        assert get_templates(name) == list(templates)
        assert all(t.format("ship").count("ship") == 1 for t in templates)


def test_get_templates_json_and_lists(tmp_path: Path):
    list_file = tmp_path / "t.json"
    list_file.write_text(json.dumps(["a SAR image of a {c}.", "{c}"]))
    assert get_templates(str(list_file)) == ["a SAR image of a {}.", "{}"]
    assert get_templates(list_file) == ["a SAR image of a {}.", "{}"]
    dict_file = tmp_path / "d.json"
    dict_file.write_text(json.dumps({"templates": ["radar {} scene"]}))
    assert get_templates(str(dict_file)) == ["radar {} scene"]
    assert get_templates(["{{literal}} {c}", "x {}"]) == ["{{literal}} {}", "x {}"]
    assert get_templates(["{{literal}} {c}"])[0].format("ship") == "{literal} ship"


def test_get_templates_bad_inputs(tmp_path: Path):
    with pytest.raises(ValueError, match="sar_opt"):  # unknown name lists the known sets
        get_templates("sar_optical")
    with pytest.raises(ValueError, match="does not exist"):
        get_templates(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="could not read"):
        get_templates(str(bad))
    nokey = tmp_path / "nokey.json"
    nokey.write_text(json.dumps({"prompts": ["{}"]}))
    with pytest.raises(ValueError, match="'templates'"):
        get_templates(str(nokey))
    with pytest.raises(ValueError, match="placeholder"):
        get_templates(["a SAR image."])
    with pytest.raises(ValueError, match="placeholder"):
        get_templates(["{} and {}"])
    with pytest.raises(ValueError, match="placeholder"):
        get_templates(["a {name}"])
    with pytest.raises(ValueError, match="empty"):
        get_templates([])


# ----------------------------------------------------------------------------------------------------
# zero-shot
# ----------------------------------------------------------------------------------------------------


def test_zeroshot_classifier_matches_open_clip():
    import open_clip
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    from lightning_sarclip.models.registry import register_model_configs

    register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("SARCLIP-ViT-Test-32").eval()
    tokenizer = open_clip.get_tokenizer("SARCLIP-ViT-Test-32")
    classnames = ["ship", "oil spill", "urban area", "farmland", "forest"]
    templates = TEMPLATE_SETS["sar"]
    ref = build_zero_shot_classifier(
        model, tokenizer, classnames, templates, num_classes_per_batch=2, device="cpu"
    )
    ours = build_zeroshot_classifier(model.encode_text, tokenizer, classnames, templates, batch_size=7)
    assert ours.shape == (32, len(classnames)) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    cb_style = build_zeroshot_classifier(
        model.encode_text, tokenizer, classnames, [t.replace("{}", "{c}") for t in templates]
    )
    torch.testing.assert_close(cb_style, ref, atol=1e-5, rtol=1e-5)


class _PlantedTextTower:
    """Tokenizer + encoder pair whose prompt embeddings are known: class vector plus a per-template offset."""

    def __init__(self, classnames, templates, dim: int = 24, seed: int = 8):
        gen = torch.Generator().manual_seed(seed)
        self.classnames, self.templates = list(classnames), list(templates)
        self.class_vectors = F.normalize(torch.randn(len(classnames), dim, generator=gen), dim=-1)
        self.template_offsets = 0.3 * torch.randn(len(templates), dim, generator=gen)
        self.scales = torch.rand(len(templates), generator=gen) + 0.5
        self.seen: list[str] = []
        self.calls: list[int] = []

    def tokenizer(self, texts: list[str]) -> torch.Tensor:
        ids = list(range(len(self.seen), len(self.seen) + len(texts)))
        self.seen.extend(texts)
        return torch.tensor(ids)[:, None]

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(tokens))
        out = []
        for token in tokens[:, 0].tolist():
            text = self.seen[token]
            (c,) = [i for i, name in enumerate(self.classnames) if f"<{name}>" in text]
            (t,) = [
                i for i, tpl in enumerate(self.templates) if tpl.format(f"<{self.classnames[c]}>") == text
            ]
            out.append(self.scales[t] * (self.class_vectors[c] + self.template_offsets[t]))
        return torch.stack(out)


def test_zeroshot_planted_answer():
    names = ["ship", "bridge", "oil tank", "airport", "harbour", "river", "forest"]
    classnames = [f"<{n}>" for n in names]
    templates = ["a SAR image of {}.", "radar {} here", "{}"]
    tower = _PlantedTextTower(names, templates)
    classifier = build_zeroshot_classifier(
        tower.encode_text, tower.tokenizer, classnames, templates, batch_size=4
    )
    assert tower.calls == [4, 4, 4, 4, 4, 1]  # 21 prompts batched across class boundaries
    mean_offset = F.normalize(tower.class_vectors[:, None, :] + tower.template_offsets[None], dim=-1).mean(1)
    torch.testing.assert_close(classifier, F.normalize(mean_offset, dim=-1).T)
    assert torch.allclose(classifier.norm(dim=0), torch.ones(len(names)))

    images = tower.class_vectors.repeat(3, 1) * 5.0  # unnormalised, in half precision below
    targets = torch.arange(len(names)).repeat(3)
    logits = zeroshot_logits(images.half(), classifier)
    assert logits.shape == (len(targets), len(names)) and logits.dtype == torch.float32
    assert logits.max() <= 100.0 + 1e-3
    metrics = classification_metrics(logits, targets)
    assert metrics["top1"] == 1.0 and metrics["mean_per_class"] == 1.0


def test_zeroshot_input_validation():
    with pytest.raises(ValueError):
        build_zeroshot_classifier(lambda t: t.float(), lambda s: torch.zeros(len(s), 2), [], ["{}"])
    with pytest.raises(ValueError):
        build_zeroshot_classifier(lambda t: t.float(), lambda s: torch.zeros(len(s), 2), ["a"], [])
    with pytest.raises(ValueError, match="encode_text"):
        build_zeroshot_classifier(
            lambda t: t.float()[:1], lambda s: torch.zeros(len(s), 2), ["a", "b"], ["{}"]
        )
    with pytest.raises(ValueError, match="dim"):
        zeroshot_logits(torch.randn(2, 3), torch.randn(4, 5))


def test_chance_recall_matches_random_scores():
    from lightning_sarclip.eval import chance_recall_at_k

    n, k = 60, 3
    expected = chance_recall_at_k([k] * n, ks=(1, 5, 10))
    g = torch.Generator().manual_seed(0)
    runs = [
        recall_at_k(torch.randn(n, 64, generator=g), torch.randn(n * k, 64, generator=g),
                    torch.arange(n).repeat_interleave(k))
        for _ in range(200)
    ]
    for key, value in expected.items():
        measured = sum(r[key] for r in runs) / len(runs)
        assert measured == pytest.approx(value, abs=0.01), key
    assert expected["t2i_R@5"] == pytest.approx(5 / n)

"""Probes on frozen features (linear, k-shot, kNN) and WiSE-FT interpolation, on planted synthetic data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from lightning_sarclip.eval.probes import (
    evaluate_wise_ft,
    interpolate_state_dicts,
    knn_classify,
    knn_votes,
    kshot_probe,
    linear_probe,
    wise_ft,
)

NUM_CLASSES, DIM = 5, 32


def _clusters(n: int, seed: int, noise: float = 0.6, centers_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around fixed random class centres (planted answer: the class of the centre)."""
    centers = np.random.default_rng(centers_seed).normal(size=(NUM_CLASSES, DIM))
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % NUM_CLASSES)
    return centers[labels] + noise * rng.normal(size=(n, DIM)), labels


def _noise(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic random features with independent uniform random labels."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, DIM)), rng.integers(0, NUM_CLASSES, size=n)


def _shortcut(n: int, seed: int, shortcut: bool) -> tuple[np.ndarray, np.ndarray]:
    """Binary task: a noisy strong signal, plus (in train only) a tiny feature that separates the classes exactly.

    Only a weakly regularised probe (large C) can exploit the tiny shortcut; it does not hold on val/test, so the
    small-C probe must win there.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    sign = 2 * labels - 1
    x = 0.1 * rng.normal(size=(n, 8))
    x[:, 0] = 3.0
    x[:, 1] = sign + rng.normal(size=n)
    x[:, 2] = 0.05 * (sign if shortcut else rng.choice([-1, 1], size=n))
    return x, labels


def test_linear_probe_separable_and_random_labels():
    x_train, y_train = _clusters(200, seed=1)
    x_test, y_test = _clusters(500, seed=2)
    out = linear_probe(x_train, y_train, x_test, y_test)
    assert out["top1"] > 0.97 and out["mean_per_class"] > 0.97
    assert out["num_train"] == 200 and out["num_val"] == 40 and out["num_test"] == 500
    assert out["converged"] and out["C"] in out["cs"]
    # torch input gives the same answer as numpy input
    same = linear_probe(torch.from_numpy(x_train).float(), torch.from_numpy(y_train), x_test, y_test)
    assert same["C"] == out["C"] and same["top1"] == pytest.approx(out["top1"])

    # No relation between features and labels: chance level. (Shuffling the labels of clustered features is not
    # enough: each cluster then votes for one random label, a high-variance score.)
    x_noise, y_noise = _noise(300, seed=3)
    chance = linear_probe(x_noise, y_noise, *_noise(500, seed=4))
    assert abs(chance["top1"] - 1 / NUM_CLASSES) < 0.07


def test_linear_probe_chooses_small_c_on_validation():
    x_train, y_train = _shortcut(200, 1, shortcut=True)
    x_val, y_val = _shortcut(200, 2, shortcut=False)
    x_test, y_test = _shortcut(400, 3, shortcut=False)
    cs = np.logspace(-4, 4, 9)
    out = linear_probe(x_train, y_train, x_test, y_test, x_val, y_val, cs=cs)
    assert out["C"] <= 1.0
    assert out["val_scores"][-1] < out["val_top1"] - 0.2  # the large-C probe is clearly worse on val
    assert out["top1"] > 0.75 and out["num_train"] == 400  # refitted on train + val

    # The sweep (warm-started) agrees with independent cold fits on the normalised features.
    def normalise(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    # (Near-separable data makes the large-C optimum flat, so L-BFGS stops at slightly different points there.)
    for c, score in zip(out["cs"], out["val_scores"], strict=True):
        ref = LogisticRegression(C=c, max_iter=1000).fit(normalise(x_train), y_train)
        tolerance = 0.011 if c <= 100 else 0.05
        assert score == pytest.approx((ref.predict(normalise(x_val)) == y_val).mean(), abs=tolerance)


def test_linear_probe_carved_validation_is_stratified_and_seeded():
    x_train, y_train = _clusters(50, seed=1)
    x_test, y_test = _clusters(50, seed=2)
    a = linear_probe(x_train, y_train, x_test, y_test, seed=3)
    b = linear_probe(x_train, y_train, x_test, y_test, seed=3)
    assert a == b
    assert a["num_val"] == NUM_CLASSES * 2  # 10 per class -> 2 per class to val
    with pytest.raises(ValueError, match="both val_features"):
        linear_probe(x_train, y_train, x_test, y_test, val_features=x_test)
    with pytest.raises(ValueError, match="at least 2 classes"):
        linear_probe(x_train, np.zeros(50, dtype=int), x_test, y_test)
    with pytest.raises(ValueError, match="negative"):
        linear_probe(x_train, y_train - 1, x_test, y_test)
    with pytest.raises(ValueError, match="dimensions differ"):
        linear_probe(x_train, y_train, x_test[:, :4], y_test)


def test_linear_probe_binary_and_unseen_test_class():
    x_train, y_train = _clusters(100, seed=1)
    x_test, y_test = _clusters(100, seed=2)
    keep = y_train < 2
    out = linear_probe(x_train[keep], y_train[keep], x_test, y_test)
    assert out["num_classes"] == NUM_CLASSES
    # classes 2..4 are never predicted, so only the test samples of classes 0 and 1 can be right
    seen = (y_test < 2).mean()
    assert out["top1"] <= seen + 1e-9 and out["top1"] > seen - 0.05
    assert out["mean_per_class"] == pytest.approx(out["top1"] / seen * 2 / NUM_CLASSES, abs=0.03)


def test_kshot_probe_deterministic_nested_and_accurate():
    x_train, y_train = _clusters(150, seed=1)
    x_test, y_test = _clusters(200, seed=2)
    kwargs = dict(shots=(1, 4), trials=3, cs=np.logspace(-2, 2, 5))
    a = kshot_probe(x_train, y_train, x_test, y_test, seed=0, **kwargs)
    b = kshot_probe(x_train, y_train, x_test, y_test, seed=0, **kwargs)
    c = kshot_probe(x_train, y_train, x_test, y_test, seed=1, **kwargs)
    assert a == b
    assert [t["train_indices"] for t in a[4]["trials"]] != [t["train_indices"] for t in c[4]["trials"]]
    for k in (1, 4):
        trials = a[k]["trials"]
        assert len({tuple(t["train_indices"]) for t in trials}) == 3  # different draws per trial
        for t in trials:
            assert t["num_train"] == k * NUM_CLASSES
            assert np.bincount(y_train[t["train_indices"]], minlength=NUM_CLASSES).tolist() == [k] * NUM_CLASSES
        values = [t["top1"] for t in trials]
        assert a[k]["top1"] == pytest.approx(np.mean(values))
        assert a[k]["top1_std"] == pytest.approx(np.std(values, ddof=1))
    # nested shots: the 1-shot set of each trial is inside its 4-shot set
    for t1, t4 in zip(a[1]["trials"], a[4]["trials"], strict=True):
        assert set(t1["train_indices"]) <= set(t4["train_indices"])
    assert a[4]["top1"] > 0.9 and a[4]["top1"] >= a[1]["top1"] - 0.05

    # an explicit validation set is used as given; a class with too few examples gives all it has
    x_val, y_val = _clusters(40, seed=3)
    few = np.concatenate([np.flatnonzero(y_train != 0), np.flatnonzero(y_train == 0)[:2]])
    out = kshot_probe(x_train[few], y_train[few], x_test, y_test, x_val, y_val, shots=(4,), trials=1, **{
        k: v for k, v in kwargs.items() if k == "cs"})
    assert out[4]["trials"][0]["num_val"] == 40 and out[4]["num_train"] == 4 * (NUM_CLASSES - 1) + 2
    assert out[4]["top1_std"] == 0.0
    with pytest.raises(ValueError, match="no training examples left"):
        kshot_probe(x_train[:10], y_train[:10], x_test, y_test, shots=(50,), trials=1)


def _knn_reference(x_train, y_train, x_test, k, temperature, num_classes):
    x_train = x_train / np.linalg.norm(x_train, axis=1, keepdims=True)
    x_test = x_test / np.linalg.norm(x_test, axis=1, keepdims=True)
    votes = np.zeros((len(x_test), num_classes))
    for i, q in enumerate(x_test):
        sims = [(float(q @ f), j) for j, f in enumerate(x_train)]
        for sim, j in sorted(sims, reverse=True)[:k]:
            votes[i, y_train[j]] += math.exp(sim / temperature)
    return votes


@pytest.mark.parametrize("k,chunk", [(1, 7), (5, 1024), (500, 3)])
def test_knn_matches_brute_force(k, chunk):
    x_train, y_train = _clusters(60, seed=1, noise=1.5)
    x_test, y_test = _clusters(25, seed=2, noise=1.5)
    votes = knn_votes(x_train, y_train, x_test, k=k, temperature=0.1, chunk_size=chunk)
    ref = _knn_reference(x_train, y_train, x_test, min(k, 60), 0.1, NUM_CLASSES)
    np.testing.assert_allclose(votes.numpy(), ref, rtol=1e-9)
    out = knn_classify(x_train, y_train, x_test, y_test, k=k, temperature=0.1, chunk_size=chunk)
    assert out["top1"] == pytest.approx((ref.argmax(1) == y_test).mean())
    assert out["k"] == min(k, 60)


def test_knn_accuracy_planted_and_chance():
    x_train, y_train = _clusters(300, seed=1)
    x_test, y_test = _clusters(300, seed=2)
    assert knn_classify(x_train, y_train, x_test, y_test)["top1"] > 0.97
    assert abs(knn_classify(*_noise(300, seed=3), *_noise(500, seed=4))["top1"] - 1 / NUM_CLASSES) < 0.07
    with pytest.raises(ValueError, match="temperature"):
        knn_classify(x_train, y_train, x_test, y_test, temperature=0.0)


def _state_dicts():
    g = torch.Generator().manual_seed(0)
    zs = {"w": torch.randn(3, 4, generator=g), "h": torch.randn(5, generator=g).half(),
          "ids": torch.arange(6), "n": torch.tensor(3)}
    ft = {"w": torch.randn(3, 4, generator=g), "h": torch.randn(5, generator=g).half(),
          "ids": torch.arange(6) + 10, "n": torch.tensor(7)}
    return zs, ft


def test_wise_ft_endpoints_midpoint_and_errors():
    zs, ft = _state_dicts()
    out = dict(wise_ft(zs, ft, alphas=(0.0, 0.5, 1.0)))
    for key in ("w", "h"):
        assert torch.equal(out[0.0][key], zs[key]) and out[0.0][key].dtype == zs[key].dtype
        assert torch.equal(out[1.0][key], ft[key])
    torch.testing.assert_close(out[0.5]["w"], (zs["w"] + ft["w"]) / 2, rtol=0, atol=1e-7)
    torch.testing.assert_close(out[0.5]["h"], ((zs["h"].float() + ft["h"].float()) / 2).half())
    for alpha in (0.0, 0.5, 1.0):  # non-float tensors always come from the fine-tuned weights
        assert torch.equal(out[alpha]["ids"], ft["ids"]) and torch.equal(out[alpha]["n"], ft["n"])
    assert out[1.0]["w"].data_ptr() != ft["w"].data_ptr()  # copies, not aliases
    assert [a for a, _ in wise_ft(zs, ft)] == pytest.approx([i / 10 for i in range(11)])

    with pytest.raises(KeyError, match="'extra'"):
        wise_ft(zs, {**ft, "extra": torch.zeros(1)})
    with pytest.raises(KeyError, match="'w'"):
        wise_ft({k: v for k, v in zs.items() if k != "w"}, ft)
    with pytest.raises(ValueError, match="shape mismatch for 'w'"):
        interpolate_state_dicts(zs, {**ft, "w": torch.zeros(4, 3)}, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        interpolate_state_dicts(zs, ft, float("nan"))


def test_evaluate_wise_ft_on_open_clip_restores_weights():
    import open_clip

    import lightning_sarclip.models  # noqa: F401  (registers the tiny test architectures)

    torch.manual_seed(0)
    model = open_clip.create_model("SARCLIP-ViT-Test-32")
    zs = {k: v.clone() for k, v in model.state_dict().items()}
    ft = {k: (v + 0.1 * torch.randn_like(v)) if v.is_floating_point() else v.clone() for k, v in zs.items()}
    torch.manual_seed(1)
    current = {k: (v + 1.0) if v.is_floating_point() else v.clone() for k, v in zs.items()}
    model.load_state_dict(current)
    model.eval()

    image = torch.rand(2, 3, 32, 32)
    key = "visual.proj"

    def eval_fn(m):
        with torch.no_grad():
            return {"feat": m.encode_image(image, normalize=True).sum().item(), "proj": m.state_dict()[key].clone()}

    rows = evaluate_wise_ft(model, zs, ft, alphas=(0.0, 0.5, 1.0), eval_fn=eval_fn)
    assert [r["alpha"] for r in rows] == [0.0, 0.5, 1.0]
    assert torch.equal(rows[0]["proj"], zs[key]) and torch.equal(rows[2]["proj"], ft[key])
    torch.testing.assert_close(rows[1]["proj"], (zs[key] + ft[key]) / 2)
    assert len({round(r["feat"], 5) for r in rows}) == 3
    for k, v in model.state_dict().items():
        assert torch.equal(v, current[k]), k

    def failing(m):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        evaluate_wise_ft(model, zs, ft, alphas=(0.5,), eval_fn=failing)
    assert all(torch.equal(v, current[k]) for k, v in model.state_dict().items())
    with pytest.raises(KeyError, match="do not match the model"):
        evaluate_wise_ft(model, {"a": torch.zeros(1)}, {"a": torch.ones(1)}, alphas=(0.5,), eval_fn=eval_fn)

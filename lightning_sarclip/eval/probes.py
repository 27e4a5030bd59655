"""Probes on frozen features: linear probe, k-shot linear probe, kNN, and WiSE-FT weight interpolation.

Why: besides zero-shot and retrieval, the SAR CLIP papers (RemoteCLIP, CAESAR SARCLIP, SARVLM) report how good the
frozen image embedding is as a representation: a CLIP-paper logistic-regression probe on all training data, the
same probe with only k examples per class, and the SSL-style weighted kNN. SARVLM's linear probe additionally
"depends on Wise-FT", i.e. interpolating zero-shot and fine-tuned weights. These functions take features (and
state dicts) only, so they are independent of data loading and of Lightning.

Protocol decisions (so that numbers are comparable between runs):

* Features are L2-normalised here (CLIP embeddings are compared by cosine), in float64 for scikit-learn.
* ``linear_probe``: scikit-learn ``LogisticRegression`` (L2 penalty, L-BFGS, multinomial), ``C`` swept over
  ``cs`` and chosen by top-1 accuracy on the validation set (ties go to the smallest ``C``, the strongest
  regularisation); without a validation set a stratified ``val_fraction`` split is carved from train with
  ``seed``. The chosen ``C`` is then refitted on train + val and evaluated once on test.
* ``kshot_probe``: per trial, each class's training examples are shuffled once with ``(seed, trial)`` and the
  k-shot set is the first ``k`` of them, so the shot sets are nested across ``k`` and reproducible. ``C`` is
  chosen on the given validation set or, if none, on the next ``min(k, 4)`` examples per class (disjoint from the
  shots); the final classifier is fitted on the ``k`` shots only (no refit on val, which would break k-shot).
* ``knn_classify``: DINO's weighted kNN: the ``k`` nearest training features by cosine similarity vote for their
  class with weight ``exp(similarity / temperature)``; the vote vector is the logit.
* All accuracies come from :func:`lightning_sarclip.eval.classification.classification_metrics` (CLIP_benchmark
  semantics: ``top5`` is NaN with fewer than 5 classes, ``mean_per_class`` is balanced accuracy).

Call shape for the ``evaluate`` command (features from ``LoadedModel.encode_image`` over each split; labels are
class indices, samples with label -1 must be dropped first)::

    lp = linear_probe(f_train, y_train, f_test, y_test, val_features=f_val, val_labels=y_val)
    rows += [make_row(task="linear_probe", metric=m, value=lp[m], extra={"C": lp["C"], "num_train": lp["num_train"]},
                      ...) for m in ("top1", "mean_per_class")]
    for k, r in kshot_probe(f_train, y_train, f_test, y_test, shots=(1, 4, 16), trials=3).items():
        rows.append(make_row(task="kshot", metric="top1", value=r["top1"], extra={"k": k, "std": r["top1_std"]}, ...))
    kn = knn_classify(f_train, y_train, f_test, y_test, k=20, temperature=0.07)
    for r in evaluate_wise_ft(loaded.model, zs_sd, ft_sd, alphas, eval_fn=lambda m: {"top1": ...}):
        rows.append(make_row(task="wiseft", metric="top1", value=r["top1"], extra={"alpha": r["alpha"]}, ...))

where ``eval_fn(model)`` recomputes whatever metric (zero-shot top-1, retrieval recall ...) on the model as
currently loaded, and ``zs_sd`` / ``ft_sd`` are ``model.state_dict()``-keyed state dicts of the same model.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from torch import Tensor

from lightning_sarclip.eval.classification import classification_metrics

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_CS",
    "evaluate_wise_ft",
    "interpolate_state_dicts",
    "kshot_probe",
    "knn_classify",
    "knn_votes",
    "linear_probe",
    "wise_ft",
]

#: Regularisation sweep: 10^-6 .. 10^6 in 13 log steps (the CLIP paper's range, coarser grid).
DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-6, 6, 13))
#: WiSE-FT mixing coefficients 0.0, 0.1, ..., 1.0 (0 = zero-shot weights, 1 = fine-tuned weights).
DEFAULT_ALPHAS: tuple[float, ...] = tuple(i / 10 for i in range(11))
#: Top-K accuracies reported by every probe.
TOPK = (1, 3, 5)

ArrayLike = Tensor | np.ndarray
LabelLike = Tensor | np.ndarray | Sequence[int]


# ----------------------------------------------------------------------------------------------------------------
# input checking


def _features(name: str, features: ArrayLike) -> np.ndarray:
    if isinstance(features, Tensor):
        features = features.detach().cpu().double().numpy()
    if not isinstance(features, np.ndarray):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(features).__name__}")
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"{name} must have shape (num_samples, dim) with both > 0, got {features.shape}")
    if not np.issubdtype(features.dtype, np.floating):
        raise ValueError(f"{name} must be floating point, got dtype {features.dtype}")
    features = features.astype(np.float64)
    if not np.isfinite(features).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def _labels(name: str, labels: LabelLike, num_samples: int) -> np.ndarray:
    if isinstance(labels, Tensor):
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"{name} must be integer class indices, got dtype {labels.dtype}")
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must be integer class indices, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.shape != (num_samples,):
        raise ValueError(f"{name} must have shape ({num_samples},), got {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name} contains negative labels (unlabelled samples must be filtered out first)")
    return labels


def _num_classes(num_classes: int | None, *labels: np.ndarray) -> int:
    observed = 1 + max(int(y.max()) for y in labels if y.size)
    if num_classes is None:
        return observed
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < observed:
        raise ValueError(f"num_classes must be an int >= 1 + the largest label ({observed}), got {num_classes!r}")
    return num_classes


def _check_dims(*pairs: tuple[str, np.ndarray]) -> None:
    dims = {name: x.shape[1] for name, x in pairs}
    if len(set(dims.values())) > 1:
        raise ValueError(f"feature dimensions differ: {dims}")


def _positive_int(name: str, value: Any) -> int:
    try:
        out = 0 if isinstance(value, bool) else operator.index(value)
    except TypeError:
        out = 0
    if out < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return out


# ----------------------------------------------------------------------------------------------------------------
# linear probe


def _stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class split: ``round(fraction * n_c)`` to val, but at least 1 when ``n_c >= 2`` and never all of it.

    Classes with a single example stay in train (``sklearn.train_test_split(stratify=...)`` would refuse them).
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_val = min(max(int(round(fraction * len(idx))), 1), len(idx) - 1) if len(idx) >= 2 else 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _logits(model: LogisticRegression, features: np.ndarray, num_classes: int) -> Tensor:
    """``(N, num_classes)`` decision values; classes absent from the fit get ``-inf`` (never predicted)."""
    scores = model.decision_function(features)
    if scores.ndim == 1:  # binary: the score is the logit of classes_[1] against classes_[0]
        scores = np.stack([np.zeros_like(scores), scores], axis=1)
    logits = np.full((features.shape[0], num_classes), -np.inf)
    logits[:, model.classes_] = scores
    return torch.from_numpy(logits)


def _fit(features: np.ndarray, labels: np.ndarray, c: float, max_iter: int, seed: int,
         model: LogisticRegression | None = None) -> tuple[LogisticRegression, bool]:
    """Fit (warm-started from ``model`` when given); returns the model and whether L-BFGS converged."""
    if model is None:
        model = LogisticRegression(C=c, max_iter=max_iter, random_state=seed, warm_start=True)
    model.set_params(C=c)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(features, labels)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return model, converged


def _probe(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
    x_test: np.ndarray, y_test: np.ndarray, cs: Sequence[float], max_iter: int, seed: int,
    num_classes: int, refit: bool,
) -> dict[str, Any]:
    if len(np.unique(y_train)) < 2:
        raise ValueError("the linear probe needs training examples of at least 2 classes")
    cs = sorted({float(c) for c in cs})
    if not cs or any(not math.isfinite(c) or c <= 0 for c in cs):
        raise ValueError(f"cs must be non-empty positive finite values, got {cs}")
    max_iter = _positive_int("max_iter", max_iter)

    # Sweep C in increasing order, warm-starting each fit from the previous (more regularised) solution.
    model, val_scores, all_converged = None, [], True
    for c in cs:
        model, converged = _fit(x_train, y_train, c, max_iter, seed, model)
        all_converged &= converged
        preds = _logits(model, x_val, num_classes).argmax(dim=1).numpy()
        val_scores.append(float((preds == y_val).mean()))
    best = int(np.argmax(val_scores))  # first maximum = smallest C among ties
    best_c = cs[best]

    if refit:
        x_fit, y_fit = np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val])
    else:
        x_fit, y_fit = x_train, y_train
    final, converged = _fit(x_fit, y_fit, best_c, max_iter, seed)
    metrics = classification_metrics(_logits(final, x_test, num_classes), torch.from_numpy(y_test), topk=TOPK)
    return {
        **metrics,
        "C": best_c,
        "val_top1": val_scores[best],
        "cs": cs,
        "val_scores": val_scores,
        "num_train": int(len(y_fit)),
        "num_val": int(len(y_val)),
        "num_test": int(len(y_test)),
        "num_classes": num_classes,
        "refit": refit,
        "converged": bool(all_converged and converged),
    }


def linear_probe(
    train_features: ArrayLike,
    train_labels: LabelLike,
    test_features: ArrayLike,
    test_labels: LabelLike,
    val_features: ArrayLike | None = None,
    val_labels: LabelLike | None = None,
    cs: Sequence[float] = DEFAULT_CS,
    max_iter: int = 1000,
    seed: int = 0,
    val_fraction: float = 0.2,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """CLIP-paper linear probe: L2 logistic regression on frozen, L2-normalised features.

    ``C`` is chosen by validation top-1 over ``cs`` (on ``val_*`` if given, else on a stratified
    ``val_fraction`` split of train drawn with ``seed``), then the classifier is refitted on train + val with that
    ``C`` and evaluated on test.

    Returns:
        ``{"top1", "top3", "top5", "mean_per_class"}`` (test, fractions; ``topK`` NaN when K > classes) plus
        ``"C"`` (chosen), ``"val_top1"`` (its validation accuracy), ``"cs"`` / ``"val_scores"`` (the sweep),
        ``"num_train"`` (examples the final classifier was fitted on, i.e. train + val), ``"num_val"``,
        ``"num_test"``, ``"num_classes"``, ``"refit"`` and ``"converged"`` (False if any L-BFGS fit hit
        ``max_iter``).
    """
    x_train = _features("train_features", train_features)
    y_train = _labels("train_labels", train_labels, x_train.shape[0])
    x_test = _features("test_features", test_features)
    y_test = _labels("test_labels", test_labels, x_test.shape[0])
    if (val_features is None) != (val_labels is None):
        raise ValueError("give both val_features and val_labels, or neither")
    if val_features is not None:
        x_val = _features("val_features", val_features)
        y_val = _labels("val_labels", val_labels, x_val.shape[0])
    else:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction!r}")
        fit_idx, val_idx = _stratified_split(y_train, val_fraction, seed)
        if val_idx.size == 0:
            raise ValueError("cannot carve a validation split: every class has a single training example")
        x_train, y_train, x_val, y_val = x_train[fit_idx], y_train[fit_idx], x_train[val_idx], y_train[val_idx]
    _check_dims(("train_features", x_train), ("val_features", x_val), ("test_features", x_test))
    n_cls = _num_classes(num_classes, y_train, y_val, y_test)
    return _probe(x_train, y_train, x_val, y_val, x_test, y_test, cs, max_iter, seed, n_cls, refit=True)


def kshot_probe(
    train_features: ArrayLike,
    train_labels: LabelLike,
    test_features: ArrayLike,
    test_labels: LabelLike,
    val_features: ArrayLike | None = None,
    val_labels: LabelLike | None = None,
    shots: Sequence[int] = (1, 2, 4, 8, 16),
    trials: int = 3,
    seed: int = 0,
    cs: Sequence[float] = DEFAULT_CS,
    max_iter: int = 1000,
    num_classes: int | None = None,
) -> dict[int, dict[str, Any]]:
    """Few-shot linear probe: ``k`` training examples per class, ``trials`` draws per ``k``.

    Classes with fewer than ``k`` training examples contribute all they have. Without ``val_*`` the validation set
    of each trial is the next ``min(k, 4)`` shuffled examples of each class after its shots.

    Returns:
        ``{k: {"top1", "top1_std", "top3", "top3_std", "top5", "top5_std", "mean_per_class",
        "mean_per_class_std", "C" (list per trial), "num_train" (per trial, mean), "trials": [per-trial
        linear-probe dicts with "train_indices"]}}``; means and sample standard deviations (ddof=1; 0 for a
        single trial) are over trials.
    """
    x_train = _features("train_features", train_features)
    y_train = _labels("train_labels", train_labels, x_train.shape[0])
    x_test = _features("test_features", test_features)
    y_test = _labels("test_labels", test_labels, x_test.shape[0])
    if (val_features is None) != (val_labels is None):
        raise ValueError("give both val_features and val_labels, or neither")
    x_val_given = y_val_given = None
    if val_features is not None:
        x_val_given = _features("val_features", val_features)
        y_val_given = _labels("val_labels", val_labels, x_val_given.shape[0])
        _check_dims(("train_features", x_train), ("val_features", x_val_given))
    _check_dims(("train_features", x_train), ("test_features", x_test))
    extra = () if y_val_given is None else (y_val_given,)
    n_cls = _num_classes(num_classes, y_train, y_test, *extra)
    shots = [_positive_int("shots", k) for k in shots]
    trials = _positive_int("trials", trials)
    classes = np.unique(y_train)

    # One shuffle per (seed, trial) and class; k-shot sets are prefixes, hence nested across k.
    orders = []
    for trial in range(trials):
        rng = np.random.default_rng([seed, trial])
        orders.append({int(c): rng.permutation(np.flatnonzero(y_train == c)) for c in classes})

    results: dict[int, dict[str, Any]] = {}
    for k in shots:
        runs = []
        for trial in range(trials):
            shot_idx = np.sort(np.concatenate([order[:k] for order in orders[trial].values()]))
            if y_val_given is None:
                n_val = min(k, 4)
                val_idx = np.sort(np.concatenate([order[k:k + n_val] for order in orders[trial].values()]))
                if val_idx.size == 0:
                    raise ValueError(
                        f"{k}-shot: no training examples left for validation; pass val_features/val_labels"
                    )
                x_val, y_val = x_train[val_idx], y_train[val_idx]
            else:
                x_val, y_val = x_val_given, y_val_given
            run = _probe(x_train[shot_idx], y_train[shot_idx], x_val, y_val, x_test, y_test, cs, max_iter,
                         seed, n_cls, refit=False)
            run["train_indices"] = shot_idx.tolist()
            runs.append(run)
        summary: dict[str, Any] = {}
        for key in (*(f"top{t}" for t in TOPK), "mean_per_class"):
            values = np.array([r[key] for r in runs], dtype=np.float64)
            summary[key] = float(values.mean())
            summary[f"{key}_std"] = float(values.std(ddof=1)) if trials > 1 else 0.0
        summary["C"] = [r["C"] for r in runs]
        summary["num_train"] = float(np.mean([r["num_train"] for r in runs]))
        summary["trials"] = runs
        results[k] = summary
    return results


# ----------------------------------------------------------------------------------------------------------------
# kNN


def knn_votes(
    train_features: ArrayLike,
    train_labels: LabelLike,
    test_features: ArrayLike,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> Tensor:
    """``(N_test, C)`` float64 votes: sum of ``exp(cos / temperature)`` over the ``k`` nearest training features.

    ``k`` is clipped to the number of training samples; similarities are processed ``chunk_size`` test rows at a
    time so memory stays ``chunk_size x N_train``.
    """
    x_train = torch.from_numpy(_features("train_features", train_features))
    y_train = torch.from_numpy(_labels("train_labels", train_labels, x_train.shape[0]))
    x_test = torch.from_numpy(_features("test_features", test_features))
    _check_dims(("train_features", x_train.numpy()), ("test_features", x_test.numpy()))
    k = min(_positive_int("k", k), x_train.shape[0])
    chunk_size = _positive_int("chunk_size", chunk_size)
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    n_cls = _num_classes(num_classes, y_train.numpy())
    votes = torch.zeros(x_test.shape[0], n_cls, dtype=torch.float64)
    for start in range(0, x_test.shape[0], chunk_size):
        sims = x_test[start:start + chunk_size] @ x_train.T
        top_sims, top_idx = sims.topk(k, dim=1)
        weights = (top_sims / temperature).exp()
        votes[start:start + chunk_size].scatter_add_(1, y_train[top_idx], weights)
    return votes


def knn_classify(
    train_features: ArrayLike,
    train_labels: LabelLike,
    test_features: ArrayLike,
    test_labels: LabelLike,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> dict[str, Any]:
    """Weighted cosine kNN (DINO protocol); the prediction is the class with the largest vote.

    Returns ``{"top1", "top3", "top5", "mean_per_class", "k" (effective), "temperature", "num_train",
    "num_test", "num_classes"}``.
    """
    x_test = _features("test_features", test_features)
    y_test = _labels("test_labels", test_labels, x_test.shape[0])
    y_train = _labels("train_labels", train_labels, len(train_features))
    n_cls = _num_classes(num_classes, y_train, y_test)
    votes = knn_votes(train_features, y_train, x_test, k, temperature, n_cls, chunk_size)
    metrics = classification_metrics(votes, torch.from_numpy(y_test), topk=TOPK)
    return {**metrics, "k": min(int(k), len(y_train)), "temperature": float(temperature),
            "num_train": int(len(y_train)), "num_test": int(len(y_test)), "num_classes": n_cls}


# ----------------------------------------------------------------------------------------------------------------
# WiSE-FT


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}")
    return float(alpha)


def _check_compatible(zeroshot: Mapping[str, Any], finetuned: Mapping[str, Any]) -> None:
    missing = sorted(set(finetuned) - set(zeroshot))
    extra = sorted(set(zeroshot) - set(finetuned))
    if missing or extra:
        raise KeyError(
            "WiSE-FT state dicts have different keys: "
            f"only in finetuned {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
            f"only in zeroshot {extra[:10]}{' ...' if len(extra) > 10 else ''}"
        )
    for key, ft in finetuned.items():
        zs = zeroshot[key]
        if isinstance(ft, Tensor) != isinstance(zs, Tensor):
            raise TypeError(f"WiSE-FT: {key!r} is a tensor in one state dict and not in the other")
        if isinstance(ft, Tensor) and zs.shape != ft.shape:
            raise ValueError(
                f"WiSE-FT: shape mismatch for {key!r}: zeroshot {tuple(zs.shape)} vs finetuned {tuple(ft.shape)}"
            )


def interpolate_state_dicts(
    zeroshot_state_dict: Mapping[str, Any], finetuned_state_dict: Mapping[str, Any], alpha: float
) -> dict[str, Any]:
    """``theta = (1 - alpha) * zeroshot + alpha * finetuned`` for every floating-point tensor.

    Arithmetic is in float32 or wider and the result keeps the fine-tuned dtype and device; ``alpha`` 0 and 1
    return exact copies of the inputs. Non-float tensors (integer buffers such as ``position_ids``) and
    non-tensor entries are copied from the fine-tuned state dict. Key sets and shapes must match (the error
    names the offending key). ``alpha`` outside [0, 1] extrapolates, as in the WiSE-FT paper's ablations.
    """
    alpha = _check_alpha(alpha)
    _check_compatible(zeroshot_state_dict, finetuned_state_dict)
    out: dict[str, Any] = {}
    for key, ft in finetuned_state_dict.items():
        if not isinstance(ft, Tensor) or not (ft.is_floating_point() or ft.is_complex()):
            out[key] = ft.detach().clone() if isinstance(ft, Tensor) else ft
            continue
        zs = zeroshot_state_dict[key].detach().to(ft.device)
        if alpha == 0.0:
            out[key] = zs.to(ft.dtype, copy=True)
        elif alpha == 1.0:
            out[key] = ft.detach().clone()
        else:
            wide = torch.promote_types(ft.dtype, torch.float32)
            mixed = (1.0 - alpha) * zs.to(wide) + alpha * ft.detach().to(wide)
            out[key] = mixed.to(ft.dtype)
    return out


def wise_ft(
    zeroshot_state_dict: Mapping[str, Any],
    finetuned_state_dict: Mapping[str, Any],
    alphas: Sequence[float] = DEFAULT_ALPHAS,
) -> list[tuple[float, dict[str, Any]]]:
    """All WiSE-FT interpolations as ``[(alpha, state_dict), ...]`` in the order of ``alphas``.

    This holds ``len(alphas)`` full copies of the weights; for large models use :func:`evaluate_wise_ft`, which
    builds one interpolation at a time.
    """
    alphas = [_check_alpha(a) for a in alphas]
    _check_compatible(zeroshot_state_dict, finetuned_state_dict)
    return [(a, interpolate_state_dicts(zeroshot_state_dict, finetuned_state_dict, a)) for a in alphas]


def evaluate_wise_ft(
    model: torch.nn.Module,
    zeroshot_state_dict: Mapping[str, Any],
    finetuned_state_dict: Mapping[str, Any],
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    eval_fn: Callable[[torch.nn.Module], Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Load each interpolation into ``model`` (strict), call ``eval_fn(model)``; return ``[{"alpha", ...}]``.

    The model's own weights are restored afterwards, also when ``eval_fn`` raises. The state dicts must be keyed
    like ``model.state_dict()`` (strip a Lightning ``"model."`` prefix first).
    """
    if eval_fn is None:
        raise ValueError("evaluate_wise_ft needs an eval_fn(model) -> dict of metrics")
    alphas = [_check_alpha(a) for a in alphas]
    _check_compatible(zeroshot_state_dict, finetuned_state_dict)
    own = set(model.state_dict())
    if own != set(finetuned_state_dict):
        missing = sorted(own - set(finetuned_state_dict))[:10]
        unexpected = sorted(set(finetuned_state_dict) - own)[:10]
        raise KeyError(f"WiSE-FT state dicts do not match the model: missing {missing}, unexpected {unexpected}")
    original = {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}
    results = []
    try:
        for alpha in alphas:
            model.load_state_dict(interpolate_state_dicts(zeroshot_state_dict, finetuned_state_dict, alpha))
            metrics = dict(eval_fn(model))
            if "alpha" in metrics:
                raise ValueError("eval_fn must not return an 'alpha' key")
            results.append({"alpha": alpha, **metrics})
    finally:
        model.load_state_dict(original)
    return results

"""Evaluation figures (confusion matrix, retrieval examples, t-SNE) rendered to RGB arrays.

Why arrays: the same picture goes to a PNG next to ``results.jsonl`` (for the report) and to TensorBoard during
training (:func:`log_figure`), so each function renders once with matplotlib's Agg canvas and returns an
``(H, W, 3)`` uint8 array, ``H = round(figsize[1] * dpi)``, ``W = round(figsize[0] * dpi)``. Figures are built
with ``matplotlib.figure.Figure`` directly (no ``pyplot``): no global state, no GUI backend, safe in workers.
When ``path`` is given the array is written as a PNG atomically (:func:`lightning_sarclip.utils.atomic.atomic_open`:
temporary file in the same folder, renamed into place), so a concurrently running report never reads a
half-written image.

SAR images are shown as in the rest of the package: ``(C, H, W)`` float in ``[0, 1]`` (``(H, W)``, ``(H, W, C)``
and uint8 are accepted too); one channel is grey, two channels (VV, VH) become the false colour
``(VV, VH, mean)`` used by SARVLM's evaluation, three are RGB, more keep the first three.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from lightning_sarclip.utils.atomic import atomic_open

__all__ = [
    "confusion_matrix_figure",
    "figure_to_array",
    "log_figure",
    "retrieval_examples_figure",
    "retrieval_positives",
    "save_png",
    "tsne_embedding",
    "tsne_figure",
]

CORRECT_COLOR = "#1a9850"
WRONG_COLOR = "#444444"
PathLike = str | os.PathLike


# ----------------------------------------------------------------------------------------------------------------
# rendering and saving


def _new_figure(figsize: tuple[float, float], dpi: int) -> Figure:
    if len(figsize) != 2 or min(figsize) <= 0:
        raise ValueError(f"figsize must be (width, height) in inches, both > 0, got {figsize!r}")
    if dpi < 1:
        raise ValueError(f"dpi must be >= 1, got {dpi!r}")
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Draw ``fig`` on an Agg canvas and return its pixels as an ``(H, W, 3)`` uint8 array."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.array(canvas.buffer_rgba())[..., :3]


def save_png(image: np.ndarray, path: PathLike) -> Path:
    """Write an ``(H, W, 3)`` uint8 image as PNG atomically (:func:`~lightning_sarclip.utils.atomic.atomic_open`)."""
    image = _check_image(image)
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        Image.fromarray(image, mode="RGB").save(handle, format="PNG")
    return path


def _finish(fig: Figure, path: PathLike | None) -> np.ndarray:
    image = figure_to_array(fig)
    if path is not None:
        save_png(image, path)
    return image


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        raise ValueError(f"image must be an (H, W, 3) uint8 numpy array, got {type(image).__name__} {shape}")
    return np.ascontiguousarray(image)


def log_figure(logger: Any, tag: str, image: np.ndarray, step: int | None = None) -> bool:
    """Send ``image`` to every TensorBoard-like logger in ``logger`` (one logger, a list, or ``None``).

    A logger qualifies when ``logger.experiment.add_image`` exists (Lightning's ``TensorBoardLogger``, or a bare
    ``SummaryWriter`` passed as ``logger.experiment``); others (CSV, W&B ...) are skipped. Returns whether any
    logger received the image.
    """
    image = _check_image(image)
    loggers = logger if isinstance(logger, (list, tuple)) else [logger]
    sent = False
    for item in loggers:
        if item is None:
            continue
        experiment = getattr(item, "experiment", None)
        add_image = getattr(experiment, "add_image", None)
        if callable(add_image):
            add_image(tag, image, step, dataformats="HWC")
            sent = True
    return sent


# ----------------------------------------------------------------------------------------------------------------
# confusion matrix


def _as_numpy(name: str, value: Any, ndim: int) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    value = np.asarray(value)
    if value.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {value.shape}")
    return value


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _short_name(name: str, width: int) -> str:
    """Class names often share a prefix ("ship cargo", "ship tanker"), so keep both ends."""
    if len(name) <= width:
        return name
    head = (width - 1) // 2
    return name[:head] + "…" + name[len(name) - (width - 1 - head):]


def confusion_matrix_figure(
    matrix: Tensor | np.ndarray,
    classnames: Sequence[str],
    normalize: bool = True,
    title: str = "Confusion matrix",
    path: PathLike | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int = 100,
    annotate: bool | None = None,
    cmap: str = "Blues",
) -> np.ndarray:
    """Heat map of ``matrix[true, predicted]`` (counts, e.g. from :func:`eval.classification.confusion_matrix`).

    With ``normalize`` each row is divided by its support (row = recall per true class; empty rows stay 0).
    Cells are annotated when ``annotate`` (default: up to 25 classes). Default size: a square of
    ``clip(2.5 + 0.45 * C, 4, 24)`` inches plus 1.2 inches for the colour bar.
    """
    counts = _as_numpy("matrix", matrix, 2).astype(np.float64)
    num_classes = counts.shape[0]
    if counts.shape != (num_classes, num_classes) or num_classes == 0:
        raise ValueError(f"matrix must be square and non-empty, got shape {counts.shape}")
    if len(classnames) != num_classes:
        raise ValueError(f"{len(classnames)} classnames for a {num_classes}x{num_classes} matrix")
    values = counts
    if normalize:
        support = counts.sum(axis=1, keepdims=True)
        values = np.divide(counts, support, out=np.zeros_like(counts), where=support > 0)
    side = float(np.clip(2.5 + 0.45 * num_classes, 4.0, 24.0))
    fig = _new_figure(figsize or (side + 1.2, side), dpi)
    ax = fig.add_subplot()
    vmax = 1.0 if normalize else max(float(values.max()), 1.0)
    mesh = ax.imshow(values, cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
    fig.colorbar(mesh, ax=ax, shrink=0.8, label="fraction of true class" if normalize else "count")
    names = [_short_name(str(c), 24) for c in classnames]
    ax.set_xticks(range(num_classes), names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(num_classes), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title + (" (row-normalised)" if normalize else ""))
    if annotate if annotate is not None else num_classes <= 25:
        fontsize = 9 if num_classes <= 12 else 7
        for t in range(num_classes):
            for p in range(num_classes):
                text = f"{values[t, p]:.2f}" if normalize else f"{int(counts[t, p])}"
                color = "white" if values[t, p] > 0.55 * vmax else "black"
                ax.text(p, t, text, ha="center", va="center", color=color, fontsize=fontsize)
    return _finish(fig, path)


# ----------------------------------------------------------------------------------------------------------------
# retrieval examples


def _display_image(image: Any) -> np.ndarray:
    """``(H, W, 3)`` float in [0, 1] (or ``(H, W)`` grey) for ``imshow`` from a SAR image in any usual layout."""
    array = image.detach().cpu().float().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    array = np.clip(np.nan_to_num(array.astype(np.float32)), 0.0, 1.0)
    if array.ndim == 2:
        return array
    if array.ndim != 3:
        raise ValueError(f"an image must be (C, H, W), (H, W, C) or (H, W), got shape {array.shape}")
    if array.shape[0] <= 4 and array.shape[-1] > 4:  # channels first, the package's convention
        array = np.moveaxis(array, 0, -1)
    channels = array.shape[-1]
    if channels == 1:
        return array[..., 0]
    if channels == 2:
        return np.concatenate([array, array.mean(axis=-1, keepdims=True)], axis=-1)
    return array[..., :3]


def retrieval_positives(text_to_image: Sequence[int] | Tensor, direction: str) -> list[set[int]]:
    """Correct gallery items per query from the ``text_to_image`` mapping used by ``recall_at_k``.

    ``direction="i2t"``: query ``i`` (an image) is matched by every caption ``j`` with ``text_to_image[j] == i``.
    ``direction="t2i"``: query ``j`` (a caption) is matched by image ``text_to_image[j]``.
    """
    mapping = [int(i) for i in (text_to_image.tolist() if isinstance(text_to_image, Tensor) else text_to_image)]
    if direction == "t2i":
        return [{i} for i in mapping]
    if direction == "i2t":
        out: list[set[int]] = [set() for _ in range(max(mapping) + 1 if mapping else 0)]
        for j, i in enumerate(mapping):
            out[i].add(j)
        return out
    raise ValueError(f"direction must be 'i2t' or 't2i', got {direction!r}")


def _positive_sets(positives: Any, num_queries: int, num_gallery: int) -> list[set[int]]:
    if positives is None:
        return [set() for _ in range(num_queries)]
    if isinstance(positives, Tensor):
        positives = positives.detach().cpu().numpy()
    if isinstance(positives, np.ndarray) and positives.dtype == bool:
        mask = positives
        if mask.shape != (num_queries, num_gallery):
            raise ValueError(f"positives mask must have shape {(num_queries, num_gallery)}, got {mask.shape}")
        return [set(np.flatnonzero(row).tolist()) for row in mask]
    sets = [set(int(j) for j in row) for row in positives]
    if len(sets) != num_queries:
        raise ValueError(f"positives has {len(sets)} entries for {num_queries} queries")
    return sets


def _is_text_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and all(isinstance(v, str) for v in value)


def _wrap(text: str, width: int, lines: int) -> str:
    wrapped = textwrap.wrap(" ".join(text.split()), width=width) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = _short(wrapped[-1] + " …", width)
    return "\n".join(wrapped)


def retrieval_examples_figure(
    queries: Sequence[str] | Sequence[Any] | Tensor,
    gallery: Sequence[str] | Sequence[Any] | Tensor,
    scores: Tensor | np.ndarray,
    k: int = 5,
    positives: Tensor | np.ndarray | Iterable[Iterable[int]] | None = None,
    max_queries: int = 6,
    title: str | None = None,
    path: PathLike | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int = 100,
) -> np.ndarray:
    """Top-``k`` retrieved items for the first ``max_queries`` queries, correct ones in green with a tick.

    The direction follows the query type: image queries and caption gallery give image -> text (each image
    beside its ranked captions); caption queries (a list of ``str``) and image gallery give text -> image (each
    caption beside its ranked images). ``scores`` is ``(num_queries, num_gallery)`` (e.g. cosine similarities);
    ``positives`` is a bool mask of that shape or one collection of correct gallery indices per query (see
    :func:`retrieval_positives`). Default size: ``(10, 1.9 * Q + 0.5)`` inches for image -> text and
    ``(3 + 1.7 * k, 1.9 * Q + 0.5)`` for text -> image, ``Q = min(max_queries, num_queries)``.
    """
    text_to_image = _is_text_list(queries)
    if text_to_image == _is_text_list(gallery):
        raise ValueError("exactly one of queries and gallery must be a list of captions (str)")
    score = _as_numpy("scores", scores, 2).astype(np.float64)
    num_queries, num_gallery = len(queries), len(gallery)
    if score.shape != (num_queries, num_gallery):
        raise ValueError(f"scores must have shape {(num_queries, num_gallery)}, got {score.shape}")
    if k < 1 or max_queries < 1:
        raise ValueError(f"k and max_queries must be >= 1, got {k} and {max_queries}")
    correct = _positive_sets(positives, num_queries, num_gallery)
    k = min(k, num_gallery)
    shown = min(max_queries, num_queries)
    order = np.argsort(-score, axis=1, kind="stable")[:, :k]
    height = 1.9 * shown + 0.5

    if not text_to_image:  # image -> text
        fig = _new_figure(figsize or (10.0, height), dpi)
        grid = fig.add_gridspec(shown, 2, width_ratios=[1, 4])
        for row in range(shown):
            ax_img = fig.add_subplot(grid[row, 0])
            ax_img.imshow(_display_image(queries[row]), cmap="gray", vmin=0, vmax=1)
            ax_img.set_xticks([])
            ax_img.set_yticks([])
            ax_img.set_title(f"image {row}", fontsize=9)
            ax_txt = fig.add_subplot(grid[row, 1])
            ax_txt.axis("off")
            for rank, j in enumerate(order[row]):
                hit = int(j) in correct[row]
                style = dict(transform=ax_txt.transAxes, va="center", fontsize=8.5, clip_on=True,
                             color=CORRECT_COLOR if hit else WRONG_COLOR, fontweight="bold" if hit else "normal")
                y = 1.0 - (rank + 0.5) / k
                if hit:
                    ax_txt.text(0.0, y, "✓", **style)
                line = f"{rank + 1}. [{score[row, j]:.2f}] " + _wrap(str(gallery[j]), 95, 1)
                ax_txt.text(0.025, y, line, **style)
    else:  # text -> image
        fig = _new_figure(figsize or (3.0 + 1.7 * k, height), dpi)
        grid = fig.add_gridspec(shown, k + 1, width_ratios=[1.8] + [1] * k)
        for row in range(shown):
            ax_txt = fig.add_subplot(grid[row, 0])
            ax_txt.axis("off")
            ax_txt.text(0.0, 0.5, _wrap(str(queries[row]), 28, 6), transform=ax_txt.transAxes, va="center",
                        fontsize=8.5)
            for rank, j in enumerate(order[row]):
                hit = int(j) in correct[row]
                ax = fig.add_subplot(grid[row, rank + 1])
                ax.imshow(_display_image(gallery[j]), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_color(CORRECT_COLOR if hit else WRONG_COLOR)
                    spine.set_linewidth(4 if hit else 0.8)
                ax.set_title(f"{'✓ ' if hit else ''}{rank + 1}. {score[row, j]:.2f}", fontsize=8.5,
                             color=CORRECT_COLOR if hit else WRONG_COLOR)
    default_title = "text → image retrieval" if text_to_image else "image → text retrieval"
    fig.suptitle(f"{title or default_title} (top {k}, correct in green)", fontsize=11)
    return _finish(fig, path)


# ----------------------------------------------------------------------------------------------------------------
# t-SNE


def tsne_embedding(
    features: Tensor | np.ndarray,
    perplexity: float = 30.0,
    seed: int = 0,
    init: str = "pca",
    num_threads: int | None = None,
) -> np.ndarray:
    """2-D scikit-learn t-SNE of L2-normalised features; ``perplexity`` is clipped to ``n - 1``.

    ``seed`` is scikit-learn's ``random_state``, so the result is deterministic per seed. With the default PCA
    initialisation (more faithful global layout) the seed only reaches the randomized PCA, which on small sets
    gives the same start for every seed; ``init="random"`` makes the layout depend on the seed.

    ``num_threads`` caps the OpenMP threads of the Barnes-Hut gradient (``None``: scikit-learn's default, all
    cores). On a shared or oversubscribed CPU a small cap is much faster, because OpenMP barriers stall whenever
    one thread is descheduled (and torch brings its own OpenMP runtime competing for the same cores).
    """
    from sklearn.manifold import TSNE  # deferred: scikit-learn's manifold import is slow
    from threadpoolctl import threadpool_limits

    x = _as_numpy("features", features, 2).astype(np.float64)
    if x.shape[0] < 2:
        raise ValueError(f"t-SNE needs at least 2 samples, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    perplexity = float(min(perplexity, x.shape[0] - 1))
    tsne = TSNE(n_components=2, perplexity=perplexity, init=init, learning_rate="auto", random_state=seed)
    with threadpool_limits(limits=num_threads, user_api="openmp"):
        return tsne.fit_transform(x)


def _class_colors(num_classes: int) -> list[Any]:
    if num_classes <= 10:
        return [colormaps["tab10"](i) for i in range(num_classes)]
    if num_classes <= 20:
        return [colormaps["tab20"](i) for i in range(num_classes)]
    return [colormaps["turbo"](i / max(num_classes - 1, 1)) for i in range(num_classes)]


def tsne_figure(
    features: Tensor | np.ndarray,
    labels: Tensor | np.ndarray | Sequence[int],
    classnames: Sequence[str],
    perplexity: float = 30.0,
    seed: int = 0,
    title: str | None = None,
    path: PathLike | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int = 100,
    init: str = "pca",
    num_threads: int | None = None,
) -> np.ndarray:
    """t-SNE scatter of features coloured by class, with a legend of the classes present.

    Default size ``(9, 7)`` inches (the legend sits right of the axes). ``labels`` index ``classnames``;
    ``perplexity``, ``seed``, ``init`` and ``num_threads`` go to :func:`tsne_embedding`.
    """
    y = _as_numpy("labels", labels, 1)
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    if len(y) != len(features):
        raise ValueError(f"{len(y)} labels for {len(features)} features")
    if len(y) and (y.min() < 0 or y.max() >= len(classnames)):
        raise ValueError(f"labels must lie in [0, {len(classnames)}), got [{y.min()}, {y.max()}]")
    points = tsne_embedding(features, perplexity=perplexity, seed=seed, init=init, num_threads=num_threads)
    used = float(min(perplexity, len(y) - 1))
    fig = _new_figure(figsize or (9.0, 7.0), dpi)
    ax = fig.add_subplot()
    colors = _class_colors(len(classnames))
    present = np.unique(y)
    size = 18 if len(y) <= 2000 else 6
    for cls in present:
        mask = y == cls
        ax.scatter(points[mask, 0], points[mask, 1], s=size, color=colors[cls], alpha=0.85, linewidths=0,
                   label=f"{_short_name(str(classnames[cls]), 28)} ({int(mask.sum())})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"t-SNE of {len(y)} embeddings (perplexity {used:g}, seed {seed})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, markerscale=1.5, frameon=False,
              ncol=1 + (len(present) - 1) // 30)
    return _finish(fig, path)


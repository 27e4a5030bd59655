"""Evaluation figures: image sizes, PNG files, t-SNE determinism and TensorBoard logging."""

from __future__ import annotations

import io
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_sarclip.eval.classification import confusion_matrix
from lightning_sarclip.eval.figures import (
    confusion_matrix_figure,
    log_figure,
    retrieval_examples_figure,
    retrieval_positives,
    save_png,
    tsne_embedding,
    tsne_figure,
)

CLASSES = ["2S1", "BMP2", "BRDM2", "BTR60"]


def _read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def _clusters(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    centers = rng.normal(size=(len(CLASSES), 16))
    return centers[labels] + 0.3 * rng.normal(size=(n, 16)), labels


def test_confusion_matrix_figure_size_png_and_normalisation(tmp_path):
    targets = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3])
    preds = torch.tensor([0, 1, 1, 1, 2, 2, 0, 3])
    counts = confusion_matrix(preds, targets, len(CLASSES))
    path = tmp_path / "figs" / "cm.png"
    image = confusion_matrix_figure(counts, CLASSES, path=path)
    # default: square side clip(2.5 + 0.45 * 4, 4, 24) = 4.3 in, + 1.2 in colour bar, at 100 dpi
    assert image.shape == (430, 550, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(_read_png(path), image)
    assert [p.name for p in path.parent.iterdir()] == ["cm.png"]  # no temporary file left behind

    small = confusion_matrix_figure(counts.numpy(), CLASSES, normalize=False, figsize=(6, 5), dpi=50)
    assert small.shape == (250, 300, 3)
    # normalised and raw counts are drawn differently; an empty row (class never seen) is fine
    raw = confusion_matrix_figure(counts, CLASSES, normalize=False)
    assert raw.shape == image.shape and not np.array_equal(raw, image)
    counts[3] = 0
    assert confusion_matrix_figure(counts, CLASSES).shape == image.shape
    with pytest.raises(ValueError, match="classnames"):
        confusion_matrix_figure(counts, CLASSES[:3])
    with pytest.raises(ValueError, match="square"):
        confusion_matrix_figure(np.zeros((3, 4)), CLASSES[:3])


def test_retrieval_positives_from_text_to_image():
    mapping = [0, 0, 1, 2, 2, 2]
    assert retrieval_positives(mapping, "t2i") == [{0}, {0}, {1}, {2}, {2}, {2}]
    assert retrieval_positives(torch.tensor(mapping), "i2t") == [{0, 1}, {2}, {3, 4, 5}]
    with pytest.raises(ValueError, match="direction"):
        retrieval_positives(mapping, "both")


def test_retrieval_examples_figures(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 1, 32, 32, generator=g)
    captions = [f"a SAR image of a {c} vehicle on a road, a long caption that has to be cut, number {i}"
                for i, c in enumerate(CLASSES * 2)]
    text_to_image = [0, 0, 1, 1, 2, 2, 2, 2]
    scores = torch.randn(3, 8, generator=g)

    path = tmp_path / "i2t.png"
    i2t = retrieval_examples_figure(images, captions, scores, k=5,
                                    positives=retrieval_positives(text_to_image, "i2t"), path=path)
    assert i2t.shape == (round((1.9 * 3 + 0.5) * 100), 1000, 3)  # (10, 1.9 * Q + 0.5) inches
    np.testing.assert_array_equal(_read_png(path), i2t)
    mask = torch.zeros(3, 8, dtype=torch.bool)
    for j, i in enumerate(text_to_image):
        mask[i, j] = True
    np.testing.assert_array_equal(retrieval_examples_figure(images, captions, scores, positives=mask), i2t)
    unmarked = retrieval_examples_figure(images, captions, scores, positives=None)
    assert not np.array_equal(unmarked, i2t)  # the correct captions are marked

    # text -> image: caption queries, 2-channel (VV, VH) images as the gallery, max_queries limits the rows
    gallery = [torch.rand(2, 32, 32, generator=g) for _ in range(6)]
    t2i = retrieval_examples_figure(captions[:5], gallery, torch.randn(5, 6, generator=g), k=3,
                                    positives=[{0}, {0}, {1}, {1}, {2}], max_queries=2, path=tmp_path / "t2i.png")
    assert t2i.shape == (round((1.9 * 2 + 0.5) * 100), round((3.0 + 1.7 * 3) * 100), 3)
    np.testing.assert_array_equal(_read_png(tmp_path / "t2i.png"), t2i)

    with pytest.raises(ValueError, match="exactly one"):
        retrieval_examples_figure(captions, captions, torch.zeros(8, 8))
    with pytest.raises(ValueError, match="scores must have shape"):
        retrieval_examples_figure(images, captions, torch.zeros(3, 7))
    with pytest.raises(ValueError, match="positives mask"):
        retrieval_examples_figure(images, captions, scores, positives=mask[:2])


def test_tsne_deterministic_per_seed_and_keeps_clusters(tmp_path):
    # one OpenMP thread: the test machine's 2 cores are shared, and contended OpenMP barriers are very slow
    figure = partial(tsne_figure, num_threads=1)
    embedding = partial(tsne_embedding, num_threads=1)
    features, labels = _clusters()
    a = figure(features, labels, CLASSES, seed=0, path=tmp_path / "tsne.png", dpi=50)
    b = figure(torch.from_numpy(features), torch.from_numpy(labels), CLASSES, seed=0, dpi=50)
    assert a.shape == (350, 450, 3)  # default (9, 7) inches
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(_read_png(tmp_path / "tsne.png"), a)

    # with a random start the seed decides the layout, and the same seed repeats it exactly
    emb0 = embedding(features, seed=0, init="random")
    emb1 = embedding(features, seed=1, init="random")
    np.testing.assert_array_equal(emb0, embedding(features, seed=0, init="random"))
    assert emb0.shape == (60, 2) and not np.allclose(emb0, emb1)
    # planted clusters stay together: each point's nearest 2-D neighbour has its class
    dist = np.linalg.norm(emb0[:, None] - emb0[None], axis=-1) + np.eye(60) * 1e9
    assert (labels[dist.argmin(1)] == labels).mean() > 0.95

    # perplexity 30 is clipped to n - 1 for tiny sets (scikit-learn would refuse it)
    assert embedding(features[:8], perplexity=30).shape == (8, 2)
    with pytest.raises(ValueError, match="labels must lie"):
        figure(features, labels + 1, CLASSES)


def test_save_png_is_atomic_and_overwrites(tmp_path):
    path = tmp_path / "x.png"
    first = np.zeros((4, 5, 3), dtype=np.uint8)
    second = np.full((4, 5, 3), 200, dtype=np.uint8)
    save_png(first, path)
    save_png(second, path)
    np.testing.assert_array_equal(_read_png(path), second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]
    with pytest.raises(ValueError, match="uint8"):
        save_png(first.astype(np.float32), path)
    np.testing.assert_array_equal(_read_png(path), second)


def test_log_figure_lands_in_tensorboard(tmp_path):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    counts = torch.tensor([[3, 1], [0, 4]])
    image = confusion_matrix_figure(counts, CLASSES[:2], figsize=(3, 2), dpi=50)
    tb = TensorBoardLogger(save_dir=str(tmp_path), name="tb")
    csv = CSVLogger(save_dir=str(tmp_path), name="csv")
    assert log_figure([csv, tb], "eval/confusion", image, step=7)
    assert not log_figure(csv, "eval/confusion", image, step=7)
    assert not log_figure(None, "eval/confusion", image)
    tb.experiment.flush()

    events = EventAccumulator(tb.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert "eval/confusion" in events.Tags()["images"]
    (logged,) = events.Images("eval/confusion")
    assert (logged.step, logged.width, logged.height) == (7, 150, 100)
    with Image.open(io.BytesIO(logged.encoded_image_string)) as decoded:
        np.testing.assert_array_equal(np.asarray(decoded.convert("RGB")), image)

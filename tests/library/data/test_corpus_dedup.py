"""The near-duplicate rule: distinct speckled acquisitions stay apart, planted copies are caught; leakage counts."""

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from lightning_sarclip.data.corpus import content_hash, perceptual_hash
from lightning_sarclip.data.corpus_dedup import near_duplicate_groups
from lightning_sarclip.data.corpus_report import leakage_counts

REAL_MSTAR = Path("/work/shared/real_sar/mstar_soc_hunterlew/classification/caffe/data/mstar")


def _chip(rng: np.random.Generator, angle: float, size: int = 96) -> np.ndarray:
    """A vehicle-like bright rectangle and its shadow on clutter, rotated by ``angle``, with its own speckle
    (a distinct acquisition of the same target)."""
    scene = np.full((size, size), 0.15, np.float32)
    scene[40:56, 30:66] = 1.0
    scene[56:64, 30:66] = 0.02
    scene = gaussian_filter(scene, 2.0)  # radar returns have no sharp edges; speckle is the fine detail
    rotated = np.asarray(Image.fromarray((scene * 255).astype(np.uint8)).rotate(angle, Image.BILINEAR), np.float32)
    speckle = rng.gamma(4.0, 1 / 4.0, rotated.shape)
    return np.clip(rotated * speckle, 0, 255).astype(np.uint8)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())))


def _groups(images: list[np.ndarray], max_distance: int = 3) -> np.ndarray:
    stored = [image[None] for image in images]
    return near_duplicate_groups(
        np.array([perceptual_hash(s.astype(np.float32) / 255) for s in stored], dtype=np.uint64),
        [content_hash(s) for s in stored], max_distance, lambda i: stored[i], 0.9)


def test_distinct_speckled_chips_stay_apart_and_planted_copies_are_caught():
    rng = np.random.default_rng(0)
    distinct = [_chip(rng, angle) for angle in np.repeat(np.arange(0, 10, 2.0), 4)]  # 4 acquisitions per pose
    originals = distinct[:5]
    copies = [_jpeg(originals[0], 75), np.asarray(Image.fromarray(originals[1]).resize((48, 48), Image.BILINEAR)),
              originals[2][2:-2, 2:-2], _jpeg(originals[3], 95), originals[4].copy()]
    # every pair a candidate (64 bits): the pixel check alone decides
    groups = _groups(distinct + copies, max_distance=64)
    assert len(set(groups[:len(distinct)].tolist())) == len(distinct)  # no two acquisitions merged
    for position, copy_group in enumerate(groups[len(distinct):].tolist()):
        assert copy_group == groups[position]


def _images(images: list[np.ndarray], sources: list[str], splits: list[str]) -> pa.Table:
    return pa.table({
        "source": sources, "split": splits,
        "phash": pa.array([perceptual_hash(i[None].astype(np.float32) / 255) for i in images], pa.uint64()),
        "image_hash": [content_hash(i[None]) for i in images],
    })


def test_leakage_counts_find_copies_of_held_out_images_in_a_variants_train_split():
    rng = np.random.default_rng(1)
    held, other = _chip(rng, 0.0), _chip(rng, 30.0)
    images = [held, other, _jpeg(held, 80)]
    table = _images(images, ["mstar", "sample", "sardet100k"], ["test", "train", "train"])
    stored = [i[None] for i in images]
    in_variant = np.array([False, True, True])  # a variant that forgot the re-published copy
    assert leakage_counts(table, in_variant, ["mstar"], 3, lambda i: stored[i], 0.9) == {"mstar": 1}
    assert leakage_counts(table, np.array([False, True, False]), ["mstar"], 3, lambda i: stored[i], 0.9) == {
        "mstar": 0}


@pytest.mark.skipif(not REAL_MSTAR.is_dir(), reason="real MSTAR chips (internal testing data) not present")
def test_real_mstar_acquisitions_are_not_merged():
    """17 and 15 deg chips of ten vehicles at many azimuths: every one is a distinct acquisition."""
    files = sorted(REAL_MSTAR.glob("*/*/*.jpeg"))
    images = [np.asarray(Image.open(f).convert("L")) for f in files]
    groups = _groups(images)
    assert len(images) > 100 and len(set(groups.tolist())) == len(images)

"""The synthetic SAR generator: determinism, value ranges, labels, captions, speckle statistics, arguments."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch

from lightning_sarclip.data.synthetic import (
    DB_WINDOW,
    SYNTHETIC_CLASSES,
    SyntheticSARDataset,
    apply_speckle,
    generate_scene,
    intensity_to_unit,
)

PLURALS = {"ship": "ships", "vehicle": "vehicles", "aircraft": "aircraft", "building": "buildings",
           "bridge": "bridges"}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
GRID = ("upper left", "top", "upper right", "left", "center", "right", "lower left", "bottom", "lower right")


def _mentions(caption: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", caption.lower()) is not None


def _scenes(n: int = 60, size: int = 32) -> list:
    """A fixed sample with every class represented (labels cycle through the classes)."""
    return [generate_scene(1000 + i, image_size=size, label=i % len(SYNTHETIC_CLASSES)) for i in range(n)]


SCENES = _scenes()


def test_classes_in_order() -> None:
    assert SYNTHETIC_CLASSES == ("ship", "vehicle", "aircraft", "building", "bridge")


def test_same_seed_same_scene_and_different_seed_different_scene() -> None:
    a, b = generate_scene(7), generate_scene(7)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.captions == b.captions and a.objects == b.objects and a.label == b.label
    c = generate_scene(8)
    assert c.image.tobytes() != a.image.tobytes()


@pytest.mark.parametrize("in_chans", [1, 2])
@pytest.mark.parametrize("size", [32, 64])
def test_image_shape_dtype_range(in_chans: int, size: int) -> None:
    for seed in range(10):
        scene = generate_scene(seed, image_size=size, in_chans=in_chans)
        assert scene.image.shape == (in_chans, size, size)
        assert scene.image.dtype == np.float32
        assert scene.image.min() >= 0.0 and scene.image.max() <= 1.0
        assert np.isfinite(scene.image).all()
        assert scene.image.std() > 0.02  # not blank


def test_layout_and_captions_independent_of_sensor_settings() -> None:
    """Layout and captions come from their own random streams: only the noise depends on in_chans/looks."""
    base = generate_scene(3, in_chans=1, looks=4)
    for other in (generate_scene(3, in_chans=2, looks=4), generate_scene(3, in_chans=1, looks=1)):
        assert other.objects == base.objects and other.captions == base.captions
    assert np.array_equal(generate_scene(3, in_chans=2).image[0], base.image[0])


def test_cross_pol_channel_is_weaker_and_differently_speckled() -> None:
    for seed in range(10):
        vv, vh = generate_scene(seed, in_chans=2).image
        assert vh.mean() < vv.mean() - 0.05
        assert np.corrcoef(vv.ravel(), vh.ravel())[0, 1] < 0.99


def test_every_class_appears_and_labels_match_objects() -> None:
    assert {s.label for s in SCENES} == set(range(len(SYNTHETIC_CLASSES)))
    for scene in SCENES:
        cls = SYNTHETIC_CLASSES[scene.label]
        assert 1 <= len(scene.objects) <= 4
        assert all(obj["class"] == cls for obj in scene.objects)
        assert scene.background == ("sea" if cls == "ship" else "land")
        for obj in scene.objects:
            x0, y0, x1, y1 = obj["bbox"]
            assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32


def test_random_label_covers_all_classes() -> None:
    assert {generate_scene(seed, image_size=32).label for seed in range(40)} == set(range(len(SYNTHETIC_CLASSES)))


def test_instances_do_not_overlap() -> None:
    for scene in _scenes(40, size=64):
        boxes = [obj["bbox"] for obj in scene.objects]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)


def test_captions_mention_class_count_and_position() -> None:
    for scene in SCENES:
        cls = SYNTHETIC_CLASSES[scene.label]
        count = len(scene.objects)
        assert len(scene.captions) == 5
        for caption in scene.captions:
            assert _mentions(caption, cls) or _mentions(caption, PLURALS[cls]), caption
            assert caption[0].isupper() and caption.endswith(".")
        first = scene.captions[0]
        count_words = [str(count), NUMBER_WORDS[count]] + (["a single"] if count == 1 else [])
        assert any(_mentions(first, w) for w in count_words), first
        # Plural agreement: "2 ships", never "2 ship"; "one ship", never "one ships".
        if count > 1 and cls != "aircraft":
            assert _mentions(first, PLURALS[cls]), first
        if count == 1:
            assert not _mentions(first, PLURALS[cls]) or cls == "aircraft", first
        cx = np.mean([o["center"][0] for o in scene.objects])
        cy = np.mean([o["center"][1] for o in scene.objects])
        cell = 3 * min(2, int(3 * cy / 32)) + min(2, int(3 * cx / 32))
        assert f"the {GRID[cell]}" in first, (first, cx, cy)


def test_positions_cover_the_grid() -> None:
    found = {cell for s in _scenes(90, size=32) for cell in GRID if f"the {cell} " in s.captions[0]
             or f"the {cell}." in s.captions[0] or f"the {cell}," in s.captions[0]}
    assert len(found) >= 8, found


def test_n_captions_any_number_and_deterministic() -> None:
    assert len(generate_scene(1, n_captions=1).captions) == 1
    many = generate_scene(1, n_captions=20).captions
    assert len(many) == 20
    assert many[0] == generate_scene(1, n_captions=3).captions[0]


def test_radar_shadow_falls_to_far_range() -> None:
    """The radar looks from the left: behind a building (to its right) the ground is darker than in front."""
    behind, front = [], []
    for seed in range(20):
        scene = generate_scene(seed, image_size=64, label=SYNTHETIC_CLASSES.index("building"))
        img = scene.image[0]
        for obj in scene.objects:
            x0, y0, x1, y1 = obj["bbox"]
            behind.append(img[y0:y1, x1 - 1:min(64, x1 + 1)].mean())
            front.append(img[y0:y1, max(0, x0 - 3):x0].mean())
    assert np.mean(behind) < np.mean(front) - 0.15


def test_speckle_is_unit_mean_gamma_with_cv_one_over_sqrt_looks() -> None:
    rng = np.random.default_rng(0)
    flat = np.full((256, 256), 0.05, dtype=np.float32)
    for looks in (1, 4, 16):
        speckled = apply_speckle(flat, looks, rng)
        assert speckled.dtype == np.float32
        assert speckled.mean() == pytest.approx(0.05, rel=0.02)
        assert speckled.std() / speckled.mean() == pytest.approx(1 / np.sqrt(looks), rel=0.03)


def test_speckle_in_db_matches_multilook_theory() -> None:
    """Through the display chain a flat patch has the dB spread of L-look speckle: 10/ln10 * sqrt(trigamma(L))."""
    rng = np.random.default_rng(1)
    flat = np.full((256, 256), 10 ** (-10 / 10), dtype=np.float32)  # -10 dB, well inside the window
    span = DB_WINDOW[1] - DB_WINDOW[0]
    for looks in (1, 4):
        trigamma = np.pi**2 / 6 - sum(1 / k**2 for k in range(1, looks))
        db = intensity_to_unit(apply_speckle(flat, looks, rng)) * span + DB_WINDOW[0]
        inside = db[(db > DB_WINDOW[0]) & (db < DB_WINDOW[1])]
        if looks > 1:  # the 1-look tail crosses the window; only compare the unclipped case
            assert inside.size == db.size
            assert db.std() == pytest.approx(10 / np.log(10) * np.sqrt(trigamma), rel=0.03)


def test_db_window() -> None:
    lo, hi = DB_WINDOW
    values = intensity_to_unit(np.array([10 ** (lo / 10), 10 ** (hi / 10), 10 ** ((lo + hi) / 20), 1e-9, 1e3]))
    np.testing.assert_allclose(values, [0.0, 1.0, 0.5, 0.0, 1.0], atol=1e-5)
    assert values.dtype == np.float32


def test_generation_is_fast() -> None:
    generate_scene(0)
    start = time.perf_counter()
    for seed in range(200):
        generate_scene(seed, image_size=64)
    assert (time.perf_counter() - start) / 200 < 5e-3


# ---------------------------------------------------------------------------------------------- dataset


def test_dataset_items() -> None:
    ds = SyntheticSARDataset("train", num_samples=10, image_size=32, in_chans=2, n_captions=3)
    assert len(ds) == 10 and ds.classnames == list(SYNTHETIC_CLASSES)
    item = ds[4]
    assert set(item) == {"image", "captions", "label", "index"}
    assert isinstance(item["image"], torch.Tensor) and item["image"].dtype == torch.float32
    assert item["image"].shape == (2, 32, 32)
    assert len(item["captions"]) == 3 and all(isinstance(c, str) for c in item["captions"])
    assert isinstance(item["label"], int) and item["index"] == 4
    assert ds.scene(4).objects[0]["class"] == SYNTHETIC_CLASSES[item["label"]]
    assert torch.equal(ds[-1]["image"], ds[9]["image"])
    with pytest.raises(IndexError):
        ds[10]


def test_dataset_deterministic_order_independent_and_size_independent() -> None:
    a = SyntheticSARDataset("val", num_samples=20, image_size=32, seed=3)
    b = SyntheticSARDataset("val", num_samples=20, image_size=32, seed=3)
    assert [torch.equal(a[i]["image"], b[i]["image"]) for i in (5, 0, 19)] == [True] * 3
    assert a[5]["captions"] == b[5]["captions"]
    assert a.item_seed(5) == SyntheticSARDataset("val", num_samples=40, image_size=32, seed=3).item_seed(5)
    assert a.item_seed(5) != SyntheticSARDataset("val", num_samples=20, image_size=32, seed=4).item_seed(5)


def test_splits_are_disjoint() -> None:
    train = SyntheticSARDataset("train", num_samples=40, image_size=32)
    val = SyntheticSARDataset("val", num_samples=40, image_size=32)
    test = SyntheticSARDataset("test", num_samples=40, image_size=32)
    seeds = [{ds.item_seed(i) for i in range(40)} for ds in (train, val, test)]
    assert not (seeds[0] & seeds[1]) and not (seeds[0] & seeds[2]) and not (seeds[1] & seeds[2])
    train_images = {train[i]["image"].numpy().tobytes() for i in range(40)}
    assert not any(val[i]["image"].numpy().tobytes() in train_images for i in range(40))


def test_dataset_labels_are_balanced() -> None:
    ds = SyntheticSARDataset("train", num_samples=103, image_size=32)
    counts = np.bincount(ds.labels, minlength=len(SYNTHETIC_CLASSES))
    assert counts.max() - counts.min() <= 1
    assert not np.array_equal(ds.labels, np.arange(103) % 5)  # shuffled, not a plain cycle
    assert [ds[i]["label"] for i in range(10)] == ds.labels[:10].tolist()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"split": "validation"}, "split"),
        ({"in_chans": 3}, "in_chans"),
        ({"image_size": 16}, "image_size"),
        ({"looks": 0}, "looks"),
        ({"n_captions": 0}, "n_captions"),
        ({"num_samples": 0}, "num_samples"),
    ],
)
def test_dataset_bad_arguments(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SyntheticSARDataset(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"in_chans": 0}, "in_chans"), ({"image_size": 31}, "image_size"), ({"looks": 0.5}, "looks"),
     ({"n_captions": 0}, "n_captions"), ({"label": 5}, "label"), ({"label": -1}, "label")],
)
def test_generate_scene_bad_arguments(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        generate_scene(0, **kwargs)

"""SAR-safe augmentation: seeded, geometry only where captions carry no position, gains that keep speckle."""

from __future__ import annotations

import random

import numpy as np
import pytest

from lightning_sarclip.data.augment import ChipAugment
from lightning_sarclip.training import SourceDataModule
from tests.conftest import REPO_ROOT, TEST_ARCH

MSTAR = REPO_ROOT / "tests" / "data" / "mstar" / "jpeg_folders"


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).gamma(1.0, 0.2, size=(1, 24, 32)).clip(0, 1).astype(np.float32)


def test_same_seed_same_augmentation_and_every_draw_used():
    image = _image()
    a = ChipAugment()(image, random.Random(7))
    assert np.array_equal(a, ChipAugment()(image, random.Random(7)))
    variants = {ChipAugment()(image, random.Random(s)).tobytes() for s in range(20)}
    assert len(variants) > 10


def test_no_geometry_keeps_every_pixel_in_place():
    image = _image()
    assert np.array_equal(ChipAugment()(image, random.Random(1), geometric=False), image)


def test_horizontal_flips_mirror_left_right_only_and_both_occur():
    """``flips: horizontal`` keeps rows in order (a shadow stays on its side of the target in range)."""
    image = _image()
    seen = set()
    for seed in range(30):
        out = ChipAugment(flips="horizontal", rot90=False, crop_scale=(1, 1))(image, random.Random(seed))
        if np.array_equal(out, image):
            seen.add("kept")
        else:
            assert np.array_equal(out, image[:, :, ::-1]), seed
            seen.add("mirrored")
    assert seen == {"kept", "mirrored"}


def test_db_gain_multiplies_values_within_the_range_and_clips():
    image = _image() * 0.5
    for seed in range(10):
        out = ChipAugment(flips=False, rot90=False, crop_scale=(1, 1), db_jitter=3)(image, random.Random(seed))
        ratio = out[image > 0.01] / image[image > 0.01]
        assert np.allclose(ratio, ratio[0], rtol=1e-5)  # one gain: the speckle's relative statistics are kept
        assert 10 ** (-3 / 20) - 1e-6 <= ratio[0] <= 10 ** (3 / 20) + 1e-6
        assert out.max() <= 1.0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="crop_scale"):
        ChipAugment(crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="db_jitter"):
        ChipAugment(db_jitter=-1)
    with pytest.raises(ValueError, match="flips: expected true, false or 'horizontal', got 'vertical'"):
        ChipAugment(flips="vertical")
    with pytest.raises(ValueError, match="ChipAugment's fields"):
        SourceDataModule(source="mstar", root=str(MSTAR), augment={"rotate": True})


def test_source_datamodule_augments_training_images_only():
    dm = SourceDataModule(source="mstar", root=str(MSTAR), image_size=32, tokenizer=TEST_ARCH,
                          augment={"db_jitter": 2, "crop_scale": [0.5, 0.9]})
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert train.augment == ChipAugment(crop_scale=(0.5, 0.9), db_jitter=2) and val.augment is None
    random.seed(0)
    first = train[0]["image"]
    random.seed(1)
    assert first.shape == (1, 32, 32) and not np.array_equal(first.numpy(), train[0]["image"].numpy())
    assert float(first.min()) >= 0 and float(first.max()) <= 1
    assert np.array_equal(val[0]["image"].numpy(), val[0]["image"].numpy())


def test_images_whose_captions_name_positions_are_not_flipped():
    """Whole detection images are captioned with their objects' positions: only the intensity may change."""
    from lightning_sarclip.data.sources import get_source

    root = REPO_ROOT / "tests" / "data" / "ssdd"
    layout = next(p for p in sorted(root.iterdir()) if p.is_dir())
    dm = SourceDataModule(source="ssdd", root=str(layout), image_size=32, tokenizer=TEST_ARCH, augment=True,
                          detection="whole")
    dm.setup("fit")
    train = dm.datasets["train"]
    assert get_source("ssdd") and any(r.boxes for r in train.records)
    for index, record in enumerate(train.records):
        if not record.boxes:
            continue
        random.seed(index)
        assert np.array_equal(train[index]["image"].numpy(), train.listing.load_image(record, 32, 1).numpy())

"""``center_crop`` of the conversion policies: the central part of a chip, and the same part on every path that
reads a source (the datamodule's splits, ``evaluate``, the folder predictor, the listing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_sarclip.data.image import SARImage
from lightning_sarclip.data.listing import SourceListing
from lightning_sarclip.data.transforms import build_policy, center_cropped
from tests.conftest import REPO_ROOT

MSTAR = REPO_ROOT / "tests" / "data" / "mstar" / "jpeg_folders"


def _ramp(height: int = 10, width: int = 8) -> SARImage:
    return SARImage(np.arange(height * width, dtype=np.uint8).reshape(height, width), "uint8", name="ramp.png")


@pytest.mark.parametrize("value, rows, cols", [(4, (3, 7), (2, 6)), (0.5, (2, 7), (2, 6)), (100, (0, 10), (0, 8)),
                                              (None, (0, 10), (0, 8))])
def test_the_central_pixels_are_kept_and_nothing_is_padded(value, rows, cols):
    image = _ramp()
    out = center_cropped(image, value)
    assert np.array_equal(out.data[:, :, 0], image.data[rows[0]:rows[1], cols[0]:cols[1], 0])
    unit = build_policy({"name": "integer", "center_crop": value})(image)
    assert unit.shape == (1, rows[1] - rows[0], cols[1] - cols[0])
    assert np.allclose(unit[0], image.data[rows[0]:rows[1], cols[0]:cols[1], 0] / 255.0)


@pytest.mark.parametrize("name", ["integer", "db_window", "percentile"])
@pytest.mark.parametrize("value", [0, -3, 1.5, 0.0, True, "64"])
def test_bad_crops_are_refused_naming_the_setting(name, value):
    with pytest.raises(ValueError, match=r"center_crop must be null, a side in pixels >= 1"):
        build_policy({"name": name, "center_crop": value})


def test_every_path_reads_the_same_cropped_chip():
    """The listing, the datamodule's held-out split, evaluate's prepared dataset and the folder predictor all give
    the chip cut to its centre, then resized to the model's size."""
    from lightning_sarclip.eval.evaluate import DatasetSpec, _prepare_source
    from lightning_sarclip.training import SourceDataModule
    from lightning_sarclip.training.prediction import ImageFolderDataset

    policy = {"name": "integer", "center_crop": 0.5}
    listing = SourceListing("mstar", MSTAR, "test", policy=policy)
    record = next(iter(listing.records()))
    full = SourceListing("mstar", MSTAR, "test").load_array(record, 1)
    cropped = listing.load_array(record, 1)
    h, w = full.shape[1:]
    assert cropped.shape == (1, round(h / 2), round(w / 2))
    assert np.array_equal(cropped, full[:, (h - cropped.shape[1]) // 2:(h - cropped.shape[1]) // 2 + cropped.shape[1],
                                        (w - cropped.shape[2]) // 2:(w - cropped.shape[2]) // 2 + cropped.shape[2]])
    expected = listing.load_image(record, 16, 1)

    dm = SourceDataModule(source="mstar", root=str(MSTAR), image_size=16, n_captions=1, policy=policy)
    dm.setup("test")
    served = dm.datasets["test"]
    position = [r.source_id for r in served.records].index(record.source_id)
    assert torch.allclose(served[position]["image"], expected)

    prepared = _prepare_source(DatasetSpec(name="m", source="mstar", root=str(MSTAR), split="test", policy=policy),
                               16, 1)
    position = [r.source_id for r in prepared.images.records].index(record.source_id)
    assert torch.allclose(prepared.images[position]["image"], expected)

    folder = ImageFolderDataset(Path(record.image.path).parent, image_size=16, in_chans=1, policy=policy)
    assert torch.allclose(folder.load(folder.paths.index(record.image.path)), expected)

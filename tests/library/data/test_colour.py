"""Colour images (optical RS, RGB JPEG/PNG) reach a one-channel model as luminance, polarimetric stacks as co-pol.

A pure-green picture is the telling case: its red channel is 0, so keeping the first channel turned it black.
"""

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from lightning_sarclip.data.corpus import build_corpus, decode_png, read_shard
from lightning_sarclip.data.corpus_config import CorpusConfig, CorpusSource
from lightning_sarclip.data.image import is_colour
from lightning_sarclip.data.io import read_sar
from lightning_sarclip.data.listing import SourceListing
from lightning_sarclip.data.records import ImageRef
from lightning_sarclip.data.transforms import LUMA_WEIGHTS, build_policy, model_array, to_model_channels
from lightning_sarclip.training.prediction import ImageFolderDataset

GREEN = 0.587 * 255 / 255  # BT.601 luminance of (0, 255, 0), in [0, 1]


def _green(path: Path) -> Path:
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[..., 1] = 255
    Image.fromarray(pixels, mode="RGB").save(path)
    return path


def _class_folder(tmp_path: Path) -> Path:
    root = tmp_path / "optical"
    for name in ("forest", "meadow"):
        (root / name).mkdir(parents=True)
        _green(root / name / f"{name}.png")
    return root


def test_luminance_weights_are_bt601():
    rgb = np.stack([np.full((2, 2), v, np.float32) for v in (0.2, 0.6, 1.0)])
    grey = to_model_channels(rgb, 1, colour=True)
    assert grey.shape == (1, 2, 2)
    np.testing.assert_allclose(grey, sum(w * v for w, v in zip(LUMA_WEIGHTS, (0.2, 0.6, 1.0), strict=True)),
                               rtol=1e-6)
    assert to_model_channels(rgb, 3, colour=True) is rgb  # a 3-channel model keeps the colours
    dual = to_model_channels(rgb, 2, colour=True)
    np.testing.assert_array_equal(dual[0], dual[1])  # luminance twice, like single-pol in a dual-pol run
    np.testing.assert_array_equal(to_model_channels(rgb, 1), rgb[:1])  # a pol stack keeps its co-pol channel


def test_a_green_png_is_colour_and_not_black(tmp_path):
    image = read_sar(ImageRef(str(_green(tmp_path / "g.png"))))
    assert is_colour(image)
    array = model_array(image, build_policy("integer"), 1)
    np.testing.assert_allclose(array, GREEN, atol=1e-6)


def test_grey_saved_as_rgb_and_picked_bands_are_not_colour(tmp_path):
    grey = np.repeat(np.arange(64, dtype=np.uint8).reshape(8, 8, 1), 3, axis=2)
    Image.fromarray(grey, mode="RGB").save(tmp_path / "grey.png")
    assert not is_colour(read_sar(ImageRef(str(tmp_path / "grey.png"))))
    picked = read_sar(ImageRef(str(_green(tmp_path / "g.png")), bands=(1,)))
    assert not is_colour(picked) and picked.channels == 1


def test_tiff_colour_comes_from_its_photometric_tag(tmp_path):
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[..., 1] = 255
    tifffile.imwrite(tmp_path / "rgb.tif", pixels, photometric="rgb")
    tifffile.imwrite(tmp_path / "pol.tif", np.moveaxis(pixels, -1, 0), photometric="minisblack",
                     planarconfig="separate")
    policy = build_policy("integer")
    rgb, pol = (read_sar(ImageRef(str(tmp_path / name))) for name in ("rgb.tif", "pol.tif"))
    assert is_colour(rgb) and not is_colour(pol)
    np.testing.assert_allclose(model_array(rgb, policy, 1), GREEN, atol=1e-6)
    np.testing.assert_array_equal(model_array(pol, policy, 1), 0.0)  # HH of this stack is 0: kept as it is


@pytest.mark.parametrize("in_chans", [1, 2])
def test_every_path_sees_the_luminance(tmp_path, in_chans):
    root = _class_folder(tmp_path)
    listing = SourceListing("class_folder", root, "all")
    record = next(iter(listing.records()))
    tensor = listing.load_image(record, 8, in_chans)  # SourceDataset, SourceDataModule, evaluate
    assert tensor.shape == (in_chans, 8, 8)
    assert float(tensor.min()) == pytest.approx(GREEN, abs=1e-5)
    folder = ImageFolderDataset(root, image_size=8, in_chans=in_chans, policy="integer")  # predict, embed
    assert float(folder[0]["image"].min()) == pytest.approx(GREEN, abs=1e-5)


def test_the_corpus_stores_the_luminance(tmp_path):
    root = _class_folder(tmp_path)
    out = tmp_path / "corpus"
    build_corpus(CorpusConfig(output=str(out), max_side=16, sources=[
        CorpusSource(name="class_folder", root=str(root), splits=["all"], n_captions=1, val_fraction=0.0,
                     test_fraction=0.0)]))
    shard = read_shard(next((out / "shards").glob("*.arrow")))
    assert shard.column("channels").to_pylist() == [1, 1]
    stored = decode_png(shard.column("png")[0].as_py())
    assert stored.shape[0] == 1
    np.testing.assert_allclose(stored, round(GREEN * 255) / 255, atol=1 / 255)

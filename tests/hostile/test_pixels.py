"""Hostile pixels: bombs refused from the header within a memory bound, no NaN/inf or saturated values passed on
silently, no guessed band axis. Each case comes from :mod:`tests.hostile.generate`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lightning_sarclip.data.image import SARReadError
from lightning_sarclip.data.io import read_sar
from lightning_sarclip.data.limits import get_limits, set_limits
from lightning_sarclip.data.records import ImageRef
from lightning_sarclip.data.transforms import build_policy
from tests.conftest import REPO_ROOT
from tests.hostile import generate

#: extra peak memory a refused bomb may cost (the refused arrays would be 0.4-4 GB)
RSS_BOUND_MB = 150

_MEASURE = r"""
import json, resource, sys
from lightning_sarclip.data.io import read_sar
from lightning_sarclip.data.records import ImageRef
from lightning_sarclip.data.transforms import build_policy
import tifffile, PIL.Image, scipy.io  # decoders imported before the baseline
policy = build_policy("percentile")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    policy(read_sar(ImageRef(**json.loads(sys.argv[1]))))
    outcome = "read"
except Exception as err:
    outcome = f"{type(err).__name__}: {err}"
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"outcome": outcome, "extra_mb": (after - before) / 1024}))
"""


def _read_in_subprocess(ref: dict, env: dict[str, str] | None = None) -> dict:
    import os

    result = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(ref)], capture_output=True, text=True,
                            cwd=REPO_ROOT, env={**os.environ, **(env or {})}, timeout=300, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


BOMBS = {
    "tiff": (generate.tiff_bomb, "bomb.tif", {}, "10240 x 10240"),
    "png": (generate.png_bomb, "bomb.png", {}, "max_image_pixels"),
    "mstar_header": (generate.mstar_header_bomb, "HB00001.015", {"format": "mstar_raw"}, "2000000000 x 2000000000"),
    "mat": (generate.mat_bomb, "bomb.mat", {}, "variable 'img'"),
}


@pytest.mark.parametrize("case", list(BOMBS))
def test_image_bombs_are_refused_from_the_header_within_a_memory_bound(case: str, tmp_path: Path) -> None:
    writer, name, ref, detail = BOMBS[case]
    path = writer(tmp_path / name)
    assert path.stat().st_size < 1 << 20  # small on disk: the danger is what it asks for
    result = _read_in_subprocess({"path": str(path), **ref})
    assert result["outcome"].startswith("SARReadError"), result
    assert str(path) in result["outcome"] and detail in result["outcome"]
    assert "max_image_pixels" in result["outcome"] and "SARCLIP_MAX_IMAGE_PIXELS" in result["outcome"]
    assert result["extra_mb"] < RSS_BOUND_MB, result


def test_zip_member_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    archive = generate.zip_member_bomb(tmp_path / "chips.zip", inflated=64 << 20)
    result = _read_in_subprocess({"path": str(archive), "member": "chip.tif"},
                                 env={"SARCLIP_MAX_MEMBER_BYTES": str(32 << 20)})
    assert result["outcome"].startswith("SARReadError"), result
    assert f"{archive}!/chip.tif" in result["outcome"] and "67,108,864 bytes" in result["outcome"]
    assert "max_member_bytes = 33,554,432" in result["outcome"]
    assert result["extra_mb"] < 16, result  # nothing inflated


def test_the_pixel_limit_is_one_setting_that_can_be_raised(tmp_path: Path) -> None:
    path = generate.float_tiff(tmp_path / "wide.tif", np.zeros((40, 50), np.float32))
    previous = set_limits(max_image_pixels=1000)
    try:
        with pytest.raises(SARReadError, match="50 x 40 image"):
            read_sar(ImageRef(str(path)))
        set_limits(max_image_pixels=None)
        assert read_sar(ImageRef(str(path))).data.shape == (40, 50, 1)
    finally:
        set_limits(max_image_pixels=previous.max_image_pixels)
    assert get_limits() == previous
    with pytest.raises(ValueError, match="known"):
        set_limits(max_pixels=3)


@pytest.mark.parametrize("writer, count", [(generate.nan_tiff, 1), (generate.inf_tiff, 2)])
@pytest.mark.parametrize("policy", ["integer", "percentile", "db_window"])
def test_nonfinite_pixels_are_an_error_naming_file_and_count(writer, count: int, policy: str, tmp_path: Path) -> None:
    path = writer(tmp_path / "chip.tif")
    image = read_sar(ImageRef(str(path)))
    image.kind = "amplitude" if policy == "db_window" else image.kind
    with pytest.raises(SARReadError, match=rf"{count} of 1024 pixel values are NaN or infinite") as err:
        build_policy(policy)(image)
    assert str(path) in str(err.value) and "nonfinite: zero" in str(err.value)


@pytest.mark.parametrize("policy", ["integer", "percentile", "db_window"])
def test_nonfinite_zero_replaces_and_counts(policy: str, tmp_path: Path) -> None:
    image = read_sar(ImageRef(str(generate.nan_tiff(tmp_path / "chip.tif", count=7))))
    image.kind = "amplitude" if policy == "db_window" else image.kind
    out = build_policy({"name": policy, "nonfinite": "zero"})(image)
    assert np.isfinite(out).all() and out.shape == (1, 32, 32)
    assert image.meta["nonfinite_replaced"] == 7


def test_unknown_nonfinite_setting_is_refused() -> None:
    with pytest.raises(ValueError, match=r"nonfinite must be one of \('error', 'zero'\)"):
        build_policy({"name": "integer", "nonfinite": "ignore"})


def test_float_amplitudes_are_not_clipped_to_white(tmp_path: Path) -> None:
    path = generate.float_amplitude_tiff(tmp_path / "amp.tif")
    with pytest.raises(SARReadError, match=r"outside \[0, 1\].*percentile or db_window") as err:
        build_policy("integer")(read_sar(ImageRef(str(path))))
    assert str(path) in str(err.value)
    clipped = build_policy({"name": "integer", "out_of_range": "clip"})(read_sar(ImageRef(str(path))))
    assert clipped.mean() > 0.99  # the old silent behaviour, now only on request
    stretched = build_policy("percentile")(read_sar(ImageRef(str(path))))
    assert 0.3 < stretched.mean() < 0.7


def test_int16_counts_scale_by_their_type_and_negative_ones_are_refused(tmp_path: Path) -> None:
    counts = read_sar(ImageRef(str(generate.int16_counts_tiff(tmp_path / "counts.tif"))))
    out = build_policy("integer")(counts)
    np.testing.assert_allclose(out[0], counts.data[..., 0] / 32767.0, rtol=1e-6)
    assert out.max() < 0.1  # not saturated
    negative = generate.negative_int16_tiff(tmp_path / "negative.tif")
    with pytest.raises(SARReadError, match="negative values") as err:
        build_policy("integer")(read_sar(ImageRef(str(negative))))
    assert str(negative) in str(err.value)


def test_five_band_first_raster_is_refused_unless_the_band_axis_is_stated(tmp_path: Path) -> None:
    path = generate.five_band_first_tiff(tmp_path / "five.tif")
    with pytest.raises(SARReadError, match=r"ambiguous raster of shape \(5, 32, 32\).*band_axis") as err:
        read_sar(ImageRef(str(path)))
    assert str(path) in str(err.value)
    image = read_sar(ImageRef(str(path), options=(("band_axis", "first"),)))
    assert image.data.shape == (32, 32, 5)


@pytest.mark.parametrize("kwargs, bands_last", [
    ({"photometric": "minisblack", "planarconfig": "separate"}, False),
    ({"photometric": "minisblack", "planarconfig": "contig"}, True),
    ({}, False),  # two pages: at most four pages are read as polarisation bands
])
def test_tiff_band_axis_comes_from_the_file(kwargs: dict, bands_last: bool, tmp_path: Path) -> None:
    import tifffile

    data = np.random.default_rng(0).uniform(0, 1, (16, 24, 2) if bands_last else (2, 16, 24)).astype(np.float32)
    tifffile.imwrite(tmp_path / "x.tif", data, **kwargs)
    image = read_sar(ImageRef(str(tmp_path / "x.tif")))
    assert image.data.shape == (16, 24, 2)
    np.testing.assert_array_equal(image.data, data if bands_last else np.moveaxis(data, 0, -1))


class _Loaded:
    """Just what ``embed_images`` uses of a loaded model; images brighter than 0.5 come out as NaN."""

    image_size, in_chans = 32, 1

    def encode_image(self, images):

        features = images.flatten(1)[:, :4].clone()
        features[images.mean(dim=(1, 2, 3)) > 0.5] = float("nan")
        return features


def test_embed_never_writes_a_nonfinite_embedding_as_a_success(tmp_path: Path) -> None:
    from lightning_sarclip.commands.embed import embed_images

    folder = tmp_path / "images"
    folder.mkdir()
    generate.nan_tiff(folder / "nan_pixel.tif")
    generate.float_tiff(folder / "dark.tif", np.full((32, 32), 0.1, np.float32))
    generate.float_tiff(folder / "bright.tif", np.full((32, 32), 0.9, np.float32))
    paths, embeddings, errors = embed_images(_Loaded(), folder, policy="integer")
    assert [Path(p).name for p in paths] == ["dark.tif"] and np.isfinite(embeddings).all()
    reasons = {Path(p).name: e for p, e in errors}
    assert set(reasons) == {"nan_pixel.tif", "bright.tif"}
    assert "1 of 1024 pixel values are NaN" in reasons["nan_pixel.tif"]
    assert "non-finite embedding" in reasons["bright.tif"]


def test_predict_never_writes_nonfinite_scores_as_a_prediction() -> None:
    import torch

    from lightning_sarclip.training.prediction import ZeroShotPredictionWriter

    writer = ZeroShotPredictionWriter(classnames=["ship", "tank"], topk=2)
    writer.classifier = torch.eye(2)  # (dim, classes): feature i votes for class i
    features = torch.tensor([[1.0, 0.0], [float("nan"), 0.0], [0.0, 1.0]])
    batch = {"index": torch.arange(3), "path": ["a.tif", "b.tif", "c.tif"], "error": ["", "", ""]}
    writer.on_predict_batch_end(None, None, {"image_features": features}, batch, 0)
    rows = {row["path"]: row for row in writer.rows}
    assert rows["a.tif"]["labels"][0] == "ship" and rows["c.tif"]["labels"][0] == "tank"
    assert rows["b.tif"]["labels"] == [] and rows["b.tif"]["scores"] == []
    assert "non-finite scores" in rows["b.tif"]["error"] and "b.tif" in rows["b.tif"]["error"]

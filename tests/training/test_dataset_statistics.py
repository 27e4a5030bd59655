"""``image_mean/image_std: dataset``: statistics measured on the training data when training starts, kept in the
hyper-parameters (so every later reader of the checkpoint uses them) and kept across a resume."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lightning_sarclip.training import SourceDataModule
from lightning_sarclip.training.module import SARCLIPModule
from tests.conftest import REPO_ROOT, TEST_ARCH

MSTAR = REPO_ROOT / "tests" / "data" / "mstar" / "jpeg_folders"


def _dm(**kwargs) -> SourceDataModule:
    return SourceDataModule(**{"source": "mstar", "root": str(MSTAR), "image_size": 32, "batch_size": 2,
                               "n_captions": 1, "tokenizer": TEST_ARCH, **kwargs})


def test_pixel_statistics_are_those_of_the_training_images():
    dm = _dm()
    mean, std = dm.pixel_statistics()
    images = torch.stack([dm.datasets["train"][i]["image"] for i in range(len(dm.datasets["train"]))]).double()
    assert mean == pytest.approx([images.mean().item()], rel=1e-6)
    assert std == pytest.approx([images.std(unbiased=False).item()], rel=1e-6)
    assert 0 < mean[0] < 1 and std[0] > 0


def test_pixel_statistics_with_augmentation_are_deterministic_and_leave_the_generators_alone():
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    dm = _dm(augment={"crop_scale": [0.5, 0.9]})
    first = dm.pixel_statistics()
    assert torch.rand(1) == before  # the global generator continues as if nothing had been drawn
    assert _dm(augment={"crop_scale": [0.5, 0.9]}).pixel_statistics() == first
    assert first != _dm().pixel_statistics()  # the crops change what the model sees, and so the statistics
    few = dm.pixel_statistics(max_images=2)
    assert few != first


@pytest.mark.parametrize("mean, std, message", [
    ("dataset", [0.5], "set both to 'dataset'"),
    ("data", "data", "image_mean: expected a list of numbers, null or 'dataset', got 'data'"),
])
def test_bad_statistics_settings_are_refused(mean, std, message):
    with pytest.raises(ValueError, match=message):
        SARCLIPModule(model_name=TEST_ARCH, image_mean=mean, image_std=std)


def test_measured_statistics_reach_the_checkpoint_and_survive_a_resume(tmp_path):
    dm = _dm()
    expected = dm.pixel_statistics()
    module = SARCLIPModule(model_name=TEST_ARCH, image_mean="dataset", image_std="dataset", warmup_steps=1)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0)
    trainer.fit(module, datamodule=_dm())
    assert module.hparams.image_mean == pytest.approx(expected[0])
    assert module.input_adapter.mean.flatten()[0].item() == pytest.approx(expected[0][0])
    ckpt = tmp_path / "run.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert saved["image_mean"] == pytest.approx(expected[0]) and saved["image_std"] == pytest.approx(expected[1])
    loaded = SARCLIPModule.load_from_checkpoint(ckpt, map_location="cpu")
    assert loaded.input_adapter.std.flatten()[0].item() == pytest.approx(expected[1][0])

    # A resume keeps the statistics the weights were trained with, even where today's data measure others.
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["hyper_parameters"]["image_mean"], state["hyper_parameters"]["image_std"] = [0.25], [0.125]
    torch.save(state, ckpt)
    resumed = SARCLIPModule(model_name=TEST_ARCH, image_mean="dataset", image_std="dataset", warmup_steps=1)
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0)
    trainer.fit(resumed, datamodule=_dm(), ckpt_path=str(ckpt))
    assert resumed.hparams.image_mean == [0.25] and resumed.input_adapter.std.flatten()[0].item() == 0.125

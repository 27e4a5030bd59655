"""load_model: our .ckpt rebuilds the trained model with the normalisation it was trained with."""

import pytest
import torch

from lightning_sarclip.models.factory import tag_config
from lightning_sarclip.models.loading import load_model
from tests.conftest import TEST_ARCH


def test_tag_statistics_are_the_tags_own():
    siglip = tag_config("ViT-B-16-SigLIP", "webli")
    assert (list(siglip["mean"]), list(siglip["std"])) == ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    assert tag_config("ViT-B-32", "/some/file.pt") == {}
    assert tag_config("ViT-B-32", None) == {}


def test_lightning_checkpoint_loads_with_its_hyper_parameters(tiny_checkpoint):
    ckpt = tiny_checkpoint
    loaded = load_model(pretrained=str(ckpt))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert loaded.name == state["hyper_parameters"]["model_name"] == TEST_ARCH
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state["state_dict"][f"model.{key}"]), key
    assert loaded.checkpoint_hash and len(loaded.checkpoint_hash) == 16
    with pytest.raises(ValueError, match="model_name is required"):
        load_model()

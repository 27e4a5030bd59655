"""Model factory: architectures by name, pretrained resolution, SAR stem adaptation, transforms."""

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import save_file

from lightning_sarclip.models import create_model
from lightning_sarclip.models.checkpoints import CheckpointError
from lightning_sarclip.models.factory import build_input_adapter, resolve_pretrained
from lightning_sarclip.models.sar_stem import SARInputAdapter, fold_patch_embedding, map_channels
from tests.conftest import TEST_ARCH


def test_create_model_returns_model_transforms_tokenizer():
    model, train_tf, val_tf, tokenizer = create_model(TEST_ARCH, in_chans=1)
    image = np.random.default_rng(0).random((48, 40), dtype=np.float32)
    x = val_tf(image)
    assert x.shape == (3, 32, 32)
    assert train_tf(image).shape == (3, 32, 32)
    tokens = tokenizer(["a SAR image of a ship."])
    assert tokens.shape == (1, 16)
    with torch.no_grad():
        image_features, text_features, scale = model(x[None], tokens)
    assert image_features.shape == text_features.shape == (1, 32)


def test_tiny_architectures_are_registered_with_open_clip():
    assert TEST_ARCH in open_clip.list_models()
    assert "SARCLIP-ViT-Tiny-64" in open_clip.list_models()


def test_unknown_architecture_suggests_names():
    with pytest.raises(ValueError, match="unknown open_clip architecture 'ViT-B-33'.*ViT-B-32"):
        create_model("ViT-B-33")


def test_missing_checkpoint_file_fails_before_building(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        create_model(TEST_ARCH, pretrained=str(tmp_path / "nope.pt"))


def test_unknown_tag_lists_known_tags():
    with pytest.raises(ValueError, match="Known tags for this architecture: .*openai"):
        create_model("ViT-B-32", pretrained="laion9000")


def test_resolve_pretrained_kinds(tmp_path):
    assert resolve_pretrained("ViT-B-32", None) is None
    assert resolve_pretrained("ViT-B-32", "openai") == ("tag", "openai")
    assert resolve_pretrained("ViT-B-32", "hf-hub:chendelong/RemoteCLIP/RemoteCLIP-ViT-B-32.pt")[0] == "hf"
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"x")
    assert resolve_pretrained("ViT-B-32", str(ckpt)) == ("file", str(ckpt))
    with pytest.raises(ValueError, match="schema"):
        resolve_pretrained("hf-hub:org/repo", "openai")


def test_local_file_and_folder_weights_load(tmp_path):
    source = create_model(TEST_ARCH).model
    save_file(source.state_dict(), tmp_path / "open_clip_model.safetensors")
    for pretrained in (tmp_path / "open_clip_model.safetensors", tmp_path):
        loaded = create_model(TEST_ARCH, pretrained=str(pretrained)).model
        for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values(), strict=True):
            assert torch.equal(a, b), name


def test_image_size_override_and_mean_std():
    model, _, val_tf, _ = create_model(TEST_ARCH, image_size=64, in_chans=2, image_mean=[0.5], image_std=[0.25])
    assert val_tf(np.zeros((80, 80, 2), dtype=np.float32)).shape == (3, 64, 64)
    adapter = build_input_adapter(model, 2, image_mean=[0.5], image_std=[0.25])
    out = adapter(torch.full((1, 2, 4, 4), 0.75))
    torch.testing.assert_close(out, torch.ones(1, 3, 4, 4))


@pytest.mark.parametrize(("in_chans", "mode"), [(1, "replicate"), (2, "vv_vh_mean")])
def test_fold_equals_channel_mapping_when_stats_are_uniform(in_chans, mode):
    model = create_model(TEST_ARCH).model.eval()
    x = torch.rand(2, in_chans, 32, 32)
    mapped = SARInputAdapter(in_chans, mode, mean=[0.4], std=[0.3])
    with torch.no_grad():
        expected = model.encode_image(mapped(x))
        fold_patch_embedding(model.visual, in_chans)
        folded = SARInputAdapter(in_chans, "fold", mean=[0.4], std=[0.3])
        got = model.encode_image(folded(x))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_channel_mapping_values():
    vv_vh = torch.tensor([[[[0.2]], [[0.6]]]])
    torch.testing.assert_close(map_channels(vv_vh, "vv_vh_mean").flatten(), torch.tensor([0.2, 0.6, 0.4]))
    assert map_channels(torch.rand(1, 1, 2, 2), "replicate").shape == (1, 3, 2, 2)


@pytest.mark.parametrize(
    ("in_chans", "mode", "message"),
    [(2, "replicate", "needs in_chans"), (4, "auto", "in_chans"), (1, "magic", "channel_mode")],
)
def test_bad_channel_settings(in_chans, mode, message):
    with pytest.raises(ValueError, match=message):
        SARInputAdapter(in_chans, mode)


def test_adapter_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match=r"expected a \(B, 2, H, W\) batch"):
        SARInputAdapter(2)(torch.rand(1, 1, 8, 8))


def test_weights_follow_builds_the_tags_architecture_without_fetching(monkeypatch, caplog) -> None:
    """A checkpoint fine-tuned from OpenAI's tag is rebuilt as it was trained (QuickGELU, OpenAI statistics)
    without downloading the tag's weights, and without open_clip's "initialized randomly" note."""
    import logging

    import open_clip

    from lightning_sarclip.models.factory import weights_follow

    def no_download(*args, **kwargs):
        raise AssertionError("weights were fetched although a checkpoint follows")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", no_download)
    caplog.set_level(logging.WARNING)
    with weights_follow():
        model = create_model("ViT-B-32", "openai").model
    assert type(model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert tuple(model.visual.preprocess_cfg["mean"]) == tuple(open_clip.OPENAI_DATASET_MEAN)
    assert "initialized randomly" not in caplog.text
    with pytest.raises(RuntimeError, match="fetched"):  # outside the block the tag's weights are loaded
        create_model("ViT-B-32", "openai")


@pytest.mark.parametrize(("tag", "quick_gelu"), [("openai", True), ("laion2b_s34b_b79k", False)])
def test_a_tag_decides_the_activation(monkeypatch, tag, quick_gelu) -> None:
    """ViT-B-32 + ``openai`` is built with QuickGELU as its weights were trained (open_clip would only warn)."""
    from lightning_sarclip.models import factory

    built = {}

    def record(model_name, **kwargs):
        built.update(kwargs)
        raise RuntimeError("stop before any download")

    monkeypatch.setattr(factory.open_clip, "create_model", record)
    with pytest.raises(RuntimeError, match="stop before"):
        create_model("ViT-B-32", tag)
    assert built["force_quick_gelu"] is quick_gelu


def test_explicit_stats_that_differ_from_the_weights_warn_once(tmp_path, monkeypatch, caplog) -> None:
    """Fine-tuning loaded weights with another normalisation (the quickstart's [0.5]/[0.25] on a checkpoint) warns
    once, naming the values; the weights' own statistics, no explicit value, or no weights do not warn."""
    import logging

    from lightning_sarclip.models import factory

    monkeypatch.setattr(factory, "_STATS_WARNED", set())
    caplog.set_level(logging.WARNING, logger="lightning_sarclip")
    weights = tmp_path / "w.safetensors"
    model = create_model(TEST_ARCH).model
    save_file(model.state_dict(), weights)
    own_mean, own_std = factory.preprocess_stats(model)

    def warnings_after(**kwargs) -> list[str]:
        caplog.clear()
        create_model(TEST_ARCH, in_chans=1, **kwargs)
        return [r.getMessage() for r in caplog.records if "normalised otherwise" in r.getMessage()]

    assert warnings_after(pretrained=str(weights)) == []
    assert warnings_after(pretrained=str(weights), image_mean=list(own_mean), image_std=list(own_std)) == []
    assert warnings_after(image_mean=[0.5], image_std=[0.25]) == []  # random init: nothing to differ from
    first = warnings_after(pretrained=str(weights), image_mean=[0.5], image_std=[0.25])
    assert len(first) == 1 and "image_mean=[0.5, 0.5, 0.5]" in first[0] and "image_std=" in first[0]
    assert warnings_after(pretrained=str(weights), image_mean=[0.5], image_std=[0.25]) == []  # once
    assert factory.warn_if_stats_differ(TEST_ARCH, str(weights), (own_mean, own_std), ([0.5], None))

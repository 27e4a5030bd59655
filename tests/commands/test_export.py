"""``export``: a trained run becomes an open_clip folder that stock open_clip loads to the same embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
from torchvision.transforms import Normalize

from lightning_sarclip.commands.export import (
    CARD_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    ExportError,
    export_checkpoint,
    main,
)
from lightning_sarclip.eval.results import append_results
from lightning_sarclip.models.loading import checkpoint_hash, load_model
from tests.conftest import TEST_ARCH


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint: Path) -> Path:
    return tiny_checkpoint


@pytest.fixture(scope="module")
def exported(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_root = ckpt.parents[2]
    append_results(run_root / "results.jsonl", [
        dict(model=TEST_ARCH, checkpoint=str(ckpt), checkpoint_hash=checkpoint_hash(ckpt), dataset="mstar",
             split="test", task="zeroshot", metric="top1", value=0.4321),
        dict(model=TEST_ARCH, checkpoint="other.ckpt", checkpoint_hash="0123456789abcdef", dataset="fusar_ship",
             split="test", task="zeroshot", metric="top1", value=0.9876),
    ])
    # where `evaluate` writes by default (runs/eval/<suite>/results.jsonl): found without --results
    append_results(run_root / "eval" / "suite" / "results.jsonl", [
        dict(model=TEST_ARCH, checkpoint=str(ckpt), checkpoint_hash=checkpoint_hash(ckpt), dataset="opensarship",
             split="test", task="zeroshot", metric="top1", value=0.5555),
    ])
    extra = tmp_path_factory.mktemp("extra") / "extra.md"
    extra.write_text("## Contact\n\nplanted-extra-section\n")
    out = tmp_path_factory.mktemp("export") / "sarclip-test"
    main(["--ckpt", str(ckpt), "--out", str(out), "--model-card-extra", str(extra)])
    return out


def test_folder_layout_and_config(exported: Path, ckpt: Path) -> None:
    assert sorted(p.name for p in exported.iterdir()) == sorted([CARD_NAME, CONFIG_NAME, WEIGHTS_NAME])
    config = json.loads((exported / CONFIG_NAME).read_text())
    reference = open_clip.get_model_config(TEST_ARCH)
    assert config["model_cfg"] == reference  # trained at the architecture's own 32 px
    pre = config["preprocess_cfg"]
    assert pre["mean"] == [0.5] * 3 and pre["std"] == [0.25] * 3  # the quickstart's image_mean/std, per RGB channel
    assert pre["size"] == 32 and pre["mode"] == "RGB" and pre["resize_mode"] == "squash"


def test_local_dir_loads_identical_embeddings(exported: Path, ckpt: Path) -> None:
    ours = load_model(pretrained=str(ckpt))
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{exported}")
    model.eval()
    sar = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    normalised = ours.adapter(sar)
    with torch.no_grad():
        theirs_image = model.encode_image(normalised, normalize=True)
        ours_image = ours.model.encode_image(normalised, normalize=True)
        # The documented SAR convention (replicate to RGB, then preprocess_cfg's Normalize) reproduces our path.
        norm = next(t for t in preprocess.transforms if isinstance(t, Normalize))
        via_card = model.encode_image(norm(sar.expand(-1, 3, -1, -1)), normalize=True)
    assert torch.equal(theirs_image, ours_image)
    assert torch.allclose(via_card, ours.encode_image(sar), atol=1e-6)
    assert list(norm.mean) == ours.adapter.mean.flatten().tolist()
    assert list(norm.std) == ours.adapter.std.flatten().tolist()

    texts = ["a SAR image of a ship.", "a radar image of a T72 tank."]
    tokens = open_clip.get_tokenizer(f"local-dir:{exported}")(texts)
    assert torch.equal(tokens, ours.tokenizer(texts))
    with torch.no_grad():
        assert torch.equal(model.encode_text(tokens, normalize=True), ours.encode_text(tokens))
        assert torch.equal(model.logit_scale, ours.model.logit_scale)


def test_weights_file_loads_into_registered_architecture(exported: Path, ckpt: Path) -> None:
    model = open_clip.create_model(TEST_ARCH, pretrained=str(exported / WEIGHTS_NAME)).eval()
    ours = load_model(pretrained=str(ckpt))
    tokens = ours.tokenizer(["a SAR image of a bridge."])
    with torch.no_grad():
        assert torch.equal(model.encode_text(tokens, normalize=True), ours.encode_text(tokens))
    trained = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, trained[f"model.{name}"]), name


def test_model_card(exported: Path, ckpt: Path) -> None:
    card = (exported / CARD_NAME).read_text()
    for expected in (
        TEST_ARCH, checkpoint_hash(ckpt), "SyntheticSARDataModule", "lr `0.001`", "epochs: `1`", "batch size: `4`",
        "`in_chans = 1`", "replicate", "hf-hub:", "local-dir:", "Licence", "planted-extra-section",
        "| mstar | test | zeroshot | top1 | 43.21 |", "| opensarship | test | zeroshot | top1 | 55.55 |",
    ):
        assert expected in card, expected
    assert "fusar_ship" not in card  # rows of other checkpoints are not this model's results


def test_fold_models_are_refused(ckpt: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["channel_mode"] = "fold"
    folded = tmp_path / "fold.ckpt"
    torch.save(checkpoint, folded)
    with pytest.raises(SystemExit, match="fold"):
        main(["--ckpt", str(folded), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out" / WEIGHTS_NAME).exists()


def test_failed_export_leaves_previous_folder_untouched(exported: Path, ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_checkpoint(ckpt, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    checkpoint["state_dict"].pop("model.text_projection")
    broken = tmp_path / "broken.ckpt"
    torch.save(checkpoint, broken)
    with pytest.raises(ExportError, match="text_projection"):
        export_checkpoint(broken, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no staging folder left, nothing replaced

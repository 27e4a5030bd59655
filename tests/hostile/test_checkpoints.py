"""Bad and hostile checkpoint files through every command that reads one: the same :class:`CheckpointError`
naming the file everywhere, never a bare unpickling/zip error, never the advice to turn ``weights_only`` off, and
never a payload executed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lightning_sarclip.models.checkpoints import CheckpointError
from tests.conftest import REPO_ROOT
from tests.hostile import generate


def _payload_in_hyperparameters(path: Path, good: Path, marker: Path) -> Path:
    checkpoint = torch.load(good, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["image_mean"] = generate._Exec(f"open({str(marker)!r}, 'w').close()")
    torch.save(checkpoint, path)
    return path


BAD = {
    "payload_in_hyperparameters": lambda path, good, marker: _payload_in_hyperparameters(path, good, marker),
    "payload_as_checkpoint": lambda path, good, marker: generate.pickled_payload_checkpoint(path, marker),
    "text_file": lambda path, good, marker: generate.text_checkpoint(path),
    "truncated": lambda path, good, marker: generate.truncated_checkpoint(path, good),
}


def _export(ckpt: Path, tmp: Path) -> None:
    from lightning_sarclip.commands.export import main

    main(["--ckpt", str(ckpt), "--out", str(tmp / "export")])


def _embed(ckpt: Path, tmp: Path) -> None:
    from lightning_sarclip.commands.embed import main

    texts = tmp / "texts.txt"
    texts.write_text("a SAR image of a ship.\n")
    main(["--ckpt", str(ckpt), "--texts", str(texts), "--out", str(tmp / "texts.parquet")])


def _evaluate(ckpt: Path, tmp: Path) -> None:
    from lightning_sarclip.commands.evaluate import main

    main(["--config", str(REPO_ROOT / "experiments" / "eval" / "quickstart.yaml"), "--model.pretrained", str(ckpt),
          "--output", str(tmp / "results.jsonl")])


def _predict(ckpt: Path, tmp: Path) -> None:
    from lightning_sarclip.commands import main

    folder = tmp / "images"
    folder.mkdir()
    generate.float_tiff(folder / "a.tif", torch.rand(32, 32).numpy())
    main(["predict", "--config", str(REPO_ROOT / "experiments" / "predict.yaml"),
          "--data.init_args.folder", str(folder), "--data.init_args.num_workers", "0",
          "--trainer.callbacks.init_args.classnames", json.dumps(["ship", "tank"]),
          "--trainer.callbacks.init_args.output_csv", str(tmp / "p.csv"),
          "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
          "--run_root", str(tmp / "runs"), "--ckpt_path", str(ckpt)])


def _fit_resume(ckpt: Path, tmp: Path) -> None:
    from lightning_sarclip.commands import main

    main(["fit", "--config", str(REPO_ROOT / "experiments" / "quickstart.yaml"),
          "--model.init_args.model_name", "SARCLIP-ViT-Test-32", "--data.init_args.image_size", "32",
          "--data.init_args.num_train", "8", "--data.init_args.num_val", "4", "--data.init_args.num_test", "4",
          "--data.init_args.batch_size", "4", "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
          "--trainer.callbacks", "[]", "--run_root", str(tmp / "runs"), "--ckpt_path", str(ckpt)])


COMMANDS: dict[str, Callable[[Path, Path], None]] = {
    "export": _export, "embed": _embed, "evaluate": _evaluate, "predict": _predict, "fit --ckpt_path": _fit_resume,
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("kind", list(BAD))
def test_bad_checkpoints_give_one_clear_error_in_every_command(kind: str, command: str, tiny_checkpoint: Path,
                                                              tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    bad = BAD[kind](tmp_path / "bad.ckpt", tiny_checkpoint, marker)
    with pytest.raises(CheckpointError) as err:
        COMMANDS[command](bad, tmp_path)
    message = str(err.value)
    assert str(bad) in message
    assert "will likely succeed" not in message and "weights_only set to False" not in message
    assert not marker.exists()
    assert not (tmp_path / "export").exists() and not (tmp_path / "p.csv").exists()

"""curriculum: stages run in order, each starts from the previous one's weights, finished stages are skipped."""

import copy
import logging
from pathlib import Path

import pytest
import torch

from lightning_sarclip.commands.curriculum import config_from_args, run, stage_args
from tests.conftest import REPO_ROOT, TEST_ARCH

TINY = {
    "trainer.accelerator": "cpu", "trainer.devices": 1, "trainer.strategy": "auto", "trainer.precision": "32-true",
    "trainer.max_epochs": 1, "trainer.limit_train_batches": 2, "trainer.limit_val_batches": 1,
    "trainer.enable_progress_bar": False, "model.init_args.model_name": TEST_ARCH,
    "model.init_args.pretrained": "null",
}


@pytest.fixture
def corpus(fixture_corpus) -> Path:
    return fixture_corpus


def _tiny(config, tmp_path: Path, corpus: Path):
    config = copy.deepcopy(config)
    config.run_root = str(tmp_path)
    optical, sar = config.stages
    optical.overrides.update(TINY)
    optical.overrides["data"]["init_args"].update(
        root=str(REPO_ROOT / "tests" / "data" / "image_caption_table"), batch_size=4, num_workers=0, image_size=32)
    sar.overrides.update(TINY)
    sar.overrides.pop("model.init_args.pretrained")  # stage 2 starts from stage 1
    sar.overrides.update({"model.init_args.lr": 0.0, "data.init_args.root": str(corpus),
                          "data.init_args.batch_size": 4, "data.init_args.num_workers": 0,
                          "data.init_args.image_size": 32, "data.init_args.pin_memory": False})
    return config


def test_two_stage_curriculum_runs_hands_over_weights_and_resumes(tmp_path, corpus, monkeypatch, caplog):
    monkeypatch.chdir(REPO_ROOT)
    config = _tiny(config_from_args(["--config", "experiments/curriculum/two_stage_vitl14.yaml"]), tmp_path, corpus)
    first, second = run(config)
    optical = torch.load(first, weights_only=True)
    sar = torch.load(second, weights_only=True)
    assert optical["global_step"] >= 1 and sar["global_step"] >= 1
    # Stage 2 trained with lr 0, so it ends exactly where stage 1 ended: the hand-over carried the weights.
    for key, value in optical["state_dict"].items():
        assert torch.equal(value, sar["state_dict"][key]), key
    assert "--model.init_args.pretrained" in stage_args(config, 1)
    # Repeating the command skips both finished stages.
    caplog.set_level(logging.INFO, logger="lightning_sarclip")
    assert run(config) == [first, second]
    assert "stage optical already finished" in caplog.text and "stage sar already finished" in caplog.text
    # An unfinished stage resumes from its last.ckpt.
    (tmp_path / "two_stage_vitl14" / "sar" / "stage_done.json").unlink()
    assert stage_args(config, 1)[-2:] == ["--ckpt_path", "last"]


def test_stage_names_must_be_unique(tmp_path):
    config = config_from_args(["--config", str(REPO_ROOT / "experiments/curriculum/two_stage_vitl14.yaml"),
                               "--run_root", str(tmp_path)])
    config.stages[1].name = config.stages[0].name
    with pytest.raises(ValueError, match="unique"):
        run(config)


def test_a_preempted_stage_is_not_marked_done_and_resumes(tmp_path, corpus, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    config = _tiny(config_from_args(["--config", "experiments/curriculum/two_stage_vitl14.yaml"]), tmp_path, corpus)
    # SIGUSR1 arrives during the first step of stage 1: PreemptionCheckpoint (on by default) checkpoints after it
    # and stops the stage there.
    config.stages[0].overrides["trainer.callbacks"] = [
        {"class_path": "tests.helpers.SignalDuringStep", "init_args": {"step": 0}}]
    config.stages[0].overrides["data"]["init_args"]["batch_size"] = 1  # 3 training images, 2 steps (limit)
    assert run(config) == []
    optical_dir = tmp_path / "two_stage_vitl14" / "optical"
    assert not (optical_dir / "stage_done.json").exists()
    assert torch.load(optical_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1
    assert not (tmp_path / "two_stage_vitl14" / "sar").exists()  # the next stage did not start
    first, second = run(config)  # resumes stage 1 at step 1 (no signal there), then runs stage 2
    assert torch.load(first, weights_only=True)["global_step"] == 2
    assert (optical_dir / "stage_done.json").exists()

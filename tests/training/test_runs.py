"""Run directories: which checkpoint a restart resumes from, and the finished marker the CLI writes."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from lightning_sarclip.commands import main
from lightning_sarclip.training.runs import finished, mark_finished, resume_checkpoint
from tests.conftest import REPO_ROOT, TEST_ARCH

QUICK = str(REPO_ROOT / "experiments" / "quickstart.yaml")
SMALL = [
    "--model.init_args.model_name", TEST_ARCH, "--data.init_args.image_size", "32",
    "--data.init_args.num_train", "16", "--data.init_args.num_val", "8", "--data.init_args.num_test", "8",
    "--data.init_args.batch_size", "4", "--data.init_args.eval_batch_size", "4", "--data.init_args.num_workers", "0",
    "--trainer.enable_progress_bar", "false", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
]


def _touch(path, mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))


def test_resume_checkpoint_is_the_newest_of_last_and_hpc(tmp_path):
    assert resume_checkpoint(tmp_path) is None
    _touch(tmp_path / "checkpoints" / "last.ckpt", 1000)
    assert resume_checkpoint(tmp_path) == tmp_path / "checkpoints" / "last.ckpt"
    _touch(tmp_path / "hpc_ckpt_1.ckpt", 2000)
    _touch(tmp_path / "hpc_ckpt_2.ckpt", 3000)
    _touch(tmp_path / "hpc_ckpt_notes.ckpt", 9000)  # not Lightning's name pattern
    assert resume_checkpoint(tmp_path) == tmp_path / "hpc_ckpt_2.ckpt"
    _touch(tmp_path / "checkpoints" / "last.ckpt", 4000)
    assert resume_checkpoint(tmp_path) == tmp_path / "checkpoints" / "last.ckpt"
    _touch(tmp_path / "elsewhere" / "last-v1.ckpt", 5000)
    assert resume_checkpoint(tmp_path, tmp_path / "elsewhere") == tmp_path / "elsewhere" / "last-v1.ckpt"


def test_finished_marker_round_trip_and_a_broken_one_is_named(tmp_path):
    assert finished(tmp_path) is None
    mark_finished(tmp_path, global_step=7)
    assert finished(tmp_path)["global_step"] == 7
    (tmp_path / "finished.json").write_text("{half")
    with pytest.raises(ValueError, match="finished.json"):
        finished(tmp_path)


def test_fit_with_ckpt_path_last_starts_fresh_marks_finished_and_resumes_from_the_newest(tmp_path, caplog):
    args = ["fit", "--config", QUICK, *SMALL, "--run_root", str(tmp_path), "--trainer.max_epochs", "1"]
    main([*args, "--ckpt_path", "last"])  # no checkpoint yet: a fresh start, no error
    run_dir = tmp_path / "quickstart"
    assert finished(run_dir)["global_step"] == 2
    assert "no last checkpoint available" not in caplog.text

    # A preemption checkpoint newer than last.ckpt (what Lightning's SIGUSR1 handler writes) wins.
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    shutil.copyfile(run_dir / "checkpoints" / "last.ckpt", hpc)
    os.utime(hpc, (os.path.getmtime(hpc) + 10,) * 2)
    main([*args[:-2], "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert f"Restored all states from the checkpoint at {hpc}" in caplog.text
    assert finished(run_dir)["global_step"] == 4
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


def test_smoke_runs_do_not_count_as_finished(tmp_path):
    main(["fit", "--config", QUICK, *SMALL, "--run_root", str(tmp_path), "--trainer.fast_dev_run", "1"])
    assert finished(tmp_path / "quickstart") is None

"""Slurm for real: a local slurmctld + slurmd, a 2-task sweep array, and a requeued job that resumes.

``tests/slurm/local_cluster.sh`` installs Debian's slurm-wlm and munge when they are missing (root only) and
starts a one-node cluster whose state lives in a temporary folder. Both tests train the same tiny config: the
sweep's tasks run it uninterrupted, the requeue test runs it through ``experiments/slurm/fit.sbatch``, requeues
it from outside in the middle of training, and compares the step count (and the weights) of the two.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lightning_sarclip.runs import finished
from tests.conftest import REPO_ROOT, TEST_ARCH

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

EPOCHS, NUM_TRAIN, BATCH = 2, 48, 4
STEPS = EPOCHS * NUM_TRAIN // BATCH

TRAIN_CONFIG = {
    "seed_everything": 0,
    "trainer": {
        "accelerator": "cpu",
        "max_epochs": EPOCHS,
        "log_every_n_steps": 1,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "callbacks": [{"class_path": "tests.helpers.SlowSteps", "init_args": {"seconds": 0.25}}],
    },
    "model": {
        "class_path": "lightning_sarclip.module.SARCLIPModule",
        "init_args": {"model_name": TEST_ARCH, "lr": 1.0e-3, "warmup_steps": 2, "image_mean": [0.5],
                      "image_std": [0.25]},
    },
    "data": {
        "class_path": "lightning_sarclip.data.SyntheticSARDataModule",
        "init_args": {"num_train": NUM_TRAIN, "num_val": 8, "num_test": 8, "n_captions": 2, "batch_size": BATCH,
                      "image_size": 32, "num_workers": 0},
    },
    "checkpoint": {"every_n_train_steps": 1},
}


def _run(cmd: list[str], env: dict, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory) -> dict:
    """Environment whose SLURM_CONF points at a running local cluster."""
    if shutil.which("slurmctld") is None and (os.geteuid() != 0 or shutil.which("apt-get") is None):
        pytest.skip("Slurm is not installed and this user cannot install it (needs root and apt-get)")
    state = tmp_path_factory.mktemp("slurm")
    script = REPO_ROOT / "tests" / "slurm" / "local_cluster.sh"
    started = subprocess.run(["bash", str(script), "start", str(state)], capture_output=True, text=True, timeout=600)
    assert started.returncode == 0, f"local Slurm cluster did not start:\n{started.stdout}\n{started.stderr}"
    env = {**os.environ, "SLURM_CONF": str(state / "slurm.conf"), "PYTHON": sys.executable}
    yield env
    subprocess.run(["bash", str(script), "stop", str(state)], capture_output=True)


@pytest.fixture(scope="module")
def train_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TRAIN_CONFIG))
    return path


def _job_state(job_id: str, env: dict) -> str:
    """Slurm's state of a job (array jobs: all tasks' states), '' once it left the queue."""
    out = _run(["squeue", "-h", "-j", job_id, "-o", "%T"], env)
    return " ".join(out.stdout.split())


def _wait_until_gone(job_id: str, env: dict, timeout: float, logs: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _job_state(job_id, env):
            return
        time.sleep(1)
    text = "\n".join(p.read_text() for p in sorted(logs.glob("*.out")))
    pytest.fail(f"Slurm job {job_id} still queued after {timeout} s ({_job_state(job_id, env)}); logs:\n{text[-4000:]}")


def _checkpoint_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except (FileNotFoundError, RuntimeError, EOFError, KeyError):
        return -1  # not written yet


@pytest.fixture(scope="module")
def sweep_runs(slurm_env, train_config, tmp_path_factory) -> Path:
    """A 2-run sweep (two seeds of the tiny config) submitted as one array and run to the end."""
    root = tmp_path_factory.mktemp("sweep")
    ablation = root / "seeds.yaml"
    ablation.write_text(yaml.safe_dump({
        "name": "seeds",
        "run_root": str(root / "runs"),
        "configs": [str(train_config)],
        "grid": {"seed_everything": [0, 1]},
        "slurm": {"nodes": 1, "gpus_per_node": 0, "cpus_per_task": 1, "python": sys.executable},
    }))
    command = [sys.executable, "-m", "lightning_sarclip", "sweep", "--config", str(ablation), "--submit"]
    result = _run(command, slurm_env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 to do" in result.stdout
    job_id = result.stdout.strip().splitlines()[-1].split("array job ")[1].split()[0]
    _wait_until_gone(job_id, slurm_env, timeout=400, logs=root / "runs" / "seeds" / "sweep" / "logs")
    again = _run(command, slurm_env, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 finished, 0 to do" in again.stdout and "nothing to submit" in again.stdout
    return root / "runs" / "seeds"


def test_sweep_array_runs_every_task_to_the_end(sweep_runs):
    for run in ("seed_everything=0", "seed_everything=1"):
        record = finished(sweep_runs / run)
        assert record is not None, f"{run} did not finish: {sorted(p.name for p in (sweep_runs / run).iterdir())}"
        assert record["global_step"] == STEPS
        assert (sweep_runs / run / "checkpoints" / "last.ckpt").exists()
    logs = sorted((sweep_runs / "sweep" / "logs").glob("*.out"))
    assert len(logs) == 2


def test_requeued_job_resumes_and_ends_at_the_same_step(slurm_env, train_config, sweep_runs, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    submit = [
        "sbatch", "--parsable", "--gpus-per-node=0", "--ntasks-per-node=1", "--cpus-per-task=1", "--mem=1000",
        "--job-name=requeue-test", f"--output={logs}/%j.out",
        str(REPO_ROOT / "experiments" / "slurm" / "fit.sbatch"), str(train_config),
        "--name", "requeued", "--run_root", str(tmp_path / "runs"),
    ]
    result = _run(submit, slurm_env)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip().split(";")[0]
    last = tmp_path / "runs" / "requeued" / "checkpoints" / "last.ckpt"

    deadline = time.monotonic() + 240
    while _checkpoint_step(last) < 5:
        assert time.monotonic() < deadline, f"no checkpoint at step >= 5 after 240 s:\n{_logs(logs)}"
        assert _job_state(job_id, slurm_env), f"job ended before it could be requeued:\n{_logs(logs)}"
        time.sleep(0.2)
    interrupted_at = _checkpoint_step(last)
    assert interrupted_at < STEPS - 3, "the job ran too fast to be requeued in the middle"
    requeue = _run(["scontrol", "requeue", job_id], slurm_env)
    assert requeue.returncode == 0, requeue.stderr
    # Once the old allocation is cleaned up the job is PENDING again, eligible only after a delay (about 2
    # minutes); move its start to now. (Updating earlier is undone by the requeue itself.)
    deadline = time.monotonic() + 120
    while _job_state(job_id, slurm_env) != "PENDING":
        assert time.monotonic() < deadline, f"the requeued job never became PENDING:\n{_logs(logs)}"
        time.sleep(0.5)
    released = _run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], slurm_env)
    assert released.returncode == 0, released.stderr
    _wait_until_gone(job_id, slurm_env, timeout=300, logs=logs)

    text = _logs(logs)
    assert "restart 1" in text, text[-3000:]
    assert "Restoring states from the checkpoint path" in text, text[-3000:]
    record = finished(tmp_path / "runs" / "requeued")
    assert record is not None, f"the requeued run did not finish:\n{text[-3000:]}"
    reference = finished(sweep_runs / "seed_everything=0")
    assert record["global_step"] == reference["global_step"] == STEPS
    show = _run(["scontrol", "show", "job", job_id], slurm_env).stdout
    assert "Restarts=1" in show, show


def _logs(folder: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(folder.glob("*.out")))

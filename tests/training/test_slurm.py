"""Slurm for real: a local slurmctld + slurmd, a 2-task sweep array, and interrupted jobs that resume exactly.

``tests/slurm/local_cluster.sh`` starts a one-node cluster (installing Debian's slurm-wlm and munge first only
when ``SARCLIP_INSTALL_SLURM=1`` is set, as ``.ci/run`` does; otherwise the tests skip where Slurm is missing), whose state lives in a temporary folder. All tests train the same tiny config: the
sweep's tasks run it uninterrupted; two jobs run it through ``experiments/slurm/fit.sbatch`` and are interrupted
in the middle of training, one requeued from outside (``scontrol requeue``), one sent the preemption signal the
way Slurm sends it (``scancel --signal=USR1``, to the job step's processes), after which it must checkpoint and
requeue itself. Both must end at the step of the uninterrupted run with bit-identical weights.
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

from lightning_sarclip.training.runs import finished
from tests.conftest import REPO_ROOT, TEST_ARCH
from tests.helpers import GATE_ENV

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

EPOCHS, NUM_TRAIN, BATCH = 2, 48, 4
STEPS = EPOCHS * NUM_TRAIN // BATCH
GATE_STEP = 6  # runs of _submit_fit wait here until the test has requeued or signalled them

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
        "deterministic": True,
        # The gate holds runs submitted by _submit_fit at step 6 until the test has acted (see GateAfterStep);
        # sweep runs have no gate file and pass through.
        "callbacks": [{"class_path": "tests.helpers.SlowSteps", "init_args": {"seconds": 0.25}},
                      {"class_path": "tests.helpers.GateAfterStep", "init_args": {"step": GATE_STEP}}],
    },
    "model": {
        "class_path": "lightning_sarclip.training.module.SARCLIPModule",
        "init_args": {"model_name": TEST_ARCH, "lr": 1.0e-3, "warmup_steps": 2, "image_mean": [0.5],
                      "image_std": [0.25]},
    },
    "data": {
        "class_path": "lightning_sarclip.training.SyntheticSARDataModule",
        "init_args": {"num_train": NUM_TRAIN, "num_val": 8, "num_test": 8, "n_captions": 2, "batch_size": BATCH,
                      "image_size": 32, "num_workers": 0},
    },
    "checkpoint": {"every_n_train_steps": 1},
}


def _run(cmd: list[str], env: dict, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, **kwargs)


#: Opt-in: only with this set to 1 may the tests install Debian packages (the suite changes nothing else).
INSTALL_ENV = "SARCLIP_INSTALL_SLURM"


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory) -> dict:
    """Environment whose SLURM_CONF points at a running local cluster."""
    installed = shutil.which("slurmctld") is not None and shutil.which("munged") is not None
    if not installed:
        if os.environ.get(INSTALL_ENV) != "1":
            pytest.skip(f"Slurm (slurm-wlm, munge) is not installed; set {INSTALL_ENV}=1 to let the tests install "
                        "it with apt-get (root), as .ci/run does")
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip(f"{INSTALL_ENV}=1 but installing Slurm needs root and apt-get")
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


def _submit_fit(name: str, env: dict, train_config: Path, tmp_path: Path, *extra: str) -> tuple[str, Path, Path]:
    """``sbatch experiments/slurm/fit.sbatch`` of the tiny config on 1 CPU task; (job id, logs, last.ckpt).

    The run waits at step ``GATE_STEP`` until ``<logs>/gate`` exists (or it received a preemption signal):
    :func:`_release_when_pending` creates the file before the restart is released.
    """
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {**env, GATE_ENV: str(logs / "gate")}
    submit = [
        "sbatch", "--parsable", "--gpus-per-node=0", "--ntasks-per-node=1", "--cpus-per-task=1", "--mem=1000",
        f"--job-name={name}-test", f"--output={logs}/%j.out",
        str(REPO_ROOT / "experiments" / "slurm" / "fit.sbatch"), str(train_config),
        "--name", name, "--run_root", str(tmp_path / "runs"), *extra,
    ]
    result = _run(submit, env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0], logs, tmp_path / "runs" / name / "checkpoints" / "last.ckpt"


def _wait_for_step(job_id: str, last: Path, step: int, env: dict, logs: Path) -> int:
    deadline = time.monotonic() + 240
    while _checkpoint_step(last) < step:
        assert time.monotonic() < deadline, f"no checkpoint at step >= {step} after 240 s:\n{_logs(logs)}"
        assert _job_state(job_id, env), f"job ended before it could be interrupted:\n{_logs(logs)}"
        time.sleep(0.2)
    reached = _checkpoint_step(last)
    assert reached <= GATE_STEP, "the run passed its gate before the test acted"
    return reached


def _release_when_pending(job_id: str, env: dict, logs: Path) -> None:
    """Once the old allocation is cleaned up a requeued job is PENDING again, eligible only after a delay (about 2
    minutes); move its start to now. (Updating earlier is undone by the requeue itself.)"""
    deadline = time.monotonic() + 120
    while _job_state(job_id, env) != "PENDING":
        assert time.monotonic() < deadline, f"the requeued job never became PENDING:\n{_logs(logs)}"
        time.sleep(0.5)
    (logs / "gate").touch()  # the restart must not wait at the gate step again
    released = _run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], env)
    assert released.returncode == 0, released.stderr


def _assert_finished_like_the_uninterrupted_run(job_id: str, run_dir: Path, sweep_runs: Path, env: dict,
                                                logs: Path) -> str:
    text = _logs(logs)
    assert "restart 1" in text, text[-3000:]
    assert f"Restoring states from the checkpoint path at {run_dir / 'checkpoints' / 'last.ckpt'}" in text, text[-3000:]
    record = finished(run_dir)
    assert record is not None, f"the interrupted run did not finish:\n{text[-3000:]}"
    reference = sweep_runs / "seed_everything=0"
    assert record["global_step"] == finished(reference)["global_step"] == STEPS
    weights = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    expected = torch.load(reference / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert weights.keys() == expected.keys()
    differ = [k for k in weights if not torch.equal(weights[k], expected[k])]
    assert not differ, f"{len(differ)} tensors differ from the uninterrupted run, e.g. {differ[:3]}"
    show = _run(["scontrol", "show", "job", job_id], env).stdout
    assert "Restarts=1" in show, show
    return text


def test_requeued_job_resumes_and_ends_at_the_same_step(slurm_env, train_config, sweep_runs, tmp_path):
    job_id, logs, last = _submit_fit("requeued", slurm_env, train_config, tmp_path)
    _wait_for_step(job_id, last, 5, slurm_env, logs)
    requeue = _run(["scontrol", "requeue", job_id], slurm_env)
    assert requeue.returncode == 0, requeue.stderr
    _release_when_pending(job_id, slurm_env, logs)
    _wait_until_gone(job_id, slurm_env, timeout=300, logs=logs)
    _assert_finished_like_the_uninterrupted_run(job_id, tmp_path / "runs" / "requeued", sweep_runs, slurm_env, logs)


def test_preemption_signal_checkpoints_at_a_step_and_the_job_requeues_itself(slurm_env, train_config, sweep_runs,
                                                                            tmp_path):
    # One loader worker: Slurm signals every process of the step, the worker included, and it must survive that.
    job_id, logs, last = _submit_fit("preempted", slurm_env, train_config, tmp_path,
                                     "--data.init_args.num_workers", "1")
    signalled_at = _wait_for_step(job_id, last, 5, slurm_env, logs)
    # What `#SBATCH --signal=SIGUSR1@90` does before the time limit: the signal goes to the job step's processes
    # (the srun'd python), not to the batch shell. No requeue from here: the job must do it.
    signal = _run(["scancel", "--signal=USR1", job_id], slurm_env)
    assert signal.returncode == 0, signal.stderr
    _release_when_pending(job_id, slurm_env, logs)
    saved = torch.load(last, map_location="cpu", weights_only=True)  # what the restart resumes from
    step, loader = saved["global_step"], saved["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert signalled_at <= step < STEPS
    steps_per_epoch = NUM_TRAIN // BATCH
    assert loader == [{"epoch": step // steps_per_epoch, "batches": step % steps_per_epoch,
                       "num_batches": steps_per_epoch}] or loader == [
        {"epoch": step // steps_per_epoch - 1, "batches": steps_per_epoch, "num_batches": steps_per_epoch}]
    _wait_until_gone(job_id, slurm_env, timeout=300, logs=logs)

    run_dir = tmp_path / "runs" / "preempted"
    text = _assert_finished_like_the_uninterrupted_run(job_id, run_dir, sweep_runs, slurm_env, logs)
    assert "preemption: signal received (SIGUSR1)" in text, text[-3000:]
    assert f"preemption: requeued Slurm job {job_id}" in text, text[-3000:]
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt"))  # Lightning's in-handler save stayed off


def _logs(folder: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(folder.glob("*.out")))

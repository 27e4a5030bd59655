"""Graceful preemption: a signal in the middle of a step becomes a consistent checkpoint at the step boundary.

The runs send SIGUSR1 to their own process from ``on_before_optimizer_step`` (after the backward pass, before the
update: the moment at which a checkpoint written inside the handler mixes two steps). The stopped run's
``last.ckpt`` must hold the step *with* its update and the loader position after that batch, and resuming it must
end with the weights of an uninterrupted run (``torch.equal``, deterministic CPU). Lightning's own handler, fed the
same signal, writes a checkpoint that does not resume to those weights, so the comparison can fail.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.trainer.connectors import signal_connector

from lightning_sarclip.commands.fit import SARCLIPCLI
from lightning_sarclip.training import SyntheticSARDataModule, preemption
from lightning_sarclip.training.checkpoint_io import AtomicCheckpointIO, RunCheckpoint
from lightning_sarclip.training.module import SARCLIPModule
from lightning_sarclip.training.preemption import (
    PreemptionCheckpoint,
    slurm_job_id,
    with_slurm_requeue_disabled,
)
from lightning_sarclip.training.runs import finished
from tests.conftest import TEST_ARCH
from tests.helpers import SignalDuringStep

STEPS_PER_EPOCH, EPOCHS = 6, 2  # 24 scenes, batch 4
SIGNAL_STEP = 8  # the signal arrives while step 9 (epoch 1, its 3rd batch) is computed

SLURM_ARRAY_TASK = {"SLURM_JOB_ID": "81", "SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "3", "SLURM_NTASKS": "1",
                    "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                    "SLURM_NODEID": "0", "SLURM_JOB_NAME": "sarclip", "SLURM_NODELIST": "localhost"}


# ---------------------------------------------------------------------------------------------------- units


def test_signal_names_and_slurm_job_ids():
    assert PreemptionCheckpoint(["usr1", "SIGTERM", "SIGUSR1"]).signals == (signal.SIGUSR1, signal.SIGTERM)
    assert PreemptionCheckpoint("USR2").signals == (signal.SIGUSR2,)
    assert not PreemptionCheckpoint([]).enabled
    with pytest.raises(ValueError, match="preemption.signals: 'SIGNOPE' is not a signal name"):
        PreemptionCheckpoint(["SIGNOPE"])
    with pytest.raises(ValueError, match="SIGKILL"):
        PreemptionCheckpoint(["SIGKILL"])
    assert slurm_job_id({}) is None
    assert slurm_job_id({"SLURM_JOB_ID": "12"}) == "12"
    assert slurm_job_id(SLURM_ARRAY_TASK) == "77_3"  # an array task is requeued as itself, not the whole array
    assert slurm_job_id({"SLURM_JOB_ID": "12", "SLURM_JOB_NAME": "interactive"}) is None


def test_lightning_in_handler_save_is_disabled_only_where_lightning_would_pick_slurm():
    slurm = {**SLURM_ARRAY_TASK}
    added = with_slurm_requeue_disabled(["bf16-mixed"], "ddp", slurm)
    assert added[0] == "bf16-mixed" and added[1].class_path.endswith("SLURMEnvironment")
    assert added[1].init_args.auto_requeue is False
    assert with_slurm_requeue_disabled(None, None, {}) is None  # not a Slurm task
    assert with_slurm_requeue_disabled(None, None, {**slurm, "SLURM_JOB_NAME": "bash"}) is None  # interactive
    torchelastic = {**slurm, "RANK": "0", "GROUP_RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    assert with_slurm_requeue_disabled(None, None, torchelastic) is None  # Lightning prefers TorchElastic
    own = [{"class_path": "lightning.fabric.plugins.environments.SLURMEnvironment"}]
    assert with_slurm_requeue_disabled(own, None, slurm) is own  # the user's cluster environment is kept
    strategy = {"class_path": "lightning.pytorch.strategies.DDPStrategy",
                "init_args": {"cluster_environment": {"class_path": "lightning.fabric.plugins.environments."
                                                                    "LightningEnvironment"}}}
    assert with_slurm_requeue_disabled(None, strategy, slurm) is None


def _restore_rank_zero(monkeypatch) -> None:
    """A trainer built as rank 1 sets Lightning's process-wide rank-zero flags; put them back after the test, or
    later tests in this process lose every rank-zero log line and printed result."""
    import lightning.fabric.utilities.rank_zero as fabric_rank_zero
    import lightning.pytorch.utilities.rank_zero as pytorch_rank_zero
    import lightning_utilities.core.rank_zero as utils_rank_zero

    for module in (fabric_rank_zero, pytorch_rank_zero, utils_rank_zero):
        monkeypatch.setattr(module.rank_zero_only, "rank", module.rank_zero_only.rank)


def test_cli_adds_the_callback_and_keeps_slurm_ranks(tmp_path, monkeypatch):
    _restore_rank_zero(monkeypatch)
    config = _config(tmp_path / "tiny.yaml")
    base = ["--config", str(config), "--run_root", str(tmp_path / "runs"), "--trainer.callbacks", "[]"]
    cli = SARCLIPCLI(args=base, run=False)
    callback = next(cb for cb in cli.trainer.callbacks if isinstance(cb, PreemptionCheckpoint))
    assert callback.signals == (signal.SIGUSR1,) and callback.requeue
    assert not isinstance(cli.trainer._accelerator_connector.cluster_environment, SLURMEnvironment)

    # Rank 1 of 2 in a Slurm job: ranks and world size still come from Slurm, only auto-requeue is off.
    for key, value in {**SLURM_ARRAY_TASK, "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "1",
                       "SLURM_LOCALID": "1"}.items():
        monkeypatch.setenv(key, value)
    cli = SARCLIPCLI(args=[*base, "--trainer.devices", "2", "--trainer.strategy", "ddp"], run=False)
    environment = cli.trainer._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue is False
    assert (cli.trainer.world_size, cli.trainer.global_rank, cli.trainer.local_rank) == (2, 1, 1)
    # Switched off: Lightning's own Slurm handling is back, and nothing is requeued by the callback.
    cli = SARCLIPCLI(args=[*base, "--trainer.devices", "2", "--trainer.strategy", "ddp", "--preemption.signals", "[]",
                           "--preemption.requeue", "false"], run=False)
    environment = cli.trainer._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue is True


# ---------------------------------------------------------------------------------------------------- CLI runs


def _config(path: Path, callbacks: list | None = None) -> Path:
    config = {
        "name": "run",
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "precision": "32-true", "max_epochs": EPOCHS, "deterministic": True,
            "logger": False, "enable_progress_bar": False, "enable_model_summary": False, "limit_val_batches": 1,
            "num_sanity_val_steps": 0, "callbacks": callbacks or [],
        },
        "checkpoint": {"every_n_train_steps": 4},  # periodic saves at 4 and 8: the preemption one is at 9
        "model": {"class_path": "lightning_sarclip.training.module.SARCLIPModule",
                  "init_args": {"model_name": TEST_ARCH, "lr": 2e-3, "warmup_steps": 2}},
        "data": {"class_path": "lightning_sarclip.training.SyntheticSARDataModule",
                 "init_args": {"num_train": 24, "num_val": 4, "num_test": 4, "n_captions": 3, "image_size": 32,
                               "batch_size": 4, "num_workers": 0}},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _fit(config: Path, run_root: Path, *extra: str) -> SARCLIPCLI:
    return SARCLIPCLI(args=["fit", "--config", str(config), "--run_root", str(run_root), "--ckpt_path", "last",
                            *extra])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


@pytest.mark.slow
@pytest.mark.parametrize("signal_step", [SIGNAL_STEP, STEPS_PER_EPOCH - 1])  # mid-epoch; the last batch of epoch 0
def test_signal_mid_step_checkpoints_at_the_boundary_requeues_and_resumes_exactly(tmp_path, monkeypatch, signal_step):
    plain = _config(tmp_path / "plain.yaml")
    signalled = _config(tmp_path / "signalled.yaml", [{"class_path": "tests.helpers.SignalDuringStep",
                                                       "init_args": {"step": signal_step}}])
    total = EPOCHS * STEPS_PER_EPOCH
    epoch, batches = divmod(signal_step + 1, STEPS_PER_EPOCH)
    if batches == 0:  # the last batch of an epoch: the checkpoint is that epoch's, with all its batches done
        epoch, batches = epoch - 1, STEPS_PER_EPOCH

    straight = _fit(plain, tmp_path / "straight")
    assert finished(tmp_path / "straight" / "run")["global_step"] == total
    expected = _weights(tmp_path / "straight" / "run" / "checkpoints" / "last.ckpt")

    # Inside a (simulated) Slurm array task; scontrol is replaced by a recorder.
    requeued = []
    monkeypatch.setattr(preemption, "requeue_slurm_job", lambda job_id: requeued.append(job_id) or True)
    for key, value in SLURM_ARRAY_TASK.items():
        monkeypatch.setenv(key, value)
    handler_before = signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)
    stopped = _fit(signalled, tmp_path / "preempted")
    run_dir = tmp_path / "preempted" / "run"
    trainer = stopped.trainer
    callback = next(cb for cb in trainer.callbacks if isinstance(cb, PreemptionCheckpoint))
    assert trainer._accelerator_connector.cluster_environment.auto_requeue is False
    assert callback.received == signal.SIGUSR1 and callback.preempted_at == signal_step + 1
    assert trainer.global_step == signal_step + 1  # stopped right after the step the signal interrupted
    assert requeued == ["77_3"] and callback.requeued == "77_3"
    assert finished(run_dir) is None  # a preempted run is not finished
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt"))  # Lightning's in-handler save did not run
    # Handlers (SIGTERM too, noted after the requeue) and the trainer settings changed to stop are restored.
    assert (signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)) == handler_before
    assert trainer.limit_val_batches == 1
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert callback.checkpoint_path == str(run_dir / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == signal_step + 1 and saved["epoch"] == epoch
    # The loader position agrees with the step (e.g. 9 steps = one epoch of 6 + 3 batches of epoch 1).
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": epoch, "batches": batches, "num_batches": STEPS_PER_EPOCH}]
    for key in SLURM_ARRAY_TASK:
        monkeypatch.delenv(key)

    # The restart: the same command line.
    _fit(plain, tmp_path / "preempted")
    assert finished(run_dir)["global_step"] == straight.trainer.global_step == total
    _assert_same_weights(_weights(run_dir / "checkpoints" / "last.ckpt"), expected)
    if signal_step != SIGNAL_STEP:
        return

    # Control: Lightning's handler, given the same signal at the same moment, saves from inside the step (the loader
    # has yielded step 9's batch, the update is not done), and that checkpoint does not resume to the same run.
    monkeypatch.setattr(signal_connector, "call", lambda *args, **kwargs: 0)  # its `scontrol requeue`
    for key, value in SLURM_ARRAY_TASK.items():
        monkeypatch.setenv(key, value)
    lightning = _fit(signalled, tmp_path / "lightning", "--preemption.signals", "[]")
    hpc = tmp_path / "lightning" / "run" / "hpc_ckpt_1.ckpt"
    assert lightning.trainer.global_step == total and hpc.exists()  # its handler saves but does not stop the run
    for key in SLURM_ARRAY_TASK:
        monkeypatch.delenv(key)
    inconsistent = torch.load(hpc, map_location="cpu", weights_only=True)
    # Step 8's weights with the loader already past step 9's batch: the resumed run skips that batch.
    assert inconsistent["global_step"] == SIGNAL_STEP
    assert inconsistent["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches"] == 3
    resumed = SARCLIPCLI(args=["fit", "--config", str(plain), "--run_root", str(tmp_path / "hpc_resume"),
                               "--ckpt_path", str(hpc)])
    assert resumed.trainer.global_step == total - 1  # step 9's batch was never trained
    assert finished(tmp_path / "hpc_resume" / "run")["global_step"] == total - 1


def test_sigterm_from_another_scheduler_stops_at_the_step_without_requeue(tmp_path, monkeypatch):
    """Outside Slurm, with SIGTERM configured: Lightning's own SIGTERM handling (which ends the run at the next step
    with SIGTERMException, no checkpoint) is replaced; no ModelCheckpoint keeps last.ckpt, so it is written directly."""
    requeued = []
    monkeypatch.setattr(preemption, "requeue_slurm_job", lambda job_id: requeued.append(job_id) or True)
    config = _config(tmp_path / "term.yaml", [{"class_path": "tests.helpers.SignalDuringStep",
                                               "init_args": {"step": 2, "name": "SIGTERM"}}])
    before = signal.getsignal(signal.SIGTERM)
    cli = _fit(config, tmp_path / "runs", "--preemption.signals", "[SIGTERM]", "--checkpoint.save_last", "false")
    callback = next(cb for cb in cli.trainer.callbacks if isinstance(cb, PreemptionCheckpoint))
    assert callback.received == signal.SIGTERM and callback.preempted_at == cli.trainer.global_step == 3
    assert not cli.trainer.interrupted and requeued == [] and callback.requeued is None
    run_dir = tmp_path / "runs" / "run"
    assert finished(run_dir) is None
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 3
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches"] == 3
    assert signal.getsignal(signal.SIGTERM) == before


def test_the_command_exits_with_tempfail_when_stopped_and_not_requeued(tmp_path):
    """Outside Slurm nobody requeues: `python -m lightning_sarclip fit` exits 75 (EX_TEMPFAIL), not 0, so a scheduler
    that restarts failed jobs runs it again (and the rerun resumes)."""
    from lightning_sarclip.commands import main

    config = _config(tmp_path / "usr1.yaml", [{"class_path": "tests.helpers.SignalDuringStep",
                                               "init_args": {"step": 2}}])
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--config", str(config), "--run_root", str(tmp_path / "runs"), "--trainer.max_epochs", "1"])
    assert stopped.value.code == preemption.EXIT_PREEMPTED == 75
    assert finished(tmp_path / "runs" / "run") is None
    main(["fit", "--config", str(config), "--run_root", str(tmp_path / "runs"), "--trainer.max_epochs", "1",
          "--ckpt_path", "last"])  # resumes after step 3 (no signal any more) and ends normally
    assert finished(tmp_path / "runs" / "run")["global_step"] == STEPS_PER_EPOCH


# ---------------------------------------------------------------------------------------------------- DDP


def _ddp_runs(rank: int, world_size: int, root: str) -> dict:
    """Straight, preempted (only rank 1 signalled) and resumed 2-rank DDP runs; what each rank saw."""
    os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE=str(world_size), NODE_RANK="0")
    out: dict = {}

    def fit(name: str, extra: list, ckpt_path: str | None = None) -> pl.Trainer:
        pl.seed_everything(0, verbose=False)
        module = SARCLIPModule(model_name=TEST_ARCH, lr=2e-3, warmup_steps=2)
        data = SyntheticSARDataModule(num_train=48, num_val=4, num_test=4, n_captions=3, image_size=32, batch_size=4,
                                      num_workers=0, tokenizer=TEST_ARCH)
        checkpoint = RunCheckpoint(dirpath=Path(root) / name, save_last=True, save_top_k=0, every_n_train_steps=4)
        trainer = pl.Trainer(accelerator="cpu", devices=world_size, strategy="ddp", max_epochs=EPOCHS,
                             deterministic=True, logger=False, enable_progress_bar=False, enable_model_summary=False,
                             limit_val_batches=0, num_sanity_val_steps=0, plugins=[AtomicCheckpointIO()],
                             callbacks=[checkpoint, *extra])
        trainer.fit(module, data, ckpt_path=ckpt_path)
        return trainer

    straight = fit("straight", [])
    out["straight"] = {k: v.clone() for k, v in straight.lightning_module.state_dict().items()}
    callback = PreemptionCheckpoint()
    stopped = fit("run", [callback, SignalDuringStep(SIGNAL_STEP, rank=1)])
    out["stopped_at"] = stopped.global_step
    out["received"] = callback.received.name if callback.received is not None else None
    out["preempted_at"] = callback.preempted_at
    saved = torch.load(Path(root) / "run" / "last.ckpt", map_location="cpu", weights_only=True)
    out["saved"] = (saved["global_step"], saved["loops"]["fit_loop"]["state_dict"]["combined_loader"])
    resumed = fit("run", [], ckpt_path=str(Path(root) / "run" / "last.ckpt"))
    out["resumed_step"] = resumed.global_step
    out["resumed"] = {k: v.clone() for k, v in resumed.lightning_module.state_dict().items()}
    return out


@pytest.mark.slow
def test_ddp_ranks_stop_together_when_only_one_is_signalled(tmp_path):
    from tests.distributed import run_distributed

    rank0, rank1 = run_distributed(_ddp_runs, args=(str(tmp_path),))
    assert (rank0["received"], rank1["received"]) == (None, "SIGUSR1")  # rank 0 never saw the signal
    assert rank0["stopped_at"] == rank1["stopped_at"] == rank0["preempted_at"] == SIGNAL_STEP + 1
    assert rank0["saved"] == (SIGNAL_STEP + 1, [
        {"epoch": 1, "batches": SIGNAL_STEP + 1 - STEPS_PER_EPOCH, "num_batches": STEPS_PER_EPOCH}])
    for rank in (rank0, rank1):
        assert rank["resumed_step"] == EPOCHS * STEPS_PER_EPOCH
        _assert_same_weights(rank["resumed"], rank0["straight"])

"""Graceful preemption: a signal is only noted; every rank checkpoints at the same step boundary, then the run stops.

Lightning's Slurm support (``SLURMEnvironment(auto_requeue=True)``) saves ``hpc_ckpt_<k>.ckpt`` *inside* the
SIGUSR1 handler. A handler runs between two arbitrary bytecodes of the main thread: in the middle of a training
step the weights, the optimizer state, the loop counters and the loader position can belong to different steps,
and every rank is interrupted at its own moment (ranks get the signal at different times). Such a checkpoint
does not resume exactly, and under DDP the ranks may not even agree on the step they saved.

:class:`PreemptionCheckpoint` splits the work:

1. The handler for the configured signals (``SIGUSR1`` by default, what ``#SBATCH --signal=SIGUSR1@90`` sends)
   only records that the signal came.
2. After an optimizer step (``on_train_batch_end``, where ``ModelCheckpoint``'s periodic saves happen and where
   the loader position in the checkpoint is consistent with the step), all ranks decide together whether *any*
   of them was signalled. With ``SARCLIPModule`` this is the same single collective in which the ranks read the
   module's non-finite-step flag (:meth:`~lightning_sarclip.training.module.SARCLIPModule.check_step_flags`),
   and it runs every ``host_sync_every_n_steps`` steps of the module (every step on a CPU; on a GPU every
   ``log_every_n_steps``, where logging reads its metrics anyway): the signal's lead time must cover those
   steps. With another LightningModule it is one all-reduce of a single integer every step.
3. If so, every rank writes ``last.ckpt`` through the trainer's checkpoint callback (atomic with
   ``AtomicCheckpointIO``; the same file ``--ckpt_path last`` resumes), then global rank 0 requeues the Slurm
   job (``scontrol requeue``, only inside a Slurm job and with ``requeue=True``), and the run stops: without
   validation and regardless of ``min_epochs``/``min_steps`` (neither is part of the checkpoint). The
   resumed run continues with the next batch of the same epoch, exactly as from a periodic ``last.ckpt``.

``SARCLIPCLI`` adds this callback by default (``preemption:`` in a config) and, inside a Slurm job, passes
``SLURMEnvironment(auto_requeue=False)`` so that Lightning's in-handler save is off while ranks and world size
still come from Slurm. ``preemption.signals: []`` switches the callback off and gives the signal back to
Lightning. Outside Slurm the callback works the same for any scheduler that signals before it kills (e.g.
``signals: [SIGUSR1, SIGTERM]``); it only checkpoints and stops there. Once the Slurm job is requeued, Slurm
terminates it (SIGTERM, then SIGKILL after ``KillWait``); the callback notes SIGTERM too until the trainer tears
down, so Lightning's SIGTERM handling (which would end each rank at its own point and broadcast from inside the
handler) does not cut the shutdown of the ranks short. Anything later may be terminated; nothing is lost then.

The decision waits for the end of the training step in progress; a signal during validation waits for the next
training step. The signal's lead time (``--signal=SIGUSR1@<seconds>``) must cover that and the checkpoint write.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_sarclip.utils.run_dir import RunDirectory

log = logging.getLogger("lightning_sarclip")

_INTERACTIVE_JOB_NAMES = ("bash", "interactive")
#: Exit status of a command whose run was stopped by a preemption signal and not requeued (sysexits' EX_TEMPFAIL:
#: "try again later"), so that a scheduler restarting failed jobs restarts it rather than taking it as done.
EXIT_PREEMPTED = 75  # Lightning's convention: such Slurm jobs are not managed by Slurm


def _parse_signal(name: str | int) -> signal.Signals | None:
    """``"SIGUSR1"``, ``"usr1"`` or ``10`` -> ``signal.SIGUSR1``; ``None`` for a POSIX signal this platform lacks."""
    if isinstance(name, int) and not isinstance(name, bool):
        return signal.Signals(name)
    text = str(name).strip().upper()
    text = text if text.startswith("SIG") else f"SIG{text}"
    member = getattr(signal, text, None)
    if isinstance(member, signal.Signals):
        return member
    if sys.platform == "win32" and text in ("SIGUSR1", "SIGUSR2", "SIGHUP", "SIGQUIT", "SIGALRM", "SIGCONT"):
        return None
    valid = sorted(s.name for s in signal.Signals if s not in (signal.SIGKILL, getattr(signal, "SIGSTOP", None)))
    raise ValueError(f"preemption.signals: {name!r} is not a signal name; expected one of {', '.join(valid)}")


def slurm_job_id(environ: dict[str, str] | None = None) -> str | None:
    """The id ``scontrol requeue`` takes for this job (``<array job>_<task>`` for array tasks), or ``None`` when this
    process is not part of a Slurm batch job (no job id, or an interactive ``bash``/``interactive`` job)."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_JOB_NAME") in _INTERACTIVE_JOB_NAMES:
        return None
    array_job = env.get("SLURM_ARRAY_JOB_ID")
    job_id = f"{array_job}_{env['SLURM_ARRAY_TASK_ID']}" if array_job and env.get("SLURM_ARRAY_TASK_ID") else None
    job_id = job_id or env.get("SLURM_JOB_ID")
    if job_id is None or not re.fullmatch(r"[0-9]+(_[0-9]+)?", job_id):
        return None
    return job_id


def requeue_slurm_job(job_id: str, timeout: float = 60.0) -> bool:
    """``scontrol requeue <job_id>``; ``False`` (and a warning) when it fails. The job keeps its id and restarts
    with the same batch script once Slurm schedules it again."""
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.warning("preemption: could not run `scontrol requeue %s`: %s", job_id, error)
        return False
    if result.returncode != 0:
        log.warning("preemption: `scontrol requeue %s` failed (exit %d): %s", job_id, result.returncode,
                    (result.stderr or result.stdout).strip())
        return False
    return True


class PreemptionCheckpoint(pl.Callback):
    """On a preemption signal: checkpoint ``last.ckpt`` at the next step boundary on all ranks, requeue, stop.

    Args:
        signals: signal names (``SIGUSR1``, ``USR1``, ``SIGTERM`` ...) that announce a preemption; ``[]`` turns the
            callback off (``SARCLIPCLI`` then leaves Lightning's own Slurm handler in place).
        requeue: inside a Slurm batch job, have global rank 0 run ``scontrol requeue`` once the checkpoint is
            written (as Lightning's handler does). Outside Slurm nothing is requeued either way.

    After a preemption, :attr:`preempted_at` is the global step of the checkpoint, :attr:`checkpoint_path` its file
    and :attr:`requeued` the Slurm job id that was requeued (``None`` if none was).
    """

    def __init__(self, signals: Sequence[str] = ("SIGUSR1",), requeue: bool = True) -> None:
        if isinstance(signals, str):
            signals = [signals]
        parsed = [_parse_signal(name) for name in signals]
        if any(s in (signal.SIGKILL, getattr(signal, "SIGSTOP", None)) for s in parsed):
            raise ValueError(f"preemption.signals: {list(signals)} includes SIGKILL/SIGSTOP, which cannot be handled")
        self.signals: tuple[signal.Signals, ...] = tuple(dict.fromkeys(s for s in parsed if s is not None))
        self.requeue = requeue
        self.received: signal.Signals | None = None
        self.preempted_at: int | None = None
        self.checkpoint_path: str | None = None
        self.requeued: str | None = None
        self._originals: dict[signal.Signals, Any] = {}
        self._handler = self._on_signal  # one bound method, so that "is it still ours?" can be asked
        self._restore: dict[str, Any] = {}
        self._decided_step = -1

    @property
    def enabled(self) -> bool:
        return bool(self.signals)

    # ------------------------------------------------------------------------------------------------- signals
    def _on_signal(self, signum: int, frame: Any) -> None:
        # Only a note: no I/O, no logging, no collectives; the step boundary acts on it.
        if self.received is None:
            self.received = signal.Signals(signum)

    def _install(self, signums: Sequence[signal.Signals]) -> None:
        if threading.current_thread() is not threading.main_thread():
            if signums:
                log.warning("preemption: the trainer does not run in the main thread, so %s cannot be handled",
                            ", ".join(s.name for s in signums))
            return
        for signum in signums:
            current = signal.getsignal(signum)
            if current == self._handler:
                continue
            self._originals.setdefault(signum, current)
            signal.signal(signum, self._handler)

    def _uninstall(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, original in self._originals.items():
                # Lightning's own teardown may already have put its snapshot (our handler) back; anything else that
                # replaced ours since is left alone.
                if signal.getsignal(signum) == self._handler:
                    signal.signal(signum, original if original is not None else signal.SIG_DFL)
        self._originals = {}

    # --------------------------------------------------------------------------------------------------- hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not self.enabled:
            return
        self.received = None
        self.preempted_at = self.checkpoint_path = self.requeued = None
        self._decided_step = -1
        # Before Lightning registers its handlers (after on_fit_start): Lightning then keeps a SIGUSR1 handler that
        # is already set instead of installing its in-handler save.
        self._install(self.signals)

    def _take_over(self) -> None:
        # Lightning always installs its own SIGTERM handler (which ends each signalled rank at its own next step);
        # for the signals configured here, this callback's handling replaces it.
        if self.enabled and self.preempted_at is None:
            self._install(self.signals)

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take_over()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take_over()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Only right after an optimizer step: between the micro-batches of gradient accumulation the accumulated
        # gradients are in no checkpoint. global_step is the same on every rank, so all ranks take part together.
        if not self.enabled or self.preempted_at is not None or trainer.global_step == self._decided_step:
            return
        check = getattr(pl_module, "check_step_flags", None)
        if check is None:  # not a SARCLIPModule: a collective of its own, every step
            self._decided_step = trainer.global_step
            if trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
                self._stop(trainer)
            return
        if trainer.global_step % pl_module.host_sync_interval != 0:
            return
        self._decided_step = trainer.global_step
        # One collective for both flags; it raises NonFiniteLossError (before the checkpoint) after a bad step.
        if check(preempted=self.received is not None):
            self._stop(trainer)

    def _stop(self, trainer: pl.Trainer) -> None:
        job_id = slurm_job_id() if self.requeue else None
        if job_id is not None:
            # Requeueing makes Slurm terminate this job (SIGTERM to every task, SIGKILL after KillWait): note it
            # like the preemption signal, so no rank ends at its own arbitrary point of the shutdown below.
            self._install([signal.SIGTERM])
        name = self.received.name if self.received is not None else "on another rank"
        if trainer.is_global_zero:
            log.warning("preemption: signal received (%s); writing the checkpoint of step %d and stopping", name,
                        trainer.global_step)
        self.checkpoint_path = self._save(trainer)
        self.preempted_at = trainer.global_step
        if job_id is not None and trainer.is_global_zero:
            if requeue_slurm_job(job_id):
                self.requeued = job_id
                log.warning("preemption: requeued Slurm job %s; it resumes from %s", job_id, self.checkpoint_path)
        elif trainer.is_global_zero:
            log.warning("preemption: stopped at step %d; resume with --ckpt_path last (%s)", trainer.global_step,
                        self.checkpoint_path)
        # Stop now: no validation (stopping would run it, and a requeued job has seconds left), and no min_epochs/
        # min_steps (they would keep a stopped run training). Restored in teardown for later trainer calls.
        fit_loop = trainer.fit_loop
        self._restore = {"limit_val_batches": trainer.limit_val_batches, "min_epochs": fit_loop.min_epochs,
                         "min_steps": fit_loop.epoch_loop.min_steps}
        trainer.limit_val_batches = 0
        fit_loop.min_epochs = None
        fit_loop.epoch_loop.min_steps = None
        trainer.should_stop = True

    def _save(self, trainer: pl.Trainer) -> str:
        """``last.ckpt`` of the trainer's checkpoint callback (its path, state and IO), or ``<dir>/last.ckpt``."""
        callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
        keeper = next((cb for cb in callbacks if cb.save_last is True), None)
        if keeper is not None:
            if keeper._last_global_step_saved != trainer.global_step:  # else last.ckpt already holds this step
                keeper._save_last_checkpoint(trainer, keeper._monitor_candidates(trainer))
            return keeper.last_model_path
        # No ModelCheckpoint keeps a last.ckpt (or it links it to a top-k file, which may be older than this step).
        folder = next((cb.dirpath for cb in callbacks if cb.dirpath), None)
        path = Path(folder) if folder else RunDirectory(Path(trainer.default_root_dir)).checkpoints
        trainer.save_checkpoint(path / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}")
        return str(path / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}")

    def _finish(self, trainer: pl.Trainer) -> None:
        self._uninstall()
        if self._restore:
            trainer.limit_val_batches = self._restore["limit_val_batches"]
            trainer.fit_loop.min_epochs = self._restore["min_epochs"]
            trainer.fit_loop.epoch_loop.min_steps = self._restore["min_steps"]
            self._restore = {}

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._finish(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._finish(trainer)  # teardown hooks do not run when fit raises


def stopped_without_requeue(trainer: pl.Trainer) -> bool:
    """Preempted, and no Slurm requeue will restart it: whoever runs the command has to (see :data:`EXIT_PREEMPTED`)."""
    return any(isinstance(cb, PreemptionCheckpoint) and cb.preempted_at is not None and cb.requeued is None
               for cb in trainer.callbacks)


def was_preempted(trainer: pl.Trainer) -> bool:
    """Whether a :class:`PreemptionCheckpoint` stopped this trainer's last fit (so the run has not finished)."""
    return any(isinstance(cb, PreemptionCheckpoint) and cb.preempted_at is not None for cb in trainer.callbacks)


def _is_slurm_task(environ: dict[str, str] | None = None) -> bool:
    """What Lightning's ``SLURMEnvironment.detect()`` checks (``srun`` started this process, not an interactive
    job), without its warning when ``srun`` exists but was not used."""
    env = os.environ if environ is None else environ
    return "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in _INTERACTIVE_JOB_NAMES


def _is_torchelastic(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return all(key in env for key in ("RANK", "GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"))


def _plugin_class(entry: Any) -> type | None:
    """The class a ``trainer.plugins`` entry (instance, ``class_path`` mapping/Namespace or string) stands for."""
    if not isinstance(entry, str | dict) and not hasattr(entry, "class_path"):
        return type(entry)
    path = entry if isinstance(entry, str) else (entry.get("class_path") if isinstance(entry, dict)
                                                 else entry.class_path)
    if not path or "." not in path:
        return None  # a precision string such as "bf16-mixed"
    module_name, _, name = path.rpartition(".")
    try:
        import importlib

        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return None
    return cls if isinstance(cls, type) else None


def with_slurm_requeue_disabled(plugins: Any, strategy: Any = None, environ: dict[str, str] | None = None) -> Any:
    """``trainer.plugins`` (a config value) plus ``SLURMEnvironment(auto_requeue=False)`` when Lightning would pick
    ``SLURMEnvironment`` by itself (a Slurm task, not TorchElastic, no cluster environment in the plugins or the
    strategy's ``cluster_environment``); otherwise ``plugins`` unchanged.

    The environment reads ranks, world size and the main address from Slurm exactly like the detected one; only
    Lightning's SIGUSR1 handler (which saves ``hpc_ckpt_*.ckpt`` from inside the handler and requeues) is left out.
    """
    from jsonargparse import Namespace
    from lightning.fabric.plugins.environments import ClusterEnvironment

    if not _is_slurm_task(environ) or _is_torchelastic(environ):
        return plugins
    entries = list(plugins) if isinstance(plugins, list | tuple) else ([] if plugins is None else [plugins])
    if any(issubclass(cls, ClusterEnvironment) for cls in map(_plugin_class, entries) if cls is not None):
        return plugins
    init_args = strategy.get("init_args") if isinstance(strategy, dict) else getattr(strategy, "init_args", None)
    own = init_args.get("cluster_environment") if isinstance(init_args, dict | Namespace) else None
    if own is not None or getattr(strategy, "cluster_environment", None) is not None:
        return plugins
    environment = Namespace(class_path="lightning.fabric.plugins.environments.SLURMEnvironment",
                            init_args=Namespace(auto_requeue=False))
    return [*entries, environment]

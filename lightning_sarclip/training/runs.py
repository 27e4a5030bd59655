"""Run directories: which checkpoint a restarted run resumes from, and whether a run has finished.

A training run lives in ``<run_root>/<name>/`` (see :mod:`lightning_sarclip.commands.fit`). Two kinds of checkpoint can be
there when a preempted job starts again:

* ``checkpoints/last.ckpt``, written by ``ModelCheckpoint`` (every N steps / every epoch) and, at the step boundary
  after a preemption signal, by :class:`~lightning_sarclip.training.preemption.PreemptionCheckpoint` (the CLI's default);
* ``hpc_ckpt_<k>.ckpt``, written by Lightning's own Slurm handler (only when that callback is switched off with
  ``preemption.signals: []``) from inside the signal handler, just before it requeued the job. It is saved at an
  arbitrary point of a step, so resuming from it is not exact.

Lightning only looks at the second kind when ``ckpt_path`` is ``None``, and only at the first when it is ``"last"``;
a job that was requeued from outside (``scontrol requeue``, a node failure) has no HPC checkpoint at all. So
``--ckpt_path last`` here means *the newest of both*, and a missing checkpoint means a fresh start: the same
command line serves the first start and every restart.

A run that reached its end (``max_epochs``/``max_steps``, or early stopping) writes ``finished.json``; sweeps skip
those runs.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from lightning_sarclip.utils.atomic import atomic_write_json
from lightning_sarclip.utils.run_dir import RunDirectory

_HPC_CHECKPOINT = re.compile(r"hpc_ckpt_(\d+)\.ckpt$")


def resume_checkpoint(run_dir: str | os.PathLike, checkpoint_dir: str | os.PathLike | None = None) -> Path | None:
    """The newest checkpoint a restarted run should resume from, or ``None`` for a fresh start.

    Candidates are ``<checkpoint_dir>/last*.ckpt`` (default ``<run_dir>/checkpoints``) and ``<run_dir>/hpc_ckpt_*.ckpt``;
    the newest file wins (modification time, then the HPC counter), because whichever was written last holds the
    most training.
    """
    run_dir = Path(run_dir)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else RunDirectory(run_dir).checkpoints
    candidates = [p for p in checkpoint_dir.glob("last*.ckpt") if p.is_file()]
    candidates += [p for p in run_dir.glob("hpc_ckpt_*.ckpt") if p.is_file() and _HPC_CHECKPOINT.search(p.name)]
    if not candidates:
        return None

    def order(path: Path) -> tuple[float, int]:
        match = _HPC_CHECKPOINT.search(path.name)
        return path.stat().st_mtime, int(match.group(1)) if match else -1

    return max(candidates, key=order)


def mark_finished(run_dir: str | os.PathLike, **details: Any) -> Path:
    """Record that the run in ``run_dir`` reached its end (``details``: step counts etc.)."""
    path = RunDirectory(Path(run_dir)).finished_marker
    atomic_write_json(path, {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **details}, indent=2, sort_keys=True)
    return path


def finished(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The finish record of ``run_dir``, or ``None`` while the run has not finished."""
    path = RunDirectory(Path(run_dir)).finished_marker
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); delete it to run the experiment again") from error

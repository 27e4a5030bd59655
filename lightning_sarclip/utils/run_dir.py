"""The run directory: where one experiment's files live, as one small value object.

``<run_root>/<name>/`` holds ``config.yaml`` (written by LightningCLI), the TensorBoard events,
``checkpoints/last.ckpt`` (and step/epoch checkpoints), Lightning's Slurm ``hpc_ckpt_*.ckpt`` and, once the run
reached its end, ``finished.json``. A name may contain ``/`` (sweep runs ``<sweep>/<run>``, curriculum stages
``<curriculum>/<stage>``). Every module that needs one of these paths asks this object, so the layout is written
down once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunDirectory"]


@dataclass(frozen=True)
class RunDirectory:
    """``<run_root>/<name>/`` and the files in it."""

    path: Path

    CHECKPOINTS = "checkpoints"
    LAST = "last.ckpt"
    CONFIG = "config.yaml"
    FINISHED = "finished.json"

    @classmethod
    def of(cls, name: str, run_root: str | os.PathLike = "runs") -> RunDirectory:
        """The directory of the experiment ``name`` under ``run_root``."""
        return cls(Path(run_root) / name)

    @classmethod
    def of_checkpoint(cls, checkpoint: str | os.PathLike) -> RunDirectory | None:
        """The run a checkpoint belongs to (``<run>/checkpoints/x.ckpt``), or ``None`` for a file elsewhere."""
        path = Path(checkpoint)
        return cls(path.parent.parent) if path.parent.name == cls.CHECKPOINTS else None

    @property
    def name(self) -> str:
        """The last component of the path (a sweep run's name without its sweep)."""
        return self.path.name

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / self.LAST

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def finished_marker(self) -> Path:
        return self.path / self.FINISHED

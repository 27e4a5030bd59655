"""Checkpoints that survive preemption: atomic writes, and a ``last.ckpt`` that is always the newest state.

* :class:`AtomicCheckpointIO` writes local checkpoints with :func:`lightning_sarclip.utils.atomic.atomic_torch_save`
  (re-exported here): a temporary file *in the destination folder*, ``fsync``-ed, renamed over the destination
  and the folder synced; see :mod:`lightning_sarclip.utils.atomic` for the details (permissions, leftovers of
  killed writers). A ``kill -9`` or a node failure at any moment leaves either the previous complete file or the
  new complete file, never a truncated one. Lightning's own ``TorchCheckpointIO`` writes through an fsspec
  transaction whose temporary file lives in the system temp folder: the final move is a copy (not atomic) when
  that folder is on another filesystem, and nothing is synced. Remote (non-local) paths keep Lightning's behaviour.
* Reading goes through the package's one checkpoint reader (``weights_only``; a bad file is a ``CheckpointError``).
* :class:`RunCheckpoint` is ``ModelCheckpoint`` plus two ``last.ckpt`` writes that ``ModelCheckpoint(save_top_k=0,
  save_last=True)`` leaves out: at the end of every training epoch and at the end of training. Without them a run
  that checkpoints every N steps ends with a ``last.ckpt`` up to N-1 steps old, and a run that checkpoints per
  epoch writes ``last.ckpt`` only once training is over.

``SARCLIPCLI`` uses both by default (``checkpoint:`` is a :class:`RunCheckpoint`; the IO plugin is added unless the
config names a checkpoint plugin of its own).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_sarclip.models.checkpoints import CheckpointError, read_checkpoint
from lightning_sarclip.utils.atomic import atomic_torch_save

__all__ = ["AtomicCheckpointIO", "RunCheckpoint", "atomic_torch_save", "with_atomic_checkpoint_io"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic and durable (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: _PATH, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Local files go through the package's one checkpoint reader
        (:func:`~lightning_sarclip.models.checkpoints.read_checkpoint`): ``weights_only`` loading always, and a bad,
        truncated or hostile file is a :class:`CheckpointError` naming it (``--ckpt_path`` on ``fit`` included).
        Tensors come back on the CPU; Lightning moves model and optimizer state to the device itself."""
        if not _is_local_file_protocol(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        checkpoint = read_checkpoint(path)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise CheckpointError(f"{path}: expected a Lightning training checkpoint (a dict with 'state_dict', "
                                  "as fit writes to checkpoints/last.ckpt); to start from plain weights use "
                                  "--model.init_args.pretrained <file> instead of --ckpt_path")
        return checkpoint


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` also follows every training-epoch end (every ``every_n_epochs``-th
    when that is set) and the end of training.

    Arguments are ``ModelCheckpoint``'s. The extra writes happen only with ``save_last`` and only when no
    checkpoint was written at the current step already (they never replace a top-k or step checkpoint).
    """

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's key, so checkpoints written with a plain ModelCheckpoint restore into this one and back.
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def _write_last(self, trainer: pl.Trainer) -> None:
        if not self.save_last or self._should_skip_saving_checkpoint(trainer):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        every = self._every_n_epochs  # 0 when only steps or time were asked for: then every epoch end
        if every and (trainer.current_epoch + 1) % every:
            return  # every_n_epochs: N keeps its meaning for last.ckpt (saving costs a fraction of a short epoch)
        self._write_last(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._write_last(trainer)


#: Strategies/accelerators that bring their own checkpoint IO (XLA tensors, DeepSpeed's engine files).
_OWN_CHECKPOINT_IO = ("xla", "tpu", "deepspeed")


def _class_path(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict):
        return entry.get("class_path")
    return getattr(entry, "class_path", None) or f"{type(entry).__module__}.{type(entry).__qualname__}"


def _is_checkpoint_io(entry: Any) -> bool:
    from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

    if isinstance(entry, CheckpointIO):
        return True
    path = _class_path(entry)
    if not path or "." not in path:
        return False
    module_name, _, name = path.rpartition(".")
    try:
        import importlib

        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return False
    return isinstance(cls, type) and issubclass(cls, CheckpointIO)


def with_atomic_checkpoint_io(plugins: Any, strategy: Any = None, accelerator: Any = None) -> Any:
    """``trainer.plugins`` (a config value) plus :class:`AtomicCheckpointIO`, unless it names a checkpoint IO already
    or the strategy/accelerator has one of its own (XLA, DeepSpeed): then ``plugins`` unchanged."""
    from jsonargparse import Namespace

    entries = list(plugins) if isinstance(plugins, list | tuple) else ([] if plugins is None else [plugins])
    if any(_is_checkpoint_io(entry) for entry in entries):
        return plugins
    owners = " ".join(str(_class_path(x) or "").lower() for x in (strategy, accelerator) if x is not None)
    if any(name in owners for name in _OWN_CHECKPOINT_IO):
        return plugins
    return [*entries, Namespace(class_path=f"{__name__}.AtomicCheckpointIO")]

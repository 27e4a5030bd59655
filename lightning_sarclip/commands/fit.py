"""``python -m lightning_sarclip {fit,validate,test,predict} --config experiments/<name>.yaml``.

A :class:`~lightning.pytorch.cli.LightningCLI` with the conventions of torchgeo's CLI:

* ``model:`` and ``data:`` take ``class_path`` + ``init_args`` (any ``LightningModule`` / ``LightningDataModule``);
  ``--config`` may be given several times (later files win), ``--print_config`` prints a config that ``--config``
  accepts back, and ``${...}`` interpolation works (OmegaConf parser mode).
* Settings that must agree are linked, not repeated: the data's ``image_size`` and ``in_chans`` are the
  model's; the model's ``model_name`` chooses the data's tokenizer.
* A run directory is derived from the experiment's ``name`` (default: the stem of the first config file):
  ``<run_root>/<name>/`` holds ``config.yaml``, TensorBoard events and ``checkpoints/`` (with ``last.ckpt``),
  so repeating the command with ``--ckpt_path last`` resumes the same run.
* A preemption signal (SIGUSR1 by default) is handled by :class:`~lightning_sarclip.training.preemption.PreemptionCheckpoint`
  (``preemption:``): all ranks write ``last.ckpt`` at the next step boundary, a Slurm job requeues itself, and the
  run stops unfinished. Inside Slurm, Lightning's own handler (which saves from inside the signal handler) is off.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import lightning_sarclip.training  # noqa: F401  (datamodules, callbacks: class_path short names)
from lightning_sarclip.models.checkpoints import CheckpointError, read_checkpoint
from lightning_sarclip.models.factory import has_weights, weights_follow
from lightning_sarclip.training.callbacks import format_table
from lightning_sarclip.training.checkpoint_io import RunCheckpoint, with_atomic_checkpoint_io
from lightning_sarclip.training.datamodules import SARDataModule
from lightning_sarclip.training.module import SARCLIPModule
from lightning_sarclip.training.preemption import (
    EXIT_PREEMPTED,
    PreemptionCheckpoint,
    stopped_without_requeue,
    was_preempted,
    with_slurm_requeue_disabled,
)
from lightning_sarclip.training.runs import finished, mark_finished, resume_checkpoint
from lightning_sarclip.utils.run_dir import RunDirectory

log = logging.getLogger("lightning_sarclip")

class SARCLIPCLI(LightningCLI):
    """LightningCLI with linked SAR settings and a run directory per experiment."""

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf"})
        super().__init__(
            SARCLIPModule,
            SARDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--name", type=str | None, default=None, help="Experiment name (run directory).")
        parser.add_argument("--run_root", type=str, default="runs", help="Folder holding one directory per run.")
        # ModelCheckpoint's arguments; last.ckpt is also rewritten at every epoch end and at the end of training.
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 0})
        # Preemption signals -> consistent last.ckpt at a step boundary + Slurm requeue; `preemption.signals: []`
        # switches it off (and leaves Slurm to Lightning's in-handler hpc_ckpt save).
        parser.add_lightning_class_args(PreemptionCheckpoint, "preemption")
        parser.add_argument("--new_run", type=bool, default=False,
                            help="fit: when the run name already holds a run, start this one as <name>-v<k> "
                            "instead of refusing")
        parser.add_argument("--allow_random_weights", type=bool, default=False,
                            help="validate/test/predict without trained weights (a random baseline); refused "
                            "otherwise")
        parser.link_arguments("data.init_args.image_size", "model.init_args.image_size")
        parser.link_arguments("data.init_args.in_chans", "model.init_args.in_chans")
        parser.link_arguments("model.init_args.model_name", "data.init_args.tokenizer")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        name = config.get("name") or _name_from_configs(config.get("config")) or "default"
        run = RunDirectory.of(name, config.get("run_root") or "runs")
        trainer = config["trainer"]
        if self.subcommand == "fit" and not trainer.get("default_root_dir"):
            name, run = claim_run(name, run, config)
        config["name"] = name
        if not trainer.get("default_root_dir"):
            trainer["default_root_dir"] = str(run.path)
        if config["checkpoint"].get("dirpath") is None:
            config["checkpoint"]["dirpath"] = str(run.checkpoints)
        if trainer.get("logger") in (None, True):
            trainer["logger"] = {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(run.path), "name": "", "version": ""},
            }
        # Atomic checkpoint writes (a kill during a save cannot truncate last.ckpt), unless the config sets its own.
        trainer["plugins"] = with_atomic_checkpoint_io(trainer.get("plugins"), trainer.get("strategy"),
                                                       trainer.get("accelerator"))
        if config["preemption"].get("signals"):
            trainer["plugins"] = with_slurm_requeue_disabled(trainer["plugins"], trainer.get("strategy"))

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads ``--ckpt_path``'s hyper-parameters with a bare ``torch.load``; a bad, truncated or
        hostile file must give the package's :class:`CheckpointError` instead (the one checkpoint reader)."""
        try:
            super()._parse_ckpt_path()
        except Exception as err:
            subcommand = self.config.get("subcommand")
            path = self.config[subcommand].get("ckpt_path") if subcommand else None
            if not path:
                raise
            read_checkpoint(path)  # a CheckpointError naming the file when it cannot be read at all
            if isinstance(err, pickle.UnpicklingError):
                raise CheckpointError(
                    f"{path}: the checkpoint holds pickled Python objects outside its weights (Lightning reads its "
                    "hyper-parameters to configure the run), which are not loaded because unpickling arbitrary "
                    "objects can execute code"
                ) from err
            raise

    def instantiate_classes(self) -> None:
        """Before anything is built: resolve ``--ckpt_path last``, refuse to evaluate or predict with random
        weights, and check the data (cheap), so that a typo does not wait for the model and its pretrained weights
        (minutes for ViT-L). With a checkpoint to load, the model is built as the run's was without fetching the
        weights it started from (:func:`~lightning_sarclip.models.factory.weights_follow`)."""
        if not self.subcommand:  # ``run=False`` (building the objects to inspect them): nothing to check
            super().instantiate_classes()
            return
        config = self.config[self.subcommand]
        if self.subcommand == "fit" and config.get("ckpt_path") == "last":
            config["ckpt_path"] = resolve_last(config)
        refuse_random_weights(self.subcommand, config)
        refuse_missing_classnames(config)
        check_data_first(config.get("data"))
        with weights_follow() if config.get("ckpt_path") else contextlib.nullcontext():
            super().instantiate_classes()

    def after_fit(self) -> None:
        """Mark a run that reached its end (``finished.json``): sweeps skip it, restarts know it is done.

        A run stopped by a preemption signal (:mod:`lightning_sarclip.training.preemption`) has not reached its end.
        """
        trainer = self.trainer
        if not fit_completed(trainer):
            return
        if trainer.is_global_zero:
            mark_finished(trainer.default_root_dir, global_step=trainer.global_step, epoch=trainer.current_epoch,
                          name=self.config_init["fit"].get("name"), metrics=final_metrics(trainer))


def final_metrics(trainer: Trainer) -> dict[str, float]:
    """The last validation metrics the evaluation callback printed (kept in ``finished.json`` to print again)."""
    for callback in trainer.callbacks:
        last = getattr(callback, "last_metrics", None)
        if isinstance(last, dict) and isinstance(last.get("val"), dict):
            return {key: float(value) for key, value in last["val"].items()}
    return {}


def held_run(run: RunDirectory) -> str | None:
    """What ``run`` already holds (a finished run, or a started one with checkpoints), or ``None`` when free.

    A folder with only a ``config.yaml`` or TensorBoard events (a smoke run, a start that failed before its first
    checkpoint) is free: nothing in it can be mixed up with a new run's checkpoints.
    """
    record = finished(run.path)
    if record is not None:
        return (f"a run that finished at step {record.get('global_step')} (epoch {record.get('epoch')}, "
                f"{record.get('finished_at', 'time unknown')})")
    if run.checkpoints.is_dir() and any(run.checkpoints.glob("*.ckpt")):
        return f"a started run with checkpoints in {run.checkpoints}"
    return None


def _extends(record: dict[str, Any], trainer: Any) -> bool:
    """Whether the trainer's budget goes past where the finished run stopped (a resume then trains on)."""
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps")
    more_epochs = max_epochs is not None and max_epochs > int(record.get("epoch") or 0)
    more_steps = max_steps is not None and max_steps > 0 and max_steps > int(record.get("global_step") or 0)
    return more_epochs or more_steps


def claim_run(name: str, run: RunDirectory, config: Any) -> tuple[str, RunDirectory]:
    """The run directory a ``fit`` may write, decided before anything is built.

    * ``--ckpt_path last`` resumes ``run``; when ``run`` has finished and the budget (``max_epochs``/``max_steps``)
      does not go further, it says so, prints its final validation table and exits 0 (so the same command line can
      be repeated safely, as ``make quickstart`` does).
    * Without ``--ckpt_path``, a run name that already holds a run is refused (a second run would put
      ``last-v1.ckpt`` beside the old ``last.ckpt``, a third events file in its TensorBoard folder and overwrite
      ``finished.json``), unless ``--new_run true`` asks for the next free ``<name>-v<k>``.
    """
    ckpt_path = config.get("ckpt_path")
    if ckpt_path == "last":
        record = finished(run.path)
        if record is not None and not _extends(record, config["trainer"]):
            print(f"run {name!r} already finished at step {record.get('global_step')} (epoch {record.get('epoch')}, "
                  f"{record.get('finished_at', 'time unknown')}) in {run.path}: nothing to resume")
            if record.get("metrics"):
                print("\n" + format_table(record["metrics"], f"Validation after fit ({record.get('epoch')} epochs)"))
            raise SystemExit(0)
        return name, run
    holds = held_run(run) if ckpt_path is None else None
    if holds is None:
        return name, run
    if config.get("new_run"):
        version = 2
        while held_run(RunDirectory(run.path.with_name(f"{run.path.name}-v{version}"))) is not None:
            version += 1
        log.info("%s holds %s; this run is %s-v%d", run.path, holds, name, version)
        return f"{name}-v{version}", RunDirectory(run.path.with_name(f"{run.path.name}-v{version}"))
    print(f"error: {run.path} already holds {holds}. Resume it with --ckpt_path last, give this run another "
          f"--name, or pass --new_run true to start it beside the old one as {name}-v2", file=sys.stderr)
    raise SystemExit(2)


def resolve_last(config: Any) -> str | None:
    """``--ckpt_path last``: the newest of ``last.ckpt`` and Lightning's Slurm ``hpc_ckpt_*`` of this run, or
    ``None`` (a fresh start). One command line then serves a run's first start and every restart after preemption
    or requeue (see :mod:`lightning_sarclip.training.runs`)."""
    found = resume_checkpoint(config["trainer"]["default_root_dir"], config["checkpoint"].get("dirpath"))
    if found is not None:
        log.info("resuming %s from %s", config.get("name"), found)
    return str(found) if found is not None else None


#: subcommands that use a model rather than train it: without trained weights their output means nothing
USES_TRAINED_WEIGHTS = ("validate", "test", "predict")


def refuse_random_weights(subcommand: str, config: Any) -> None:
    """``predict``/``validate``/``test`` need a checkpoint (``--ckpt_path``) or pretrained weights; a randomly
    initialised model would label every image and exit 0. ``--allow_random_weights true`` is for a baseline."""
    if subcommand not in USES_TRAINED_WEIGHTS or config.get("ckpt_path") or config.get("allow_random_weights"):
        return
    model = config.get("model")
    init_args = (model.get("init_args") if model is not None else None) or {}
    if has_weights(str(init_args.get("model_name") or ""), init_args.get("pretrained")):
        return
    print(f"error: {subcommand} would use a randomly initialised model: give the trained weights with --ckpt_path "
          "runs/<name>/checkpoints/last.ckpt (or --model.init_args.pretrained), or pass --allow_random_weights true "
          "for a deliberate random baseline", file=sys.stderr)
    raise SystemExit(2)


def refuse_missing_classnames(config: Any) -> None:
    """``predict`` without class names: say so before the model is built (see ``ZeroShotPredictionWriter``)."""
    from lightning_sarclip.training.prediction import MISSING_CLASSNAMES

    callbacks = config["trainer"].get("callbacks") or []
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        class_path = str(getattr(callback, "class_path", "") or "")
        init_args = getattr(callback, "init_args", None)
        if class_path.endswith("ZeroShotPredictionWriter") and (init_args is None or init_args.get("classnames") is None):
            print(f"error: {MISSING_CLASSNAMES}", file=sys.stderr)
            raise SystemExit(2)


def check_data_first(data: Any) -> None:
    """Construct the configured datamodule alone and run its :meth:`SARDataModule.check_data`; a failure ends the
    command with the message (exit status 2), not a traceback from inside ``setup``."""
    class_path = getattr(data, "class_path", None) if data is not None else None
    if not class_path:
        return
    module_name, _, class_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    init_args = data.get("init_args")
    kwargs = init_args.as_dict() if hasattr(init_args, "as_dict") else dict(init_args or {})
    try:
        datamodule = cls(**kwargs)
        check = getattr(datamodule, "check_data", None)
        if check is not None:
            check()
    except (OSError, ValueError) as err:  # DatasetNotFoundError, SourceFormatError, bad options and values
        print(f"error: data ({class_name}): {err}", file=sys.stderr)
        raise SystemExit(2) from err


def fit_completed(trainer: Trainer) -> bool:
    """Whether the trainer's last ``fit`` reached its end: not a smoke run, not interrupted, not preempted.

    Every rank computes the same answer (unlike reading ``finished.json``, which rank 0 may not have written yet).
    """
    return not (trainer.fast_dev_run or trainer.interrupted or was_preempted(trainer)) and trainer.fit_loop.done


def _name_from_configs(configs: Any) -> str | None:
    """Stem of the first ``--config`` file: ``experiments/quickstart.yaml`` -> ``quickstart``."""
    for entry in configs or []:
        path = getattr(entry, "absolute", None) or getattr(entry, "relative", None) or entry
        try:
            return Path(os.fspath(path)).stem
        except TypeError:
            continue
    return None


def main(args: list[str] | None = None) -> None:
    """``fit``/``validate``/``test``/``predict``: ``args`` starts with the subcommand (``None``: ``sys.argv``)."""
    # args=None lets LightningCLI read sys.argv itself (passing both makes it warn).
    cli = SARCLIPCLI(args=args)
    if cli.subcommand == "fit" and stopped_without_requeue(cli.trainer):
        raise SystemExit(EXIT_PREEMPTED)

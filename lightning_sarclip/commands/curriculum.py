"""``curriculum``: multi-stage training, e.g. the paper's two-stage domain transfer (natural -> optical RS -> SAR).

    python -m lightning_sarclip curriculum --config experiments/curriculum/two_stage_vitl14.yaml

A curriculum is a list of stages, each an ordinary ``fit`` (its own training configs, data, learning rate and
unfreezing schedule, given as ``configs`` plus dotted ``overrides``). A stage starts from the previous stage's
final weights (``init_from_previous``: its ``last.ckpt`` becomes the model's ``pretrained``, read by the
checkpoint loader) with a fresh optimizer and schedule. Each stage has its own run directory
``<run_root>/<name>/<stage>/``; a finished stage leaves ``stage_done.json`` there and is skipped when the
command is repeated, an unfinished one resumes from its ``last.ckpt``, so the whole curriculum can be killed and
restarted at any point. Under ``srun``/``torchrun`` every rank runs the same command.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_sarclip.utils.atomic import atomic_write_json
from lightning_sarclip.utils.run_dir import RunDirectory

log = logging.getLogger("lightning_sarclip")


@dataclass
class Stage:
    """One ``fit`` of the curriculum.

    Args:
        name: stage name (its run directory).
        configs: training config files, stacked in order (as repeated ``--config``).
        overrides: dotted keys -> values, as command-line overrides (``model.init_args.lr: 1.0e-5``); a value
            that is a mapping (e.g. a whole ``data`` with ``class_path``/``init_args``) is passed as JSON.
        init_from_previous: start from the previous stage's final weights.
    """

    name: str
    configs: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    init_from_previous: bool = True


@dataclass
class CurriculumConfig:
    name: str
    stages: list[Stage]
    run_root: str = "runs"


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


def stage_args(config: CurriculumConfig, index: int) -> list[str]:
    """The ``fit`` command line of stage ``index`` (what the stage runs; also useful for a dry run)."""
    stage = config.stages[index]
    args = ["fit"]
    for path in stage.configs:
        args += ["--config", path]
    for key, value in stage.overrides.items():
        args += [f"--{key}", _value(value)]
    args += ["--name", f"{config.name}/{stage.name}", "--run_root", config.run_root]
    if index > 0 and stage.init_from_previous:
        args += ["--model.init_args.pretrained", str(final_checkpoint(config, index - 1))]
    if RunDirectory(stage_dir(config, index)).last_checkpoint.exists():
        args += ["--ckpt_path", "last"]
    return args


def stage_dir(config: CurriculumConfig, index: int) -> Path:
    return RunDirectory.of(f"{config.name}/{config.stages[index].name}", config.run_root).path


def final_checkpoint(config: CurriculumConfig, index: int) -> Path:
    marker = stage_dir(config, index) / "stage_done.json"
    if not marker.exists():
        raise RuntimeError(f"curriculum: stage {config.stages[index].name!r} has not finished ({marker} missing)")
    return Path(json.loads(marker.read_text())["checkpoint"])


def run(config: CurriculumConfig) -> list[Path]:
    """Run (or resume) every stage in order; returns the final checkpoint of each stage that finished.

    A stage stopped before its end (a preemption signal, see :mod:`lightning_sarclip.training.preemption`) is not marked
    done and the curriculum stops there; repeating the command resumes that stage.
    """
    from lightning_sarclip.commands.fit import SARCLIPCLI, fit_completed

    names = [s.name for s in config.stages]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"curriculum: stage names must be unique and non-empty, got {names}")
    finals = []
    for index, stage in enumerate(config.stages):
        marker = stage_dir(config, index) / "stage_done.json"
        if marker.exists():
            log.info("curriculum %s: stage %s already finished, skipping", config.name, stage.name)
            finals.append(final_checkpoint(config, index))
            continue
        args = stage_args(config, index)
        log.info("curriculum %s: stage %s: %s", config.name, stage.name, " ".join(args))
        cli = SARCLIPCLI(args=args)
        if not fit_completed(cli.trainer):
            # Preempted (the job has requeued itself) or stopped: the next run of the command resumes this stage.
            log.warning("curriculum %s: stage %s stopped before its end; repeat the command to resume it",
                        config.name, stage.name)
            return finals
        callback = cli.trainer.checkpoint_callback
        last = Path(callback.dirpath) / RunDirectory.LAST if callback else None
        if last is None or not last.exists():
            raise RuntimeError(f"curriculum: stage {stage.name!r} wrote no last.ckpt (checkpointing disabled?)")
        if cli.trainer.is_global_zero:
            atomic_write_json(marker, {"stage": stage.name, "checkpoint": str(last.resolve()),
                                       "global_step": cli.trainer.global_step, "args": args}, indent=1)
        finals.append(last.resolve())
    return finals


def config_from_args(args: list[str]) -> CurriculumConfig:
    from lightning_sarclip.commands.config import parse_dataclass_config

    return parse_dataclass_config(CurriculumConfig, args, "python -m lightning_sarclip curriculum")

def main(args: list[str]) -> list[Path]:
    from lightning_sarclip.training.preemption import EXIT_PREEMPTED

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = config_from_args(args)
    finals = run(config)
    if len(finals) < len(config.stages):  # a stage was preempted: not done, the command has to run again
        raise SystemExit(EXIT_PREEMPTED)
    return finals

"""``sweep``: an ablation grid as concrete run configs and one Slurm array job.

    python -m lightning_sarclip sweep --config experiments/ablations/<name>.yaml            # dry run: write, print
    python -m lightning_sarclip sweep --config experiments/ablations/<name>.yaml --submit   # ... and sbatch it

An ablation file names the training configs every run stacks (``configs``), the grid (dotted keys -> lists of
values; the runs are their cartesian product), optional named ``variants`` (override sets crossed with the grid,
for choices that are not one key, such as a held-out corpus with its evaluation suite), ``fixed`` overrides and the
Slurm resources. The command writes, under ``<run_root>/<name>/sweep/``:

* ``base/``: copies of the stacked configs, so editing ``experiments/`` later does not change a submitted sweep;
* ``configs/<run>.yaml``: one file per run with its overrides, ``name`` and ``run_root`` (stacked after the base);
* ``runs.txt``: the config of every run still to do, one per line (array task ``i`` runs line ``i``);
* ``sweep.sbatch``: the array job; ``manifest.json``: every run, its overrides and whether it finished.

Each run trains in ``<run_root>/<name>/<run>/`` with ``--ckpt_path last``: a preempted or requeued task resumes
from its newest checkpoint (:mod:`lightning_sarclip.training.runs`), and runs that left ``finished.json`` are not part of
the next array, so the same command re-submits only what is missing.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_sarclip.training.runs import finished
from lightning_sarclip.utils.atomic import (
    atomic_append,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from lightning_sarclip.utils.run_dir import RunDirectory

_NAME_SAFE = re.compile(r"[^A-Za-z0-9._=,+-]+")


@dataclass
class SlurmSettings:
    """Resources of every array task (one task = one training run).

    Args:
        nodes: nodes per run.
        gpus_per_node: GPUs per node; 0 runs on CPUs. One task per device (``--ntasks-per-node``), as
            Lightning's ``SLURMEnvironment`` expects; the runs' ``trainer.devices``/``num_nodes`` are set to match.
        tasks_per_node: processes per node for CPU runs (default 1; with GPUs it is ``gpus_per_node``).
        cpus_per_task, mem, time, partition, account, qos: the usual ``#SBATCH`` options (``None`` = leave out).
        max_parallel: at most this many array tasks at once (``--array=...%N``).
        signal_seconds: the preemption signal (SIGUSR1) this many seconds before the time limit: the run writes
            ``last.ckpt`` at the next step and requeues the task (:mod:`lightning_sarclip.training.preemption`).
        python: interpreter on the compute nodes (default: the one running ``sweep``).
        setup: shell lines run before training (``module load ...``, ``source .venv/bin/activate``).
        extra: further ``#SBATCH`` options, e.g. ``--constraint=h100``.
        job_name: ``--job-name`` (default ``sarclip-<sweep name>``).
    """

    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    max_parallel: int | None = None
    signal_seconds: int = 90
    python: str | None = None
    setup: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    job_name: str | None = None


@dataclass
class Variant:
    """A named set of overrides crossed with the grid (``name`` becomes the run-name prefix)."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepConfig:
    """An ablation: what every run stacks, what varies, and where and how it runs.

    Args:
        name: sweep name; runs live in ``<run_root>/<name>/<run>/``.
        configs: training config files every run stacks, in order (as repeated ``--config``).
        grid: dotted keys -> list of values; the runs are the cartesian product.
        variants: named override sets crossed with the grid.
        fixed: overrides shared by every run.
        run_root: folder of the sweep's run directories.
        slurm: resources of each array task.
        submit: call ``sbatch`` (default: write everything and print the command).
        check: parse every run's config with the training CLI first (catches misspelt keys and bad values
            before anything is queued).
        force: submit even while an earlier array of this sweep is still queued or running.
    """

    name: str
    configs: list[str]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    variants: list[Variant] = field(default_factory=list)
    fixed: dict[str, Any] = field(default_factory=dict)
    run_root: str = "runs/sweeps"
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    submit: bool = False
    check: bool = True
    force: bool = False


@dataclass
class Run:
    name: str
    overrides: dict[str, Any]
    config_path: Path
    run_dir: Path
    finished: bool = False


# ----------------------------------------------------------------------------------------------- expansion
def expand(config: SweepConfig) -> list[tuple[str, dict[str, Any]]]:
    """(run name, dotted overrides) of every run, in a stable order: variants outermost, grid keys as given."""
    if not config.name or _NAME_SAFE.search(config.name) or config.name.startswith("."):
        raise ValueError(f"sweep name {config.name!r}: use letters, digits and ._=,+- only")
    if not config.configs:
        raise ValueError(f"sweep {config.name!r}: 'configs' must list at least one training config")
    for key, values in config.grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"sweep {config.name!r}: grid[{key!r}] must be a non-empty list, got {values!r}")
    labels = _short_labels(list(config.grid))
    variants = config.variants or [Variant(name="")]
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"sweep {config.name!r}: variant names must be unique, got {names}")
    runs = []
    for variant in variants:
        for combo in itertools.product(*(list(enumerate(v)) for v in config.grid.values())):
            overrides = {**config.fixed, **variant.overrides}
            parts = [variant.name] if variant.name else []
            for key, (index, value) in zip(config.grid, combo, strict=True):
                overrides[key] = value
                parts.append(f"{labels[key]}={_format_value(value, index)}")
            name = _NAME_SAFE.sub("_", ",".join(parts)) or "default"
            runs.append((name, overrides))
    seen = [name for name, _ in runs]
    if len(set(seen)) != len(seen):
        raise ValueError(f"sweep {config.name!r}: two runs got the same name; give the variants distinct names")
    return runs


def _short_labels(keys: list[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that is unique among the grid's keys (``model.init_args.lr`` -> ``lr``)."""
    labels = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            label = ".".join(parts[-n:])
            if sum(1 for other in keys if other == label or other.endswith("." + label)) == 1:
                break
        labels[key] = label
    return labels


def _format_value(value: Any, index: int) -> str:
    """Scalars by value (``5e-05``, ``true``); lists/mappings by their position in the grid (``choice1``)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, int | str):
        text = str(value)
        return text if len(text) <= 40 else f"choice{index}"
    return f"choice{index}"


def nested(overrides: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys -> nested mappings, as a config file writes them (``a.b: 1`` -> ``{a: {b: 1}}``)."""
    tree: dict[str, Any] = {}
    for key, value in overrides.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {key!r} conflicts with the value already given for {part!r}")
            node = child
        if leaf in node and isinstance(node[leaf], dict) and isinstance(value, dict):
            node[leaf] = {**node[leaf], **value}
        else:
            node[leaf] = value
    return tree


# ----------------------------------------------------------------------------------------------- writing
def sweep_dir(config: SweepConfig) -> Path:
    return RunDirectory.of(config.name, config.run_root).path / "sweep"


def _device_overrides(slurm: SlurmSettings) -> dict[str, Any]:
    """``trainer.devices``/``num_nodes`` equal to the tasks Slurm starts: one process per device."""
    if slurm.nodes < 1:
        raise ValueError(f"slurm.nodes must be >= 1, got {slurm.nodes}")
    if slurm.gpus_per_node < 0:
        raise ValueError(f"slurm.gpus_per_node must be >= 0, got {slurm.gpus_per_node}")
    if slurm.gpus_per_node and slurm.tasks_per_node not in (None, slurm.gpus_per_node):
        raise ValueError(
            f"slurm.tasks_per_node={slurm.tasks_per_node} but gpus_per_node={slurm.gpus_per_node}: Lightning runs "
            "one task per GPU, leave tasks_per_node unset"
        )
    overrides: dict[str, Any] = {"trainer.num_nodes": slurm.nodes, "trainer.devices": tasks_per_node(slurm)}
    if slurm.gpus_per_node == 0:
        overrides["trainer.accelerator"] = "cpu"
    return overrides


def tasks_per_node(slurm: SlurmSettings) -> int:
    return slurm.gpus_per_node or slurm.tasks_per_node or 1


def write_sweep(config: SweepConfig) -> list[Run]:
    """Write base copies, one config per run, ``runs.txt``, the array script and the manifest; return the runs.

    With ``config.check`` every unfinished run's config is parsed by the training CLI before ``runs.txt`` and the
    script are written, so a bad grid never leaves a submittable array behind.
    """
    import yaml

    out = sweep_dir(config)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    base_dir = out / "base"
    base_dir.mkdir(exist_ok=True)
    bases = []
    for i, source in enumerate(config.configs):
        source_path = Path(source)
        if not source_path.is_file():
            raise FileNotFoundError(f"sweep {config.name!r}: config {source} not found (paths are relative to "
                                    f"the current directory, {Path.cwd()})")
        target = base_dir / f"{i:02d}_{source_path.name}"
        atomic_write_bytes(target, source_path.read_bytes())
        bases.append(target)
    device = _device_overrides(config.slurm)
    runs = []
    for name, overrides in expand(config):
        clash = sorted(set(device) & set(overrides))
        if clash:
            raise ValueError(f"sweep {config.name!r}, run {name!r}: {clash} are set from the slurm section "
                             "(nodes, gpus_per_node, tasks_per_node); remove them from grid/variants/fixed")
        content = {"name": f"{config.name}/{name}", "run_root": config.run_root, **nested({**overrides, **device})}
        path = out / "configs" / f"{name}.yaml"
        atomic_write_text(path, f"# sweep {config.name}, run {name}: stacked after {out / 'base'}/*\n"
                           + yaml.safe_dump(content, sort_keys=False))
        run_dir = RunDirectory.of(f"{config.name}/{name}", config.run_root).path
        runs.append(Run(name, overrides, path, run_dir, finished(run_dir) is not None))
    current = {r.config_path.name for r in runs}
    for stale in (out / "configs").glob("*.yaml"):  # runs of an earlier version of the grid
        if stale.name not in current:
            stale.unlink()
    pending = [r for r in runs if not r.finished]
    if config.check and pending:
        check_runs(pending, bases)
    atomic_write_text(out / "runs.txt", "".join(f"{r.config_path}\n" for r in pending))
    atomic_write_text(out / "sweep.sbatch", array_script(config, bases, [r.config_path.resolve() for r in pending]))
    atomic_write_json(out / "manifest.json", {
        "name": config.name,
        "configs": [str(b) for b in bases],
        "runs": [{"name": r.name, "config": str(r.config_path), "run_dir": str(r.run_dir), "finished": r.finished,
                  "overrides": r.overrides} for r in runs],
    }, indent=2, sort_keys=True)
    return runs


def array_script(config: SweepConfig, bases: list[Path], run_configs: list[Path]) -> str:
    """The ``sbatch`` array script: task ``i`` trains the run of ``run_configs[i]`` (the lines of ``runs.txt``)."""
    slurm = config.slurm
    out = sweep_dir(config).resolve()
    n_pending = len(run_configs)
    array = f"0-{max(n_pending, 1) - 1}" + (f"%{slurm.max_parallel}" if slurm.max_parallel else "")
    directives = [
        f"--job-name={slurm.job_name or 'sarclip-' + config.name}",
        f"--array={array}",
        f"--nodes={slurm.nodes}",
        f"--ntasks-per-node={tasks_per_node(slurm)}",
    ]
    if slurm.gpus_per_node:
        directives.append(f"--gpus-per-node={slurm.gpus_per_node}")
    for option, value in (("cpus-per-task", slurm.cpus_per_task), ("mem", slurm.mem), ("time", slurm.time),
                          ("partition", slurm.partition), ("account", slurm.account), ("qos", slurm.qos)):
        if value is not None:
            directives.append(f"--{option}={value}")
    directives += [
        f"--signal=SIGUSR1@{slurm.signal_seconds}",
        "--requeue",
        "--open-mode=append",
        f"--output={out / 'logs' / '%A_%a.out'}",
        *slurm.extra,
    ]
    python = slurm.python or sys.executable
    config_args = " ".join(f"--config {shlex.quote(str(b.resolve()))}" for b in bases)
    lines = [
        "#!/bin/bash",
        f"# Sweep {config.name}: {n_pending} run(s) to do. Written by `python -m lightning_sarclip sweep`; re-run",
        "# that command instead of editing this file (finished runs drop out of the array).",
        *(f"#SBATCH {d}" for d in directives),
        "set -euo pipefail",
        f"cd {shlex.quote(str(Path.cwd().resolve()))}",
        *slurm.setup,
        # The run list is part of the script (sbatch keeps a copy at submission), so rewriting runs.txt later (a dry
        # run, a new submission) cannot shift what the tasks of an array already queued will train.
        "RUNS=(",
        *(f"    {shlex.quote(str(path))}" for path in run_configs),
        ")",
        'RUN_CONFIG=${RUNS[$SLURM_ARRAY_TASK_ID]}',
        'echo "[$(date -Is)] task $SLURM_ARRAY_TASK_ID (restart ${SLURM_RESTART_COUNT:-0}): $RUN_CONFIG"',
        f"srun {shlex.quote(python)} -m lightning_sarclip fit {config_args} --config \"$RUN_CONFIG\" --ckpt_path last",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- checks and submit
def check_runs(runs: list[Run], bases: list[Path]) -> None:
    """Parse every run's stacked config with the training CLI (no model is built); raise naming the bad run."""
    from lightning_sarclip.commands.fit import SARCLIPCLI

    class _ParseOnly(SARCLIPCLI):
        def instantiate_classes(self) -> None:  # parsing and validation only
            pass

        def _set_seed(self) -> None:
            pass

    for run in runs:
        args = [a for b in bases for a in ("--config", str(b))] + ["--config", str(run.config_path)]
        try:
            with warnings.catch_warnings():  # "args and sys.argv both given": we are inside another command
                warnings.filterwarnings("ignore", message=".*args parameter is intended")
                _ParseOnly(args=args, run=False)
        except SystemExit as error:
            raise ValueError(f"sweep run {run.name!r}: {run.config_path} does not parse with the training CLI "
                             "(the error is printed above)") from error


def active_submissions(out: Path) -> list[str]:
    """Job ids of this sweep's earlier submissions that Slurm still has queued or running."""
    record = out / "submissions.jsonl"
    if not record.exists() or shutil.which("squeue") is None:
        return []
    ids = [json.loads(line)["job_id"] for line in record.read_text().splitlines() if line.strip()]
    if not ids:
        return []
    result = subprocess.run(["squeue", "-h", "-o", "%F", "-j", ",".join(ids)], capture_output=True, text=True)
    # squeue fails for ids it has forgotten (long finished); only what it lists is still active.
    listed = set(result.stdout.split()) if result.returncode == 0 else set()
    if result.returncode != 0:
        for job_id in ids:  # ask one by one, so one forgotten id does not hide an active one
            one = subprocess.run(["squeue", "-h", "-o", "%F", "-j", job_id], capture_output=True, text=True)
            listed.update(one.stdout.split() if one.returncode == 0 else [])
    return [job_id for job_id in ids if job_id in listed]


def submit(script: Path) -> str:
    """``sbatch --parsable script`` -> job id."""
    if shutil.which("sbatch") is None:
        raise RuntimeError("sbatch not found: run `sweep --submit` on a Slurm login node (or submit "
                           f"{script} yourself)")
    result = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"sbatch {script} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip().split(";")[0]


def main(argv: list[str] | None = None) -> None:
    from lightning_sarclip.commands.config import parse_dataclass_config

    # ``--submit`` / ``--no-check`` read as flags (jsonargparse wants ``--submit true``).
    flags = {"--submit": ["--submit", "true"], "--no-check": ["--check", "false"], "--force": ["--force", "true"]}
    args = [a for arg in (argv or []) for a in flags.get(arg, [arg])]
    config = parse_dataclass_config(SweepConfig, args, prog="lightning_sarclip sweep")
    try:
        runs = write_sweep(config)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    out = sweep_dir(config)
    pending = [r for r in runs if not r.finished]
    print(f"sweep {config.name}: {len(runs)} run(s), {len(runs) - len(pending)} finished, {len(pending)} to do")
    for run in runs:
        print(f"  {'done ' if run.finished else 'to do'}  {run.name}")
    script = out / "sweep.sbatch"
    if not pending:
        print("nothing to submit")
        return
    if not config.submit:
        print(f"dry run: wrote {out}; submit with\n  sbatch {script}\nor repeat this command with --submit")
        return
    active = active_submissions(out)
    if active and not config.force:
        print(f"error: array job(s) {', '.join(active)} of this sweep are still queued or running; their unfinished "
              "runs would be trained twice into the same folders. Wait for them, `scancel` them, or pass --force.",
              file=sys.stderr)
        raise SystemExit(2)
    job_id = submit(script)
    atomic_append(out / "submissions.jsonl",
                  (json.dumps({"job_id": job_id, "runs": [r.name for r in pending]}) + "\n").encode())
    print(f"submitted array job {job_id} ({len(pending)} task(s)); logs in {out / 'logs'}")


if __name__ == "__main__":
    main(sys.argv[1:])

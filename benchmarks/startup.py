"""Start-up time of the command line: how long a user waits before a command does anything.

Every command is run ``--repeats`` times in a fresh Python process (``python -m lightning_sarclip <command>
--help``, which imports what the command needs to describe itself and stops), and the median wall time is
compared with its target. Baselines measured in the same run put the figures in proportion: a bare
``python -c pass`` (the interpreter alone), ``import torch`` and ``import lightning`` (what a command that needs
them cannot avoid).

    python benchmarks/startup.py                  # 5 repeats of every command
    python benchmarks/startup.py --repeats 3 --commands report export

Targets (issue #14, on the 2-core development CPU): ``report --help`` and ``export --help`` under 1.5 s (they
must not import torch), ``fit --help`` under 5 s. The last line is one JSON object with every median.

The help of ``fit``/``validate``/``test``/``predict`` is rendered from Lightning's signatures, which cost the
import of Lightning; it is kept on disk once rendered (``lightning_sarclip.commands.help_cache``; ``make install``
renders ``fit --help``). The benchmark uses a cache folder of its own, fills it once before the rounds (as
``make install`` does), and also times ``fit (rendered)``: the same command with the cache off, which is what the
first ``--help`` of a new command line costs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

#: command -> target seconds (``None``: measured, no target)
TARGETS: dict[str, float | None] = {
    "usage": 1.5, "version": 1.5, "report": 1.5, "export": 1.5, "evaluate": None, "embed": None,
    "build-corpus": None, "sweep": None, "curriculum": None, "fit": 5.0, "fit (rendered)": None, "predict": None,
}
BASELINES = {"python": "pass", "import torch": "import torch", "import lightning": "import lightning.pytorch"}


def _time(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
    return elapsed


def _command_argv(command: str) -> list[str]:
    """``usage``: ``python -m lightning_sarclip --help``; ``version``: ``... --version``; else ``<command> --help``."""
    if command in ("usage", "version"):
        return [sys.executable, "-m", "lightning_sarclip", "--help" if command == "usage" else "--version"]
    return [sys.executable, "-m", "lightning_sarclip", command.split(" ")[0], "--help"]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--commands", nargs="*", default=list(TARGETS), help=f"subset of {list(TARGETS)}")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.commands) - set(TARGETS))
    if unknown:
        parser.error(f"unknown commands {unknown}; known: {list(TARGETS)}")
    runs: dict[str, list[float]] = {}
    cache = tempfile.mkdtemp(prefix="sarclip-startup-")  # a help cache of this run's own, filled below
    env = {**os.environ, "SARCLIP_CACHE_DIR": cache}
    env.pop("SARCLIP_HELP_CACHE", None)
    uncached = {**env, "SARCLIP_HELP_CACHE": "0"}
    jobs = [(f"baseline: {name}", [sys.executable, "-c", code], env) for name, code in BASELINES.items()]
    jobs += [(command, _command_argv(command), uncached if command == "fit (rendered)" else env)
             for command in args.commands]
    try:
        for _name, command_argv, job_env in jobs:  # as `make install` does: render the LightningCLI helps once
            if job_env is env and command_argv[3:4] in (["fit"], ["validate"], ["test"], ["predict"]):
                _time(command_argv, env)
        for _ in range(args.repeats):  # rounds alternate between commands: a slow moment of the machine hits all
            for name, command_argv, job_env in jobs:
                runs.setdefault(name, []).append(_time(command_argv, job_env))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    medians = {name: statistics.median(times) for name, times in runs.items()}
    python = medians["baseline: python"]
    print(f"{'command':28s} {'median s':>9s} {'min s':>7s} {'x python':>9s} {'target s':>9s}  verdict")
    failed = []
    for name, median in medians.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else ("ok" if median <= target else "SLOW")
        if verdict == "SLOW":
            failed.append(name)
        shown = "-" if target is None else f"{target:.1f}"
        print(f"{name:28s} {median:9.2f} {min(runs[name]):7.2f} {median / python:9.1f} {shown:>9s}  {verdict}")
    print(json.dumps({"medians_s": {k: round(v, 3) for k, v in medians.items()}, "over_target": failed}))
    return medians


if __name__ == "__main__":
    main()

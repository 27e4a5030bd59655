"""The README's set-up commands as make runs them (``make -n``: the recipe, without installing anything)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _make_n(*args: str) -> str:
    """``make -n`` as a user's shell runs it: not as a sub-make of ``make test`` (no directory lines, no flags)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    return subprocess.run(["make", "--no-print-directory", "-n", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True, env=env).stdout


def _recipe(*args: str) -> str:
    return _make_n(*args, "VENV=/nonexistent-sarclip-venv")  # never built: make prints the whole install recipe


def test_cpu_install_takes_torch_from_the_cpu_index_and_refuses_a_cuda_build():
    lines = _recipe("quickstart", "CPU=1").splitlines()
    torch_line = next(i for i, line in enumerate(lines) if "--index-url https://download.pytorch.org/whl/cpu" in line)
    project_line = next(i for i, line in enumerate(lines) if "pip install -e '.[dev]'" in line)
    assert torch_line < project_line  # the project's install then keeps the CPU build
    assert any("torch.version.cuda is None" in line for line in lines[project_line:])
    assert lines[-1].endswith("fit --config experiments/quickstart.yaml --ckpt_path last")


def test_default_install_has_no_cpu_index_and_renders_fit_help():
    recipe = _recipe("quickstart")
    assert "whl/cpu" not in recipe
    assert re.search(r"lightning_sarclip fit --help > /dev/null", recipe)


def test_cpu_venv_is_separate_and_ignored():
    assert "python3 -m venv .venv-cpu" in _make_n("install", "CPU=1")
    assert ".venv-cpu/" in (ROOT / ".gitignore").read_text().split()


def test_cpu_torch_ranges_are_pyproject_ranges():
    """The CPU step pins what pyproject allows, so the project's install never replaces the CPU build."""
    pyproject = (ROOT / "pyproject.toml").read_text()  # tomllib is 3.11+; the package supports 3.10
    wanted = dict(re.findall(r'^\s*"(torch|torchvision)([<>=!~][^"]*)",', pyproject, flags=re.M))
    assert set(wanted) == {"torch", "torchvision"}
    recipe = _recipe("install", "CPU=1")
    for name, spec in wanted.items():
        assert f"'{name}{spec}'" in recipe, f"Makefile's CPU step does not pin {name}{spec} as pyproject does"

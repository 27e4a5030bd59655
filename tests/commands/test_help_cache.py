"""The stored ``--help`` of the LightningCLI commands: printed without torch, never stale, never partial."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_sarclip.commands import help_cache

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SARCLIP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SARCLIP_HELP_CACHE", raising=False)
    return tmp_path / "cache" / "help"


def test_asks_for_help():
    assert help_cache.asks_for_help(["fit", "--help"])
    assert help_cache.asks_for_help(["fit", "--config", "x.yaml", "-h"])
    assert not help_cache.asks_for_help(["fit", "--config", "x.yaml"])
    assert not help_cache.asks_for_help(["fit", "--", "--help"])
    assert not help_cache.asks_for_help(["--help"])  # the usage text, not a command's help


def test_key_follows_every_input(tmp_path, monkeypatch, cache):
    config = tmp_path / "run.yaml"
    config.write_text("trainer:\n  max_epochs: 3\n")
    args = ["fit", "--config", str(config), "--help"]
    key = help_cache.cache_key(args)
    assert help_cache.cache_key(list(args)) == key  # stable
    assert help_cache.cache_key(["fit", f"--config={config}", "--help"]) != key
    config.write_text("trainer:\n  max_epochs: 4\n")  # a config's defaults show in the help
    assert help_cache.cache_key(args) != key
    changed = help_cache.cache_key(args)
    monkeypatch.setenv("PL_FIT__TRAINER__MAX_EPOCHS", "9")
    assert help_cache.cache_key(args) != changed
    monkeypatch.delenv("PL_FIT__TRAINER__MAX_EPOCHS")
    monkeypatch.setenv("COLUMNS", "203")  # argparse wraps to the terminal
    assert help_cache.cache_key(args) != changed
    assert help_cache.cache_key(["validate", *args[1:]]) != help_cache.cache_key(args)


def test_package_sources_are_in_the_key(monkeypatch, cache):
    files = list(help_cache._package_files())
    assert any(name.endswith("commands/fit.py") for name, _, _ in files)
    before = help_cache.cache_key(["fit", "--help"])
    edited = [(name, size + (name.endswith("fit.py")), mtime) for name, size, mtime in files]
    monkeypatch.setattr(help_cache, "_package_files", lambda: iter(edited))
    assert help_cache.cache_key(["fit", "--help"]) != before


def _printer(text: str, code: int | None = 0, error: Exception | None = None):
    def render() -> None:
        print(text)
        if error is not None:
            raise error
        raise SystemExit(code)

    return render


def test_only_a_complete_help_is_stored(cache, capsys):
    args = ["fit", "--help"]
    with pytest.raises(SystemExit):
        help_cache.render_and_store(args, _printer("usage: half", code=2))
    with pytest.raises(RuntimeError):
        help_cache.render_and_store(args, _printer("usage: broken", error=RuntimeError("boom")))
    assert help_cache.cached(args) is None and not list(cache.glob("*"))
    with pytest.raises(SystemExit):
        help_cache.render_and_store(args, _printer("usage: fit [-h]"))
    assert capsys.readouterr().out.endswith("usage: fit [-h]\n")  # printed while stored
    assert help_cache.cached(args) == "usage: fit [-h]\n"
    assert [p.suffix for p in cache.iterdir()] == [".txt"]  # no temporary file left beside it


def test_cache_off_and_unwritable(cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SARCLIP_HELP_CACHE", "0")
    with pytest.raises(SystemExit):
        help_cache.render_and_store(["fit", "--help"], _printer("usage: fit"))
    assert help_cache.cached(["fit", "--help"]) is None and not cache.exists()
    monkeypatch.delenv("SARCLIP_HELP_CACHE")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder should be")
    monkeypatch.setenv("SARCLIP_CACHE_DIR", str(blocked))
    with pytest.raises(SystemExit):  # the help is printed; the failed store is not the user's problem
        help_cache.render_and_store(["fit", "--help"], _printer("usage: fit"))
    assert "usage: fit" in capsys.readouterr().out


def test_fit_help_is_rendered_once_then_printed_without_torch(tmp_path):
    """The real command: the second ``fit --help`` prints the same text in a process where torch cannot import."""
    env = {**os.environ, "SARCLIP_CACHE_DIR": str(tmp_path), "COLUMNS": "100"}
    env.pop("SARCLIP_HELP_CACHE", None)
    first = subprocess.run([sys.executable, "-m", "lightning_sarclip", "fit", "--help"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "--trainer.max_epochs" in first.stdout and "--model" in first.stdout
    no_torch = ("import sys; sys.modules['torch'] = None; sys.modules['lightning'] = None; "
                "sys.argv = ['lightning_sarclip', 'fit', '--help']; "
                "from lightning_sarclip.commands import main; main()")
    second = subprocess.run([sys.executable, "-c", no_torch], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout

"""The ``--help`` text of the LightningCLI commands (``fit``, ``validate``, ``test``, ``predict``), kept on disk.

Why: LightningCLI builds its parser from the signatures of ``Trainer``, the model and the datamodules, so it
cannot print a line of help before Lightning is imported, and importing Lightning imports torchmetrics,
torchvision and ``torch._dynamo`` (about 9 s on a 2-core CPU, over 80% of ``fit --help``; see
``benchmarks/startup.py``). Lazy imports cannot remove that. The rendered text, though, only changes when
something it is rendered from changes, so the first ``fit --help`` renders it the normal way and stores it, and
a later identical request prints the stored text without importing torch.

The key holds everything the text depends on:

* the command line (after ``--verbose``/``--debug`` are taken out), the terminal width (argparse wraps to it)
  and whether output goes to a terminal;
* the Python version and the versions of the packages whose signatures the help shows (lightning, torch,
  jsonargparse, open_clip, timm, torchmetrics, our own);
* the size and modification time of every file of this package (an edited docstring or default changes it);
* the contents of every file named on the command line (``--config experiments/x.yaml`` fills defaults);
* environment variables that jsonargparse or LightningCLI read (``JSONARGPARSE_*``, ``PL_*``) and ours
  (``SARCLIP_*``), and ``NO_COLOR``/``FORCE_COLOR``.

A mismatch in any of them is a miss: the help is rendered again (never a stale text). Only a complete help
(exit status 0) is stored, atomically. ``make install`` renders ``fit --help`` once so that even a user's first
``fit --help`` is fast. ``SARCLIP_HELP_CACHE=0`` turns the cache off; ``SARCLIP_CACHE_DIR`` moves it (default
``$XDG_CACHE_HOME/lightning_sarclip`` or ``~/.cache/lightning_sarclip``).

Standard library only: this module runs before anything heavy is imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

#: distributions whose versions change what ``--help`` shows
_DISTRIBUTIONS = ("lightning", "torch", "jsonargparse", "open_clip_torch", "timm", "torchmetrics",
                  "lightning-sarclip")
#: environment variables that can change the parser or its defaults
_ENV_PREFIXES = ("JSONARGPARSE", "PL_", "SARCLIP_", "LIGHTNING_", "NO_COLOR", "FORCE_COLOR")
_HELP_FLAGS = ("-h", "--help")
_FORMAT = "lightning_sarclip help cache 1"


def enabled() -> bool:
    return os.environ.get("SARCLIP_HELP_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    if os.environ.get("SARCLIP_CACHE_DIR"):
        return Path(os.environ["SARCLIP_CACHE_DIR"]) / "help"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lightning_sarclip" / "help"


def asks_for_help(args: list[str]) -> bool:
    """``args`` (command first) asks for a help text; ``--help`` after ``--`` does not count."""
    for arg in args[1:]:
        if arg == "--":
            return False
        if arg in _HELP_FLAGS:
            return True
    return False


def _package_files() -> Iterator[tuple[str, int, int]]:
    package = Path(__file__).resolve().parents[1]
    for folder, dirs, files in os.walk(package):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".py", ".json", ".yaml")):
                path = os.path.join(folder, name)
                info = os.stat(path)
                yield os.path.relpath(path, package), info.st_size, info.st_mtime_ns


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "-"


def cache_key(args: list[str]) -> str:
    """A digest of everything the help text of ``args`` is rendered from (see the module docstring)."""
    digest = hashlib.sha256(_FORMAT.encode())

    def add(*parts: object) -> None:
        for part in parts:
            digest.update(repr(part).encode())
            digest.update(b"\0")

    add(sys.version, sys.executable, shutil.get_terminal_size().columns, sys.stdout.isatty(), *args)
    add(*(f"{d}={_version(d)}" for d in _DISTRIBUTIONS))
    add(*_package_files())
    for name in sorted(os.environ):
        if name.startswith(_ENV_PREFIXES) and name != "SARCLIP_HELP_CACHE":
            add(name, os.environ[name])
    for arg in args:
        candidate = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        path = Path(candidate)
        if candidate and path.is_file():
            add(str(path.resolve()), path.read_bytes())
    return digest.hexdigest()


def cached(args: list[str]) -> str | None:
    """The stored help text of ``args``, or ``None`` (not stored, the cache is off, or it cannot be read)."""
    if not enabled():
        return None
    try:
        return (cache_dir() / f"{cache_key(args)}.txt").read_text(encoding="utf-8")
    except OSError:
        return None


class _Tee(io.TextIOBase):
    """Writes through to the real stream and keeps a copy."""

    def __init__(self, stream: io.TextIOBase) -> None:
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")


def render_and_store(args: list[str], render: Callable[[], None]) -> None:
    """Run ``render`` (which prints the help and exits), storing what it printed when it exits with status 0.

    A cache that cannot be written (read-only home, full disk) never fails the command: the help was printed.
    """
    if not enabled():
        render()
        return
    key = cache_key(args)  # before rendering: the key describes the inputs the text is rendered from
    tee = _Tee(sys.stdout)
    code: object = "not finished"  # an exception other than SystemExit stores nothing
    try:
        with contextlib.redirect_stdout(tee):
            render()
        code = 0
    except SystemExit as stop:
        code = stop.code
        raise
    finally:
        text = tee.copy.getvalue()
        if code in (0, None) and text.strip():
            with contextlib.suppress(OSError):
                from lightning_sarclip.utils.atomic import atomic_write_text

                atomic_write_text(cache_dir() / f"{key}.txt", text)

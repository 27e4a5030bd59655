"""What a command prints: quiet by default, everything with ``--verbose``, tracebacks only with ``--debug``.

Only the entry point (:func:`lightning_sarclip.commands.main`) calls this; the library itself never changes
logging or warning settings (importing ``lightning_sarclip`` from a notebook keeps the notebook's own).

* **Quiet** (default): our own progress (logger ``lightning_sarclip``) and every warning or error are shown; the
  notes third-party libraries print on every run that a user cannot act on are not (open_clip's INFO lines,
  Lightning's product tips, its ``srun`` hint, deprecation warnings from inside Lightning, "LightningCLI's args
  parameter ...", the logging-interval note on small runs). Logging is configured before Lightning is imported,
  so its messages print once, not twice.
* ``--verbose``: all of the above, with logger names and levels.
* ``--debug``: a failed check still ends with its message, followed by the traceback.

An error raised by this package's own checks (the innermost frame of the traceback is inside
``lightning_sarclip``) ends the command with ``error: <message>`` and exit status 2; the message names the file,
the field and the fix. Anything else (a bug, a crash inside a library) keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
import traceback
import warnings
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent

#: warnings (regular expressions on the message) that say nothing a user of our commands can act on
QUIET_WARNINGS = (
    r"The `srun` command is available on your system but is not used",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"LightningCLI's args parameter is intended to run from within Python",
    r"The number of training batches \(\d+\) is smaller than the logging interval",
)
#: log messages (prefixes) dropped in quiet mode
QUIET_LOG_PREFIXES = ("💡 Tip:",)


#: what our checks raise (CheckpointError is a RuntimeError, DatasetNotFoundError a FileNotFoundError ...); a
#: programming error (AttributeError, NameError ...) is never one of them and keeps its traceback
CHECK_ERRORS = (ValueError, OSError, LookupError, TypeError, RuntimeError, FloatingPointError)


class _QuietFilter(logging.Filter):
    """Drops the third-party notes above, and a message repeated right after itself (Lightning reports why
    ``Trainer.fit`` stopped twice)."""

    def __init__(self) -> None:
        super().__init__()
        self._last: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.getMessage())
        repeated, self._last = message == self._last, message
        return not (repeated or message.startswith(QUIET_LOG_PREFIXES))


def configure(verbose: bool = False) -> None:
    """Logging and warning filters for one command run (see the module docstring)."""
    handler = logging.StreamHandler(sys.stderr)
    if verbose:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(_QuietFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Root at WARNING keeps libraries' INFO chatter out (open_clip logs through the root logger); our logger and
    # Lightning's stay at INFO, so progress and Lightning's run summary still show.
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    for name in ("lightning_sarclip", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.INFO)
    if not verbose:
        for pattern in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)


def adopt_library_loggers() -> None:
    """After a command module imported Lightning: its loggers print through our handler only (Lightning attaches
    handlers of its own at import, which would print every message twice and bypass the quiet filter)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True


def raised_by_our_check(error: BaseException) -> bool:
    """Whether ``error`` was raised by code of this package (not by a library it called into)."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return False
    innermost = Path(frames[-1].filename).resolve()
    return innermost.is_relative_to(PACKAGE_DIR)


def report_error(error: BaseException, debug: bool) -> None:
    """Print ``error`` as one message (and its traceback with ``debug``), then exit with status 2."""
    if debug:
        traceback.print_exception(error)
    message = " ".join(str(error).split()) or type(error).__name__
    hint = "" if debug else " (run with --debug for the traceback)"
    print(f"error: {message}{hint}", file=sys.stderr)
    raise SystemExit(2)

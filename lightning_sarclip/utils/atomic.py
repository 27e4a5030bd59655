"""Atomic file writes: the one place in the package where a written file is renamed into place.

Every file that a later run (or a reader running at the same time) reads is written through this module:
checkpoints, run markers and manifests, corpus shards and state, results, figures, predictions, exports. No
other module calls ``os.replace``/``os.rename``/``Path.replace`` on a file it wrote.

Why each step is there:

* **Old or new, never half.** A ``kill -9``, an OOM kill, a preemption or a node failure can stop a writer at
  any byte. Writing the destination in place would leave a truncated file for the next run to trip over (a
  resume from half a checkpoint, a JSON error in a state file). Here the bytes go to a temporary file, and only
  a complete file is renamed over the destination with ``os.replace``, which POSIX makes atomic: readers and
  later runs see either the previous complete file or the new complete file.
* **Temporary file in the destination folder.** A rename is atomic only within one filesystem; from the system
  temp folder (often another filesystem) the "move" becomes a copy that can itself be cut short. The name,
  ``.<name>.<random>.tmp``, is hidden, unique per writer and ends in ``.tmp``, so ``*.ckpt``, ``last*.ckpt`` or
  ``*.json`` globs never pick a temporary file up.
* **Durability.** The file is ``fsync``-ed before the rename: without it a crash of the machine can persist the
  rename but not the data, leaving an empty or zero-filled file under the final name. The folder is
  ``fsync``-ed after the rename (the rename is a change of the folder), and so are the parents of folders that
  the write creates.
* **Permissions.** The temporary file is created with ``os.open(..., 0o666)``, so the kernel applies the umask
  (and default ACLs) exactly as for a plain ``open(path, "w")``. ``tempfile.mkstemp`` would give ``0600`` and
  make, e.g., a checkpoint unreadable by the group that evaluates it; if the caller's writer replaces the file
  (some libraries do), the mode is set back before the rename. The umask is never changed, not even briefly
  (``os.umask`` is process-wide and not thread-safe).
* **Failures.** On any exception, ``KeyboardInterrupt`` and ``SystemExit`` included, the temporary file is
  removed, the destination is left untouched and the exception propagates.
* **Leftovers.** A writer killed before its rename cannot clean up. The next write of the same destination
  removes that destination's temporary files untouched for more than :data:`STALE_AFTER_S` seconds; younger
  ones may belong to another process writing the same file right now, and are kept.

Fault injection needs no hook in this module: the tests run a writer in a subprocess, monkeypatch
``torch.save`` / ``os.replace`` there so that it stops inside a write, and ``SIGKILL`` it
(``tests/library/utils/test_atomic.py``).

Standard library only (``torch`` is imported inside :func:`atomic_torch_save`, ``fcntl`` inside
:func:`atomic_append`); local paths only (no fsspec URLs). POSIX semantics: on Windows the folder ``fsync`` is
skipped and :func:`atomic_append` is unavailable.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "STALE_AFTER_S",
    "TMP_SUFFIX",
    "atomic_append",
    "atomic_open",
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_dir",
    "leftovers",
    "move_into_place",
    "remove_stale_temps",
    "staged_folder",
]

PathLike = str | os.PathLike

#: A temporary file (or staging folder) untouched for this long belongs to a writer that was killed.
STALE_AFTER_S: float = 600.0
TMP_SUFFIX = ".tmp"
_STAGING_PREFIX = ".staging."
_TOKEN = re.compile(r"[A-Za-z0-9_]+")  # also matches tempfile.mkstemp's names, i.e. leftovers of older code
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)  # Windows
# fsync errors that mean "not supported here" rather than "the data did not reach the disk".
_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.EBADF, getattr(errno, "ENOTSUP", errno.EINVAL),
                      getattr(errno, "EOPNOTSUPP", errno.EINVAL)}


# ------------------------------------------------------------------------------------------------ primitives
def fsync_dir(folder: PathLike) -> None:
    """Make renames and new entries in ``folder`` durable (skipped where folders cannot be opened or synced)."""
    try:
        fd = os.open(folder, os.O_RDONLY | _CLOEXEC | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows cannot open folders; a folder we may not read cannot be synced by us either
        return
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in _FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    # fsync flushes the inode, whichever descriptor it is called on: the caller may have written through its own.
    fd = os.open(path, os.O_RDONLY | _CLOEXEC | _BINARY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(folder: Path) -> None:
    """``mkdir -p`` whose new folders survive a crash (each new entry's parent is synced)."""
    missing = []
    probe = folder
    while not probe.is_dir() and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    if not missing:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        fsync_dir(created.parent)


def _is_temp_of(name: str, destination: str) -> bool:
    prefix = f".{destination}."
    if not (name.startswith(prefix) and name.endswith(TMP_SUFFIX)):
        return False
    token = name[len(prefix):-len(TMP_SUFFIX)]
    return _TOKEN.fullmatch(token) is not None  # ".a.json.bak.x1.tmp" belongs to "a.json.bak", not to "a.json"


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, empty ``.<name>.<random>.tmp`` next to ``path``, created with the mode a plain ``open`` gives."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC | _BINARY, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no unused temporary name next to {path}")


def _replace(src: Path, dst: Path) -> None:
    # The package's only rename of a written file (``grep -rn "os.replace\\|rename" lightning_sarclip``).
    os.replace(src, dst)


def move_into_place(src: PathLike, dst: PathLike) -> Path:
    """Rename the complete file ``src`` over ``dst`` durably: ``fsync(src)``, ``os.replace``, ``fsync`` folder(s).

    ``src`` must be on ``dst``'s filesystem (best: in its folder). For files written here, prefer
    :func:`atomic_path` and its conveniences; this is for files that must be produced elsewhere first.
    """
    src, dst = Path(src), Path(dst)
    _fsync_file(src)
    _replace(src, dst)
    fsync_dir(dst.parent)
    if src.parent.resolve() != dst.parent.resolve():
        fsync_dir(src.parent)
    return dst


# ------------------------------------------------------------------------------------------------ leftovers
def leftovers(path: PathLike) -> list[Path]:
    """Temporary files of writes to ``path`` that are in progress or were killed (sorted)."""
    path = Path(path)
    try:
        entries = list(os.scandir(path.parent))
    except FileNotFoundError:
        return []
    return sorted(path.parent / e.name for e in entries
                  if _is_temp_of(e.name, path.name) and e.is_file(follow_symlinks=False))


def remove_stale_temps(path: PathLike, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the temporary files of ``path`` untouched for more than ``older_than_s`` seconds; returns them.

    Called by every write; younger temporary files may belong to a concurrent writer and are kept.
    """
    removed = []
    now = time.time()
    for tmp in leftovers(path):
        with contextlib.suppress(FileNotFoundError):  # another writer cleaned it up first
            if now - tmp.stat().st_mtime > older_than_s:
                tmp.unlink()
                removed.append(tmp)
    return removed


# ------------------------------------------------------------------------------------------------ writes
@contextlib.contextmanager
def atomic_path(path: PathLike, *, stale_after_s: float = STALE_AFTER_S) -> Iterator[Path]:
    """Yield a new, empty temporary file next to ``path``; write it by path, and on leaving ``with`` it becomes
    ``path`` (fsync, mode, ``os.replace``, folder fsync). On an exception it is removed and ``path`` untouched.

    The folder of ``path`` is created if needed. Use it for writers that want a file name (``pq.write_table``,
    ``tarfile.open``, ``pa.OSFile``); :func:`atomic_open` for writers that take a file object.
    """
    dest = Path(path)
    _make_dirs(dest.parent)
    remove_stale_temps(dest, stale_after_s)  # before writing, so a killed writer's space is back first
    fd, tmp = _create_temp(dest)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)  # 0o666 & ~umask, applied by the kernel
    finally:
        os.close(fd)
    try:
        yield tmp
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:  # the caller's writer replaced the file (e.g. 0600)
            os.chmod(tmp, mode)
        move_into_place(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", *, encoding: str | None = None, newline: str | None = None,
                stale_after_s: float = STALE_AFTER_S) -> Iterator[IO[Any]]:
    """``open(path, mode)`` for writing, atomically: the file object writes a temporary file that replaces
    ``path`` when the ``with`` block ends normally (see :func:`atomic_path`). Text modes default to UTF-8.

    E.g. ``with atomic_open(p, "w", newline="") as f: csv.writer(f)...`` or ``image.save(f, format="PNG")``.
    """
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open: mode must start with 'w' (a new file replaces the old one), got {mode!r}")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(path, stale_after_s=stale_after_s) as tmp, open(tmp, mode, encoding=encoding,
                                                                     newline=newline) as handle:
        yield handle


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically; returns ``path``."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Replace ``path`` with ``text`` atomically (no newline translation); returns ``path``."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = False,
                      ensure_ascii: bool = False, default: Callable[[Any], Any] | None = None) -> Path:
    """Replace ``path`` with ``obj`` as JSON (UTF-8, ending in a newline) atomically; returns ``path``.

    ``obj`` is serialised before anything is written, so an unserialisable value leaves no trace.
    """
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii, default=default)
    return atomic_write_text(path, text + "\n")


def atomic_torch_save(obj: Any, path: PathLike, **save_kwargs: Any) -> Path:
    """``torch.save(obj, path)`` so that ``path`` is always the old or the new complete file; returns ``path``."""
    import torch

    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle, **save_kwargs)
    return Path(path)


def atomic_append(path: PathLike, data: bytes) -> Path:
    """Append ``data`` to ``path`` as one atomic replace; returns ``path``.

    An in-place append that is killed leaves a torn last line; here the old content plus ``data`` is written
    to a temporary file that replaces ``path``, so readers (which need no lock) see all of ``data`` or none.
    Concurrent appenders (processes, or nodes where the filesystem supports ``flock``) serialise on the lock
    file ``.<name>.lock`` next to ``path``: a lock on ``path`` itself would be lost with the replaced inode.
    Rewrites the whole file: meant for small logs such as ``results.jsonl``.
    """
    import fcntl

    dest = Path(path)
    _make_dirs(dest.parent)
    lock_fd = os.open(dest.parent / f".{dest.name}.lock", os.O_RDWR | os.O_CREAT | _CLOEXEC, 0o666)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            old = dest.read_bytes()
        except FileNotFoundError:
            old = b""
        atomic_write_bytes(dest, old + data)
    finally:
        os.close(lock_fd)  # releases the lock
    return dest


# ------------------------------------------------------------------------------------------------ folders
def _newest_mtime(folder: Path) -> float:
    newest = folder.stat().st_mtime
    with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return newest


def _remove_stale_staging(folder: Path, older_than_s: float) -> None:
    now = time.time()
    candidates: list[Path] = []
    with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
        candidates = [folder / e.name for e in entries if e.name.startswith(_STAGING_PREFIX)
                      and e.name.endswith(TMP_SUFFIX) and e.is_dir(follow_symlinks=False)]
    for staging in candidates:
        with contextlib.suppress(FileNotFoundError):
            if now - _newest_mtime(staging) > older_than_s:
                shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(folder: PathLike, names: Sequence[str] | None = None, *,
                  stale_after_s: float = STALE_AFTER_S) -> Iterator[Path]:
    """Yield an empty staging folder inside ``folder``; write (and check) a set of files there. When the
    ``with`` block ends normally, each file is moved into ``folder`` by its own atomic rename.

    ``names`` fixes the files expected and the order of the moves (all are checked to exist before the first
    move); ``None`` moves every file in the staging folder, sorted by name. Each file becomes complete at once,
    but the set is not replaced as one: a reader can meet new and old files side by side during the moves. Files
    get the mode a plain ``open`` gives (libraries that create their file private are corrected). On an exception
    nothing in ``folder`` changes. The staging folder (``.staging.<random>.tmp``) is always removed; stale ones
    of killed writers are removed by the next call.
    """
    dest = Path(folder)
    _make_dirs(dest)
    _remove_stale_staging(dest, stale_after_s)
    for _ in range(100):
        staging = dest / f"{_STAGING_PREFIX}{secrets.token_hex(6)}{TMP_SUFFIX}"
        try:
            staging.mkdir()
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(errno.EEXIST, f"no unused staging name in {dest}")
    try:
        fd, probe = _create_temp(staging / "mode")
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)  # what a plain open() creates here
        finally:
            os.close(fd)
            probe.unlink()
        yield staging
        if names is None:
            names = sorted(p.name for p in staging.iterdir())
        names = list(names)
        for name in names:
            if Path(name).name != name:
                raise ValueError(f"staged_folder: names are plain file names, got {name!r}")
            entry = staging / name
            if not entry.is_file() or entry.is_symlink():
                raise FileNotFoundError(errno.ENOENT, f"staged_folder: {name!r} was not written as a file", str(entry))
        for name in names:
            entry = staging / name
            if stat.S_IMODE(entry.stat().st_mode) != mode:
                os.chmod(entry, mode)
            _fsync_file(entry)
        for name in names:
            _replace(staging / name, dest / name)
        fsync_dir(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

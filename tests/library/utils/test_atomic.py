"""lightning_sarclip.utils.atomic: old-or-new files under exceptions and SIGKILL, permissions, leftovers."""

from __future__ import annotations

import json
import os
import queue
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from lightning_sarclip.utils import atomic
from lightning_sarclip.utils.atomic import (
    atomic_append,
    atomic_open,
    atomic_path,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    leftovers,
    move_into_place,
    remove_stale_temps,
    staged_folder,
)
from tests.conftest import REPO_ROOT

HOUR_AGO = time.time() - 3600


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request) -> int:
    """Run under a given umask (restored afterwards); the expected mode is what a plain ``open`` gives."""
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _plain_open_mode(folder: Path) -> int:
    probe = folder / "probe-plain-open"
    probe.write_bytes(b"")
    try:
        return _mode(probe)
    finally:
        probe.unlink()


# ---------------------------------------------------------------------------------------------- success path
def test_writes_create_the_folder_and_leave_only_the_destination(tmp_path, umask):
    folder = tmp_path / "a" / "b"
    written = {
        "x.json": lambda p: atomic_write_json(p, {"b": 1, "a": [1, 2], "é": "ü"}, sort_keys=True),
        "x.txt": lambda p: atomic_write_text(p, "line\r\n"),
        "x.bin": lambda p: atomic_write_bytes(p, b"\x00\xff"),
        "x.ckpt": lambda p: atomic_torch_save({"w": torch.arange(3)}, p),
    }
    for name, write in written.items():
        assert write(folder / name) == folder / name
    expected_mode = 0o666 & ~umask
    assert _plain_open_mode(folder) == expected_mode
    assert sorted(os.listdir(folder)) == sorted(written)
    for name in written:
        assert _mode(folder / name) == expected_mode, name
    assert _mode(folder) == 0o777 & ~umask
    text = (folder / "x.json").read_text(encoding="utf-8")
    assert text.endswith("}\n") and json.loads(text) == {"a": [1, 2], "b": 1, "é": "ü"}
    assert text.index('"a"') < text.index('"b"') and "ü" in text  # sorted keys, not ASCII-escaped
    assert (folder / "x.txt").read_bytes() == b"line\r\n"  # no newline translation
    assert (folder / "x.bin").read_bytes() == b"\x00\xff"
    assert torch.equal(torch.load(folder / "x.ckpt", weights_only=True)["w"], torch.arange(3))


def test_atomic_path_yields_a_hidden_temporary_file_in_the_destination_folder(tmp_path, umask):
    dest = tmp_path / "last.ckpt"
    with atomic_path(dest) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".last.ckpt.") and tmp.name.endswith(".tmp")
        assert tmp.exists() and tmp.stat().st_size == 0 and not dest.exists()
        assert _mode(tmp) == 0o666 & ~umask  # not mkstemp's 0600
        for pattern in ("*.ckpt", "last*.ckpt", "*.json", "last.ckpt"):
            assert list(tmp_path.glob(pattern)) == []
        assert leftovers(dest) == [tmp]  # in progress
        tmp.write_bytes(b"new")
    assert dest.read_bytes() == b"new" and os.listdir(tmp_path) == ["last.ckpt"]


def test_a_writer_that_replaces_the_file_privately_still_gives_plain_open_permissions(tmp_path, umask):
    dest = tmp_path / "weights.safetensors"
    with atomic_path(dest) as tmp:
        tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)  # what mkstemp-based libraries do
        os.write(fd, b"w")
        os.close(fd)
    assert _mode(dest) == 0o666 & ~umask and dest.read_bytes() == b"w"


def test_atomic_open_text_mode_is_utf8_and_honours_newline(tmp_path):
    dest = tmp_path / "rows.csv"
    with atomic_open(dest, "w", newline="") as handle:
        handle.write("päth,1\r\n")
    assert dest.read_bytes() == "päth,1\r\n".encode()
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(dest, "ab"):
            pass
    assert os.listdir(tmp_path) == ["rows.csv"]


# ---------------------------------------------------------------------------------------------- failures
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt, SystemExit])
def test_an_exception_mid_write_keeps_the_previous_file_and_no_temporary(tmp_path, error):
    dest = tmp_path / "state.json"
    atomic_write_json(dest, {"step": 1})
    with pytest.raises(error):
        with atomic_open(dest, "wb") as handle:
            handle.write(b'{"step": 2, "trunc')
            handle.flush()
            raise error("died mid-write")
    assert json.loads(dest.read_text()) == {"step": 1}
    assert os.listdir(tmp_path) == ["state.json"]
    # A first write that fails leaves nothing at all.
    with pytest.raises(error):
        with atomic_path(tmp_path / "new.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise error
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_torch_save_interrupted_halfway_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    dest = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.arange(4)}, dest)

    def dies_halfway(obj, handle, **kwargs):
        handle.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt  # what a signal during torch.save looks like to Python

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"step": 2}, dest)
    monkeypatch.undo()
    assert torch.load(dest, weights_only=True)["step"] == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_an_unserialisable_json_value_writes_nothing(tmp_path):
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "x.json", {"a": object()})
    assert os.listdir(tmp_path) == []


def test_a_failing_rename_removes_the_temporary(tmp_path):
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "keep").write_bytes(b"")
    with pytest.raises(OSError):
        atomic_write_bytes(dest, b"x")  # os.replace of a file onto a non-empty folder fails
    assert sorted(os.listdir(tmp_path)) == ["taken"]


# ---------------------------------------------------------------------------------------------- leftovers
def test_stale_leftovers_are_removed_by_the_next_write_and_fresh_ones_kept(tmp_path):
    dest = tmp_path / "last.ckpt"
    stale = tmp_path / ".last.ckpt.dead01.tmp"
    stale_mkstemp = tmp_path / ".last.ckpt.k3j_9x2a.tmp"  # a leftover of the older mkstemp-based writers
    fresh = tmp_path / ".last.ckpt.busy01.tmp"  # a concurrent writer, still running
    others = [tmp_path / ".last.ckpt.bak.dead01.tmp",  # a temporary of "last.ckpt.bak"
              tmp_path / ".other.ckpt.dead01.tmp", tmp_path / "last.ckpt.tmp"]
    for path in (stale, stale_mkstemp, fresh, *others):
        path.write_bytes(b"partial")
    for path in (stale, stale_mkstemp, *others):
        os.utime(path, (HOUR_AGO, HOUR_AGO))
    assert leftovers(dest) == sorted([stale, stale_mkstemp, fresh])
    atomic_write_bytes(dest, b"new")
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in [dest, fresh, *others])
    assert leftovers(dest) == [fresh]
    # The threshold is the caller's to choose; a fresh file is never older than a negative one.
    assert remove_stale_temps(dest, older_than_s=-1.0) == [fresh]
    assert leftovers(dest) == []


# ---------------------------------------------------------------------------------------------- staged folder, rename
def test_staged_folder_moves_each_file_with_plain_permissions(tmp_path, umask):
    out = tmp_path / "export"
    out.mkdir()
    (out / "README.md").write_text("old card")
    (out / "unrelated.txt").write_text("kept")
    with staged_folder(out, names=["weights.bin", "README.md"]) as staging:
        assert staging.parent == out and staging.name.startswith(".staging.") and staging.name.endswith(".tmp")
        fd = os.open(staging / "weights.bin", os.O_WRONLY | os.O_CREAT, 0o600)  # created private
        os.write(fd, b"w")
        os.close(fd)
        (staging / "README.md").write_text("new card")
        assert (out / "README.md").read_text() == "old card"  # nothing moved before the block ends
    assert sorted(os.listdir(out)) == ["README.md", "unrelated.txt", "weights.bin"]
    assert (out / "README.md").read_text() == "new card" and (out / "weights.bin").read_bytes() == b"w"
    assert _mode(out / "weights.bin") == _mode(out / "README.md") == 0o666 & ~umask


@pytest.mark.parametrize("failure", ["exception", "missing-file"])
def test_a_failed_staged_folder_changes_nothing(tmp_path, failure):
    out = tmp_path / "export"
    out.mkdir()
    (out / "config.json").write_text("old")
    with pytest.raises(RuntimeError if failure == "exception" else FileNotFoundError):
        with staged_folder(out, names=["config.json", "weights.bin"]) as staging:
            (staging / "config.json").write_text("new")
            if failure == "exception":
                raise RuntimeError("verification failed")
    assert os.listdir(out) == ["config.json"] and (out / "config.json").read_text() == "old"


def test_stale_staging_folders_are_removed_and_fresh_ones_kept(tmp_path):
    stale, fresh = tmp_path / ".staging.dead01.tmp", tmp_path / ".staging.busy01.tmp"
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / "weights.bin").write_bytes(b"partial")
    for path in (stale / "weights.bin", stale):
        os.utime(path, (HOUR_AGO, HOUR_AGO))
    with staged_folder(tmp_path) as staging:
        (staging / "a.txt").write_text("a")
    assert sorted(os.listdir(tmp_path)) == [fresh.name, "a.txt"]


def test_move_into_place_replaces_atomically(tmp_path):
    (tmp_path / "dst").write_bytes(b"old")
    (tmp_path / "src").write_bytes(b"new")
    assert move_into_place(tmp_path / "src", tmp_path / "dst") == tmp_path / "dst"
    assert os.listdir(tmp_path) == ["dst"] and (tmp_path / "dst").read_bytes() == b"new"


# ---------------------------------------------------------------------------------------------- append
def test_atomic_append_adds_to_the_end_and_a_failed_append_changes_nothing(tmp_path, monkeypatch, umask):
    path = tmp_path / "sub" / "results.jsonl"
    assert atomic_append(path, b'{"a": 1}\n') == path
    atomic_append(path, b'{"a": 2}\n')
    assert path.read_bytes() == b'{"a": 1}\n{"a": 2}\n' and _mode(path) == 0o666 & ~umask

    def dies(path, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "atomic_write_bytes", dies)
    with pytest.raises(KeyboardInterrupt):
        atomic_append(path, b'{"a": 3}\n')
    monkeypatch.undo()
    assert path.read_bytes() == b'{"a": 1}\n{"a": 2}\n'
    atomic_append(path, b'{"a": 3}\n')  # the lock was released
    assert path.read_bytes().endswith(b'{"a": 3}\n')


def test_atomic_append_keeps_every_row_of_concurrent_appenders(tmp_path):
    path = tmp_path / "results.jsonl"
    appender = (
        "import sys\n"
        "from lightning_sarclip.utils.atomic import atomic_append\n"
        "for i in range(40):\n"
        "    atomic_append(sys.argv[1], f'{sys.argv[2]}-{i}\\n'.encode())\n"
    )
    processes = [subprocess.Popen([sys.executable, "-c", appender, str(path), str(n)], cwd=REPO_ROOT)
                 for n in range(4)]
    assert [p.wait(timeout=120) for p in processes] == [0] * 4
    lines = path.read_text().splitlines()
    assert sorted(lines) == sorted(f"{n}-{i}" for n in range(4) for i in range(40))
    for n in range(4):  # each appender's rows in its own order
        assert [x for x in lines if x.startswith(f"{n}-")] == [f"{n}-{i}" for i in range(40)]
    assert sorted(os.listdir(tmp_path)) == [".results.jsonl.lock", "results.jsonl"]


# ---------------------------------------------------------------------------------------------- SIGKILL inside a write
N = 1_000_000  # a 4 MB tensor: torch.save hands it to the file object in one write() call

# Step 1 is written completely. Step 2 stops inside the write at the chosen point, says so, and waits to be
# killed. The fault is injected here, in the writer process, by monkeypatching; atomic.py has no hook for it.
WRITER = f"""
import os, sys, threading
import torch
from lightning_sarclip.utils import atomic

path, kill_point = sys.argv[1], sys.argv[2]
N = {N}
atomic.atomic_torch_save({{"step": 1, "w": torch.full((N,), 1.0)}}, path)

def stop_here():
    print("in-write", flush=True)
    threading.Event().wait()  # until SIGKILL

if kill_point == "serialising":
    real_save = torch.save

    class StopsInTheTensorData:
        def __init__(self, handle):
            self.handle = handle
        def write(self, data):
            data = memoryview(data).cast("B")
            if len(data) >= 4 * N:  # the tensor's bytes: write half of them, then stop
                self.handle.write(data[: len(data) // 2])
                self.handle.flush()
                stop_here()
            return self.handle.write(data)
        def flush(self):
            self.handle.flush()

    torch.save = lambda obj, f, **kwargs: real_save(obj, StopsInTheTensorData(f), **kwargs)
elif kill_point == "before-rename":
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):  # called after the temporary file was synced
        if os.path.basename(dst) == os.path.basename(path):
            stop_here()
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace
else:
    raise SystemExit(f"unknown kill point {{kill_point}}")
atomic.atomic_torch_save({{"step": 2, "w": torch.full((N,), 2.0)}}, path)
print("write returned", flush=True)
"""


def _first_line(process: subprocess.Popen, timeout: float) -> str | None:
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout).strip()
    except queue.Empty:
        return None


def _assert_complete(path: Path, step: int) -> None:
    state = torch.load(path, weights_only=True)
    assert state["step"] == step and torch.equal(state["w"], torch.full((N,), float(step)))


@pytest.mark.parametrize("kill_point", ["serialising", "before-rename"])
def test_sigkill_inside_a_write_leaves_the_previous_complete_file(tmp_path, kill_point):
    path = tmp_path / "ckpts" / "last.ckpt"
    stderr_path = tmp_path / "writer.stderr"
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen([sys.executable, "-c", WRITER, str(path), kill_point], cwd=REPO_ROOT,
                                   stdout=subprocess.PIPE, stderr=stderr, text=True,
                                   env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        try:
            line = _first_line(process, timeout=120)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
            process.stdout.close()
    assert line == "in-write", f"writer said {line!r}; stderr:\n{stderr_path.read_text()}"
    assert process.returncode == -signal.SIGKILL

    _assert_complete(path, 1)  # the destination is step 1, complete
    (leftover,) = leftovers(path)  # the killed write's temporary file: the kill landed inside the write
    assert sorted(os.listdir(path.parent)) == sorted([leftover.name, "last.ckpt"])
    if kill_point == "serialising":
        assert 0 < leftover.stat().st_size < path.stat().st_size  # partial bytes of step 2
        with pytest.raises(Exception):  # noqa: B017 - whatever torch raises for a truncated zip
            torch.load(leftover, weights_only=True)
    else:
        _assert_complete(leftover, 2)  # step 2 was complete and synced; only the rename was missing

    # The next write succeeds and leaves the fresh leftover alone (its writer could still be alive) ...
    atomic_torch_save({"step": 3, "w": torch.full((N,), 3.0)}, path)
    _assert_complete(path, 3)
    assert leftovers(path) == [leftover]
    # ... and removes it once it is old.
    os.utime(leftover, (HOUR_AGO, HOUR_AGO))
    atomic_torch_save({"step": 4, "w": torch.full((N,), 4.0)}, path)
    _assert_complete(path, 4)
    assert os.listdir(path.parent) == ["last.ckpt"]


def test_module_imports_neither_lightning_nor_torch():
    code = ("import sys; import lightning_sarclip.utils.atomic; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'pytorch_lightning')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr
    assert atomic.__all__  # the public API is declared

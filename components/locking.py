"""One writer per workspace: `data/`, `data.dvc`, the DVC cache and the registry are changed by one
`run` / `ingest` / `retrain` at a time.

An advisory `flock` on `<workspace>/lock`; the file names its holder (pid, command, host, since) for
the message a second command prints. The kernel drops the lock when its process dies (even on
`kill -9`), so a stale file is simply taken over. Re-entrant within a process (a flow that calls
another flow, the CLI around a flow).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from components.process import pid_alive

_held: dict[str, tuple[int, int]] = {}  # lock path → (fd, depth) held by this process
_guard = threading.Lock()


class WorkspaceBusy(RuntimeError):
    """Another process holds the workspace lock; the message names it."""


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def describe(holder: dict) -> str:
    if not holder:
        return "another process"
    return f"`{holder.get('command', '?')}` (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')})"


@contextmanager
def workspace_lock(home: Path, command: str, *, wait: float = 0.0, on_wait: Callable[[str], None] | None = None) -> Iterator[str | None]:
    """Hold the workspace lock for `command`. `wait` seconds (0: fail at once, < 0: forever), then
    WorkspaceBusy. Yields a note when a stale lock of a dead process was taken over, else None."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "lock"
    key = str(path)
    with _guard:
        if key in _held:  # re-entrant within this process
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
            reentrant = True
        else:
            reentrant = False
    if reentrant:
        try:
            yield None
        finally:
            with _guard:
                fd, depth = _held[key]
                _held[key] = (fd, depth - 1)
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = None if wait < 0 else time.monotonic() + wait
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = _holder(path)
            if deadline is not None and time.monotonic() >= deadline:
                os.close(fd)
                raise WorkspaceBusy(
                    f"workspace {home} is in use by {describe(holder)}; wait for it to finish (or pass --wait), or stop it (kill {holder.get('pid', '<pid>')})"
                ) from None
            if on_wait and not told:
                on_wait(f"waiting for the workspace lock held by {describe(holder)} ...")
                told = True
            time.sleep(0.5)
    before = _holder(path)
    note = None
    if before.get("pid") and before.get("host") == socket.gethostname() and not pid_alive(int(before["pid"])):
        note = f"took over the workspace lock left by {describe(before)}, which is no longer running"
    info = {"pid": os.getpid(), "command": command, "host": socket.gethostname(), "since": datetime.now(UTC).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    with _guard:
        _held[key] = (fd, 1)
    try:
        yield note
    finally:
        with _guard:
            _, depth = _held[key]
            if depth <= 1:
                del _held[key]
                os.ftruncate(fd, 0)  # released: no holder to name
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            else:
                _held[key] = (fd, depth - 1)

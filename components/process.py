"""Processes that stop: SIGTERM acts as Ctrl-C, and a server command takes its whole tree with it.

- `stop_on_sigterm()`: SIGTERM (systemd, Kubernetes, a supervisor) raises KeyboardInterrupt in the
  main thread, exactly like Ctrl-C, and sets `STOP`, which the training loops check between batches,
  so work in task-runner threads ends too instead of holding the process open.
- `run_server(cmd)`: start a server (BentoML, MLflow) in its own process group, forward SIGTERM /
  SIGINT / SIGHUP to the whole group, SIGKILL what is left after a grace period; returns its exit code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

STOP = threading.Event()


class Stopped(KeyboardInterrupt):
    """Raised in a training loop after SIGTERM / Ctrl-C (a KeyboardInterrupt: nothing catches it by accident)."""


def pid_alive(pid: int) -> bool:
    """Whether a process of this pid exists on this machine (a stale lock, a run left RUNNING)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_stop() -> None:
    if STOP.is_set():
        raise Stopped("stop requested (SIGTERM or Ctrl-C)")


def stop_on_sigterm() -> None:
    """In the main thread of a CLI command: SIGTERM and SIGINT stop it as Ctrl-C does."""

    def handler(signum, frame):
        STOP.set()
        raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run_server(cmd: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None, grace: float = 8.0) -> int:
    import psutil

    proc = subprocess.Popen(cmd, env=env, cwd=cwd, start_new_session=True)  # its own process group
    pgid = proc.pid
    seen: dict[int, psutil.Process] = {}

    def family() -> list[psutil.Process]:
        """The server and every descendant seen so far (one may have left the group with setsid)."""
        try:
            for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
                seen.setdefault(p.pid, p)
        except psutil.Error:
            pass
        return [p for p in seen.values() if p.is_running()]

    def signal_all(sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        for p in family():
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass

    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    try:
        while proc.poll() is None and not received:
            family()  # keep track of the workers as they start
            time.sleep(0.2)
        if received:
            signal_all(signal.SIGTERM if received[0] == signal.SIGHUP else received[0])
            deadline = time.monotonic() + grace
            while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family()) and time.monotonic() < deadline:
                time.sleep(0.1)
        return proc.wait(timeout=1) if proc.poll() is None else proc.returncode
    except (subprocess.TimeoutExpired, psutil.Error):
        return -signal.SIGKILL
    finally:
        signal_all(signal.SIGKILL)  # whatever of the tree is left (workers, a job runner) goes too
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)

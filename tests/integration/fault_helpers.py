"""Helpers of the fault tests: watch a process (busy, gone) and end every process of a throwaway Ray found
by an environment marker and ancestry. Not collected (no test_ prefix)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def wait_busy(pid: int, timeout: float = 60.0) -> None:
    """Return once process `pid` has used 0.2 s of CPU since the call (it is working on something)."""
    start, deadline = cpu_ticks(pid), time.monotonic() + timeout
    while cpu_ticks(pid) - start < 0.2 * os.sysconf("SC_CLK_TCK"):
        assert time.monotonic() < deadline, f"process {pid} did not start working within {timeout:.0f} s"
        time.sleep(0.02)


def gone(pid: int, timeout: float = 60.0) -> bool:
    """True once process `pid` has exited (a zombie counts as exited)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def pids_with_env(marker: str) -> list[int]:
    """Processes whose environment holds `marker` (e.g. "RAY_TMPDIR=/tmp/mg-x"): what a throwaway Ray's
    driver started (GCS, raylet, workers). Ray's agents get an environment of their own: see process_tree."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker.encode() in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
    return found


def process_tree(marker: str) -> set[int]:
    """`pids_with_env(marker)` and every process below them (the raylet's dashboard and runtime-env agents).
    Take it while the Ray is up: an orphan loses its ancestry."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(proc.name))
    found, todo = set(), pids_with_env(marker)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def kill_with_env(marker: str, also: set[int] | None = None, grace: float = 10.0) -> set[int]:
    """SIGCONT, SIGTERM, then SIGKILL `process_tree(marker)` and the processes `also` (a tree taken earlier);
    returns those found."""
    pids = process_tree(marker) | (also or set())
    for sig in (signal.SIGCONT, signal.SIGTERM):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    deadline = time.monotonic() + grace
    while any(not gone(p, timeout=0) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in pids | process_tree(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids

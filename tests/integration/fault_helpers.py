"""Helpers of the fault tests: watch a process (busy, gone) and end every process of a throwaway Ray by an
environment marker. Not collected (no test_ prefix)."""

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
    """Processes whose environment holds `marker` (e.g. "RAY_TMPDIR=/tmp/mg-x"): everything a throwaway Ray
    started, agents and workers included, whatever they renamed themselves to."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker.encode() in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
    return found


def kill_with_env(marker: str, grace: float = 10.0) -> list[int]:
    """SIGCONT, SIGTERM, then SIGKILL every process with `marker` in its environment; returns those found."""
    pids = pids_with_env(marker)
    for sig in (signal.SIGCONT, signal.SIGTERM):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    deadline = time.monotonic() + grace
    while any(not gone(p, timeout=0) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in pids_with_env(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids

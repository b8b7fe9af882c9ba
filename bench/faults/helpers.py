"""What the fault bench and the fault tests (tests/integration/test_faults_*.py) share: watch a process
(busy, gone), find the processes of a throwaway Ray by an environment marker and their ancestry and end them,
and the small training run (TREE, compared on KEYS) whose driver both kill and resume."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

# One SFT step, then four GRPO steps whose tau, rewards and learner state all depend on what came before
# (the setup of tests/integration/test_train_loop_e2e.py's in-process resume test); checkpoints at 1 (the
# SFT stage's end), 2, 4 and 5, the last two kept.
TREE: dict[str, Any] = {
    "name": "faults", "seed": 0,
    "stages": [{"name": "warmup", "kind": "sft", "steps": 1, "prompts_per_step": 2, "lr": 0.1},
               {"name": "grounding", "kind": "grpo", "steps": 4, "prompts_per_step": 2, "refill_cap": 1,
                "drop_zero_variance": False}],
    "pool": {"num_workers": 1, "cpus_per_worker": 0.25},
    "rollout": {"group_size": 4, "max_model_len": 512,
                "sampling": {"temperature": 1.0, "max_new_tokens": 10}},
    # A random model answers nothing parsable, so every group's task reward is 0 and its advantage too: the
    # learner's steps come from the KL term toward the base, which the SFT step moved the adapter away from
    # (kept groups, reference=base), so learner state must resume exactly as well.
    "learner": {"num_ranks": 1, "cpus_per_rank": 0.25, "micro_batch_size": 8, "lr": 1e-3,
                "grpo": {"reference": "base", "beta": 0.5}},
    # IoU is 0: with the three conditions switched off the schedule raises whenever its 2-group window
    # fills, which makes tau's path depend on the restored window.
    "reward": {"accuracy": "medloc", "w_recite": -1.0,
               "schedule": {"window": 2, "tau0": 0.05, "tau_target": 0.5, "use_reward_condition": False,
                            "use_std_condition": False, "use_margin_condition": False}},
    "eval": {"every": 0, "max_samples": 2, "overlays": 0},
    "checkpoint": {"every": 2, "keep": 2},
}
KEYS = ("tau/value", "tau/version", "reward/total", "reward/iou", "learner/loss", "batch/groups_seen",
        "adapter_version")


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def wait_busy(pid: int, timeout: float = 60.0, cpu_s: float = 0.2) -> None:
    """Return once process `pid` has used `cpu_s` seconds of CPU since the call (it is working on something);
    AssertionError after `timeout` seconds."""
    start, deadline = cpu_ticks(pid), time.monotonic() + timeout
    while cpu_ticks(pid) - start < cpu_s * os.sysconf("SC_CLK_TCK"):
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


def with_descendants(pids: list[int]) -> set[int]:
    """`pids` and every process below them (Ray's workers rename themselves `ray::...`, so only their
    ancestry, the raylet, ties them to their cluster)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(proc.name))
    found, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def process_tree(marker: str) -> set[int]:
    """`pids_with_env(marker)` and every process below them (the raylet's dashboard and runtime-env agents).
    Take it while the Ray is up: an orphan loses its ancestry."""
    return with_descendants(pids_with_env(marker))


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

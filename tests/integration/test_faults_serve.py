"""`medground serve` stopped by SIGTERM (what systemd and Kubernetes send) deletes its app and shuts down the
local Ray it started: no dashboard, runtime-env agent, Serve controller, proxy or replica outlives it. Before
the fix, Ray's own SIGTERM handler exited mid-shutdown and left the agents running as orphans."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from bench.faults.cluster import BIN, ROOT
from bench.faults.helpers import gone, kill_with_env, process_tree
from learner.distributed import free_port

pytestmark = pytest.mark.integration


def _names(pids: list[int]) -> list[str]:
    names = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the process exited after it was listed
        names.append(cmdline.replace(b"\0", b" ").decode(errors="replace")[:120])
    return names


def test_sigterm_stops_serve_and_its_local_ray(tiny_model_dir: Path, tmp_path: Path) -> None:
    import os

    ray_dir = tempfile.mkdtemp(prefix="mgs-", dir="/tmp")  # short: Ray's socket paths stay < 107 bytes
    marker = f"RAY_TMPDIR={ray_dir}"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MEDGROUND_RAY_ADDRESS")}
    env |= {"RAY_TMPDIR": ray_dir, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    port = free_port()
    log = tmp_path / "serve.log"
    tree: set[int] = set()
    with log.open("w") as out:
        proc = subprocess.Popen([str(BIN / "python"), "-m", "services.cli", "serve", "--model",
                                 str(tiny_model_dir),
                                 "--engine", "hf", "--port", str(port)], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while "serving on" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as answer:
            assert answer.status == 200
        tree = process_tree(marker)  # GCS, raylet, dashboard, agents, Serve's actors
        assert sum("agent" in n.lower() for n in _names(list(tree))) >= 2, _names(list(tree))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
        deadline = time.monotonic() + 30
        while (left := [p for p in tree if not gone(p, timeout=0)]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"left running after SIGTERM: {_names(left)}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        kill_with_env(marker, also=tree)
        shutil.rmtree(ray_dir, ignore_errors=True)

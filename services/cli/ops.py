"""Operating a training job from another process: `medground status`, `scale rollout` and `submit`.

`status` and `scale` join the cluster as a Ray driver (the GCS address, `HOST:6379`, or `ray://HOST:10001`)
and talk to the run's named control actor (services/cluster/control.py); the training driver applies a resize
between steps. `submit` talks to the job server on the dashboard (`http://HOST:8265`), like `ray job submit`.
Both follow Ray 2.60's token authentication: `RAY_AUTH_MODE` and `RAY_AUTH_TOKEN(_PATH)` as on the cluster.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import shlex
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from services.cluster.control import NAMESPACE, JobStatus, find_control_actor

DASHBOARD_PORT = 8265  # Ray's default dashboard / job server port (deploy/ manifests expose the same)
GCS_PORT = 6379
ROOT = Path(__file__).resolve().parents[2]
AUTH_HINT = "RAY_AUTH_MODE and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) must match the cluster's"


class OperatorError(RuntimeError):
    """An operator command cannot proceed; the message says what to do."""


# -------------------------------------------------------------------------------------------------------
# Joining the cluster.


def connect(address: str | None) -> str:
    """Join a running cluster as a driver (never start one); returns the address used."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or "auto"
    if address.startswith(("http://", "https://")):
        raise OperatorError(f"{address} is a dashboard URL; status and scale take the cluster address "
                            f"(HOST:{GCS_PORT}, or ray://HOST:10001), e.g. --address 127.0.0.1:{GCS_PORT}")
    if address != "auto":
        _check_reachable(address)
    if ray.is_initialized():
        return address
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.ERROR)
    except ConnectionError as exc:
        where = "no local Ray cluster was found" if address == "auto" else f"cannot join the cluster at {address}"  # noqa: E501
        raise OperatorError(f"{where} ({exc}); pass --address HOST:{GCS_PORT} of the cluster running the job "
                            f"(or set MEDGROUND_RAY_ADDRESS); {AUTH_HINT}") from None
    except RuntimeError as exc:  # Ray raises RuntimeError on authentication and version mismatches
        raise OperatorError(f"joining {address} failed: {exc}; {AUTH_HINT}, and the client's Ray version "
                            f"must equal the cluster's") from None
    return address


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail fast with a clear message instead of Ray's long connection retries."""
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    host, port = parsed.hostname, parsed.port or GCS_PORT
    if not host:
        raise OperatorError(f"--address {address!r} is not HOST:PORT; e.g. 127.0.0.1:{GCS_PORT}")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise OperatorError(f"the Ray cluster at {host}:{port} is unreachable ({exc.strerror or exc}); check "
                            f"--address (the head's GCS port, default {GCS_PORT}), that the head is up "
                            f"(`ray status --address {host}:{port}` on the head) and the network/port-forward"
                            ) from None


def _control(run: str | None) -> Any:
    try:
        return find_control_actor(run)
    except LookupError as exc:
        several = "several" in str(exc)
        hint = "" if several else (" (a job registers its control actor as it starts; `ray job list` shows "
                                   "the cluster's jobs)")
        raise OperatorError(f"{exc}{hint}") from None


# -------------------------------------------------------------------------------------------------------
# status and scale.


def job_status(run: str | None) -> JobStatus:
    """The last status the run's driver reported, with `age_s` (seconds since that report)."""
    import ray

    status: JobStatus = ray.get(_control(run).get_status.remote())
    age = None if status.reported_at is None else max(time.time() - status.reported_at, 0.0)
    return dataclasses.replace(status, age_s=age)


def format_status(s: JobStatus) -> str:
    """A human table of a `JobStatus`."""
    def num(v: Any, fmt: str = ".3g") -> str:
        return "-" if v is None else format(v, fmt)

    if s.reported_at is None:
        return f"run {s.run}: starting (no report yet)"
    workers, live = s.rollout_workers, s.rollout_workers_live
    starting = None if workers is None or live is None else workers - live
    worker_line = f"{workers} target, {live} live, {starting} starting"
    if s.rollout_workers_serving is not None:
        worker_line += f"; {s.rollout_workers_serving} served the last step"
    if s.pending_rollout_workers is not None:
        worker_line += f"; resize to {s.pending_rollout_workers} requested (applied before the next step)"
    tau = "-" if s.tau is None else f"{s.tau:.3g} (version {s.tau_version})"
    rows = [("run", f"{s.run}  ({s.run_dir or '?'})"),
            ("step", f"{s.step} / {s.total_steps}  stage {s.stage}"),
            ("tau", tau),
            ("workers", worker_line),
            ("throughput", f"{num(s.completions_per_s)} completions/s, {num(s.tokens_per_s)} "
                           f"tokens/s (last step {num(s.step_seconds)} s)"),
            ("adapter", f"v{s.adapter_version}" + ("" if s.staleness is None else
                                                     f" (last batch {s.staleness:.3g} versions behind)")),
            ("reward", num(s.reward)),
            ("A@0.5", f"{num(s.last_eval_a50)} (last held-out eval)"),
            ("reported", f"{num(s.age_s, '.1f')} s ago")]
    return "\n".join(f"{k:<11}{v}" for k, v in rows)


def scale_rollout(run: str | None, n: int, wait_s: float = 0.0,
                  echo: Callable[[str], None] = print) -> JobStatus:
    """Ask the run's driver for `n` rollout workers; with `wait_s` > 0, wait until `n` are live."""
    import ray

    if n < 1:
        raise OperatorError(f"a rollout pool needs at least 1 worker, got {n}")
    control = _control(run)
    before: JobStatus = ray.get(control.get_status.remote())
    echo(ray.get(control.request_rollout_workers.remote(n)))
    echo(f"now: {_or(before.rollout_workers)} rollout workers at step "
         f"{_or(before.step)}/{_or(before.total_steps)}; new workers load the current adapter before they "
         "take work")
    deadline = time.monotonic() + wait_s
    status = before
    while wait_s > 0:
        try:
            status = ray.get(control.get_status.remote())
        except ray.exceptions.RayActorError:
            raise OperatorError(f"the job ended before {n} workers were live (last status: step "
                                f"{status.step}/{status.total_steps})") from None
        if status.pending_rollout_workers is None and status.rollout_workers_live == n \
                and status.rollout_workers == n:
            echo(f"done: {n} rollout workers live at step {status.step}")
            break
        if time.monotonic() > deadline:
            raise OperatorError(f"after {wait_s:.0f} s: {status.rollout_workers_live} of "
                                f"{status.rollout_workers} workers live; the request stays in place "
                                f"(check cluster resources with `ray status`)")
        time.sleep(1.0)
    return status


def _or(value: Any) -> Any:
    return "?" if value is None else value


# -------------------------------------------------------------------------------------------------------
# submit.


def runtime_env(gpu: bool, working_dir: Path) -> dict[str, Any]:
    """The project's runtime environment for a job (deploy/jobs/runtime_env_{cpu,gpu}.yaml) + working_dir."""
    name = f"runtime_env_{'gpu' if gpu else 'cpu'}.yaml"
    for base in (working_dir, ROOT):
        path = base / "deploy" / "jobs" / name
        if path.is_file():
            env: dict[str, Any] = yaml.safe_load(path.read_text())
            return {**env, "working_dir": str(working_dir)}
    raise OperatorError(f"deploy/jobs/{name} not found under {working_dir} or {ROOT}; run from the "
                        "repository")


def entrypoint(config: Path, overrides: list[str], working_dir: Path) -> str:
    """`medground train CONFIG --set ...` with CONFIG relative to the uploaded working directory."""
    config = config.resolve()
    try:
        shown = str(config.relative_to(working_dir.resolve()))
    except ValueError:  # outside the upload: only works where the cluster shares this file system
        shown = str(config)
    args = ["medground", "train", shown]
    for item in overrides:
        args += ["--set", item]
    return shlex.join(args)


def submit(address: str, entry: str, env: dict[str, Any], submission_id: str | None) -> tuple[Any, str]:
    """Submit through the job server; returns (client, job id)."""
    from ray.job_submission import JobSubmissionClient

    if not address.startswith(("http://", "https://")):
        raise OperatorError(f"submit talks to the job server on the dashboard: --address http://HOST:"
                            f"{DASHBOARD_PORT}, got {address!r}")
    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError) as exc:
        raise OperatorError(f"cannot reach the Ray job server at {address} ({exc}); check --address (the "
                            f"dashboard, port {DASHBOARD_PORT}) and that {AUTH_HINT}") from None
    job_id = client.submit_job(entrypoint=entry, runtime_env=env, submission_id=submission_id)
    return client, job_id


def follow(client: Any, job_id: str, echo: Callable[[str], None] = print) -> str:
    """Stream the job's logs until it ends; returns its final status (SUCCEEDED, FAILED, STOPPED)."""
    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            echo(lines.rstrip("\n"))

    asyncio.run(tail())
    while True:  # the log stream can close a moment before the status settles
        status = str(client.get_job_status(job_id))
        if status.rsplit(".", 1)[-1] in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status.rsplit(".", 1)[-1]
        time.sleep(1.0)


def to_json(status: JobStatus) -> str:
    return json.dumps(dataclasses.asdict(status), indent=2, sort_keys=True, default=str)

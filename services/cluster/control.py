"""The control actor: one per run, named, through which operators read status and resize the rollout pool.

The driver owns the pool; the control actor only holds requests and the last status. Between steps the
driver takes pending requests and applies them, so a resize never lands in the middle of a generation
call, and a new worker loads the current adapter before it takes work (the pool guarantees that).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

NAMESPACE = "medground"


@dataclass(frozen=True)
class JobStatus:
    """A running job as `medground status` shows it: the driver's last report, plus what the control actor
    adds (`run`, `pending_rollout_workers`, `reported_at`) and `ops.job_status` (`age_s`, seconds since the
    report). `status --json` prints these fields; before the first report only the actor's are set."""

    run: str = ""
    step: int | None = None  # optimiser steps done, over all stages
    total_steps: int | None = None
    stage: str | None = None
    tau: float | None = None  # the MedLoc-R1 threshold the last step was scored under
    tau_version: int | None = None
    reward: float | None = None  # mean total reward of the last step's completions
    adapter_version: int | None = None  # the adapter the rollout workers serve
    staleness: float | None = None  # adapter versions the last batch lagged the learner (0: synchronous)
    rollout_workers: int | None = None  # the pool's target size
    rollout_workers_live: int | None = None
    rollout_workers_serving: int | None = None  # workers that served the last step
    completions_per_s: float | None = None
    tokens_per_s: float | None = None
    step_seconds: float | None = None
    last_eval_a50: float | None = None  # held-out A@0.5 (percent) of the last evaluation
    run_dir: str | None = None
    pending_rollout_workers: int | None = None  # a resize requested and not yet applied
    reported_at: float | None = None  # time.time() of the driver's last report
    age_s: float | None = None


def actor_name(run_name: str) -> str:
    return f"medground-control:{run_name}"


@dataclass
class ControlState:
    """Plain state behind the actor (tests use it directly)."""

    run_name: str
    status: JobStatus = field(default_factory=JobStatus)
    pending_rollout_workers: int | None = None
    requests_log: list[dict[str, Any]] = field(default_factory=list)

    def report(self, status: JobStatus) -> None:
        self.status = dataclasses.replace(status, reported_at=time.time())

    def get_status(self) -> JobStatus:
        return dataclasses.replace(self.status, run=self.run_name,
                                   pending_rollout_workers=self.pending_rollout_workers)

    def request_rollout_workers(self, n: int) -> str:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"rollout workers must be a whole number >= 1, got {n!r}")
        self.pending_rollout_workers = n
        self.requests_log.append({"rollout_workers": n, "at": time.time()})
        step = "?" if self.status.step is None else self.status.step
        return f"run {self.run_name!r}: resize to {n} rollout workers requested; applied before the step after {step}"  # noqa: E501

    def take_rollout_request(self) -> int | None:
        n, self.pending_rollout_workers = self.pending_rollout_workers, None
        return n


def start_control_actor(run_name: str) -> Any:
    """Create (or replace) the run's named control actor; detached from the driver's lifetime is not wanted,
    so it dies with the job. It lives on the driver's node (hard affinity; it takes no CPU, so it always
    fits, and Ray does not keep a soft one, rewards/actor.py): a lost worker node must cost only the workers
    on it, and the driver's node going takes the run anyway (README, "Reliability")."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actor_cls = ray.remote(num_cpus=0, max_restarts=0)(ControlState)
    try:
        old = ray.get_actor(actor_name(run_name), namespace=NAMESPACE)
    except ValueError:
        old = None
    if old is not None:
        ray.kill(old)
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return actor_cls.options(name=actor_name(run_name), namespace=NAMESPACE,
                             scheduling_strategy=here).remote(run_name)


class ControlClient:
    """The driver's side of the control actor (the `Control` seam of services/training/seams.py)."""

    def __init__(self, run_name: str) -> None:
        self._actor = start_control_actor(run_name)

    def take_rollout_request(self) -> int | None:
        import ray

        n: int | None = ray.get(self._actor.take_rollout_request.remote())
        return n

    def report(self, status: JobStatus) -> None:
        self._actor.report.remote(status)  # fire and forget: reporting never slows a step

    def close(self) -> None:
        import ray

        ray.kill(self._actor)


def find_control_actor(run_name: str | None) -> Any:
    """The control actor of `run_name`, or of the only running job when no name is given."""
    import ray

    if run_name is not None:
        try:
            return ray.get_actor(actor_name(run_name), namespace=NAMESPACE)
        except ValueError:
            raise LookupError(f"no running medground job named {run_name!r} on this cluster") from None
    prefix = actor_name("")
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a.get("namespace") == NAMESPACE and a["name"].startswith(prefix)]
    if not names:
        raise LookupError("no running medground job found on this cluster; check --address")
    if len(names) > 1:
        runs = ", ".join(sorted(n[len(prefix):] for n in names))
        raise LookupError(f"several medground jobs are running ({runs}); choose one with --run NAME")
    return ray.get_actor(names[0], namespace=NAMESPACE)

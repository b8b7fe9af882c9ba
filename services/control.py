"""The control actor: one per run, named, through which operators read status and resize the rollout pool.

The driver owns the pool; the control actor only holds requests and the last status. Between steps the
driver takes pending requests and applies them, so a resize never lands in the middle of a generation
call, and a new worker loads the current adapter before it takes work (the pool guarantees that).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

NAMESPACE = "medground"


def actor_name(run_name: str) -> str:
    return f"medground-control:{run_name}"


@dataclass
class ControlState:
    """Plain state behind the actor (tests use it directly)."""

    run_name: str
    status: dict[str, Any] = field(default_factory=dict)
    pending_rollout_workers: int | None = None
    requests_log: list[dict[str, Any]] = field(default_factory=list)

    def report(self, status: dict[str, Any]) -> None:
        self.status = {**status, "reported_at": time.time()}

    def get_status(self) -> dict[str, Any]:
        return {"run": self.run_name, "pending_rollout_workers": self.pending_rollout_workers, **self.status}

    def request_rollout_workers(self, n: int) -> str:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"rollout workers must be a whole number >= 1, got {n!r}")
        self.pending_rollout_workers = n
        self.requests_log.append({"rollout_workers": n, "at": time.time()})
        step = self.status.get("step", "?")
        return f"run {self.run_name!r}: resize to {n} rollout workers requested; applied before the step after {step}"

    def take_rollout_request(self) -> int | None:
        n, self.pending_rollout_workers = self.pending_rollout_workers, None
        return n


def start_control_actor(run_name: str) -> Any:
    """Create (or replace) the run's named control actor; detached from the driver's lifetime is not wanted,
    so it dies with the job."""
    import ray

    actor_cls = ray.remote(num_cpus=0, max_restarts=0)(ControlState)
    try:
        old = ray.get_actor(actor_name(run_name), namespace=NAMESPACE)
    except ValueError:
        old = None
    if old is not None:
        ray.kill(old)
    return actor_cls.options(name=actor_name(run_name), namespace=NAMESPACE).remote(run_name)


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

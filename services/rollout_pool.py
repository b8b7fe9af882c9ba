"""The rollout pool: N rollout worker actors behind one `generate` call, elastic between calls.

- Requests are split into contiguous shards, one per ready worker; results come back in request order.
- A worker that dies mid-call (`RayActorError`) is replaced; its shard is retried on the surviving
  workers (or on the replacement when none survive), up to `rollout.max_attempts` tries per request.
- Every worker loads the current adapter before any work: a new worker's first actor task is the
  adapter load, and Ray runs one caller's tasks on an actor in submission order.
- `resize(n)` adds or removes workers between calls; `load_adapter` pushes one object ref to all. A worker
  still starting (or waiting for resources the cluster does not have yet) is not waited for: the load is
  queued behind its start-up, and it takes work once its last queued load has finished.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from learner.batch import contiguous_shards
from rollout.config import RolloutConfig, SamplingConfig
from rollout.contracts import RolloutGroup, RolloutRequest
from rollout.knowledge import KnowledgeBase
from rollout.worker import RolloutWorker


@dataclass
class _Worker:
    handle: Any  # ActorHandle[RolloutWorker]
    ready: ray.ObjectRef[Any]  # resolves once the engine is up and the current adapter is loaded
    serial: int


class RolloutPool:
    """N `RolloutWorker` actors sharing one model directory, one knowledge base and one adapter."""

    def __init__(self, model_dir: str | Path, config: RolloutConfig, knowledge: KnowledgeBase | None = None,
                 num_workers: int | None = None) -> None:
        self.model_dir = str(model_dir)
        self.config = config
        self.knowledge = knowledge
        self._knowledge_ref = ray.put(knowledge)
        self._adapter_version = 0
        self._adapter_ref: ray.ObjectRef[Any] | None = None  # None: the base model
        self._serials = itertools.count()
        self._workers: list[_Worker] = []
        self.replaced = 0  # workers replaced after dying mid-call (tests read it: the death landed mid-call)
        self.last_serving: tuple[int, ...] = ()  # serial numbers of the workers that served the last call
        self.resize(config.num_workers if num_workers is None else num_workers)

    @property
    def size(self) -> int:
        return len(self._workers)

    @property
    def adapter_version(self) -> int:
        return self._adapter_version

    def handles(self) -> list[Any]:
        """The worker actor handles (for status and tests)."""
        return [w.handle for w in self._workers]

    def live_count(self) -> int:
        """Workers that are up with the current adapter (the rest are starting or waiting for resources)."""
        if not self._workers:
            return 0
        done, _ = ray.wait([w.ready for w in self._workers], num_returns=len(self._workers), timeout=0)
        return len(done)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every worker has started and loaded the current adapter (errors propagate)."""
        ray.get([w.ready for w in self._workers], timeout=timeout)

    # -- membership ------------------------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        serial = next(self._serials)
        options: dict[str, Any] = {"num_cpus": self.config.cpus_per_worker}
        if self.config.gpus_per_worker > 0:
            options["num_gpus"] = self.config.gpus_per_worker
        handle = RolloutWorker.options(**options).remote(  # type: ignore[attr-defined]
            self.model_dir, self.config, self._knowledge_ref, self.config.seed + serial)
        ready = handle.load_adapter.remote(self._adapter_ref)
        return _Worker(handle=handle, ready=ready, serial=serial)

    def resize(self, n: int) -> None:
        """Grow to or shrink to n workers; call between `generate` calls. New workers start in the
        background and take work once ready; removed workers are closed and killed."""
        if n < 1:
            raise ValueError(f"a rollout pool needs at least one worker, got {n}")
        while len(self._workers) < n:
            self._workers.append(self._spawn())
        while len(self._workers) > n:
            self._stop(self._workers.pop())

    def _stop(self, worker: _Worker) -> None:
        # a dead or hung worker has nothing to close cleanly; the kill below frees its resources. One that
        # never came up (no loads are in flight between calls) is killed at once: waiting on its close
        # would wait for its start, forever when the cluster has no room for it
        started, _ = ray.wait([worker.ready], timeout=0)
        if started:
            with contextlib.suppress(RayActorError, GetTimeoutError):
                ray.get(worker.handle.close.remote(), timeout=60)
        ray.kill(worker.handle)

    def _replace(self, dead: _Worker) -> None:
        if dead in self._workers:
            self._workers[self._workers.index(dead)] = self._spawn()
            self.replaced += 1
            ray.kill(dead.handle)  # a no-op for a dead actor; stops one that only lost its connection

    def _ready_workers(self) -> list[_Worker]:
        """Workers that are up; waits for the first one when none is, so a call never starves."""
        done, _ = ray.wait([w.ready for w in self._workers], num_returns=len(self._workers), timeout=0)
        if not done:
            done, _ = ray.wait([w.ready for w in self._workers], num_returns=1)
        ready = set(done)
        ray.get(list(ready))  # a worker that failed to start is a loud error (bad model dir, bad adapter)
        return [w for w in self._workers if w.ready in ready]

    # -- work ------------------------------------------------------------------------------------------

    def load_adapter(self, version: int, artefact: Any) -> None:
        """Make adapter `version` live on every worker. `artefact`: an object ref of the learner's exported
        `LoraArtefact` (or an `AdapterSpec`), or such an object in memory (put into the object store once
        here); None with version 0 for the base model. Blocks until all have switched."""
        artefact_ref = artefact if artefact is None or isinstance(artefact, ray.ObjectRef) else ray.put(artefact)
        if (version == 0) != (artefact_ref is None):
            raise ValueError(f"version {version} with artefact {artefact_ref}: version 0 has no artefact, "
                             f"versions >= 1 need one")
        self._adapter_version, self._adapter_ref = version, artefact_ref
        done, _ = ray.wait([w.ready for w in self._workers], num_returns=len(self._workers), timeout=0)
        finished = set(done)
        up = {id(w) for w in self._workers if w.ready in finished}
        for w in self._workers:
            # chained behind the start-up task, so a starting worker also ends on this adapter
            w.ready = w.handle.load_adapter.remote(artefact_ref)
        loaded = []
        # wait for the workers that were up; one still starting (a new vLLM engine, or an actor waiting for
        # a node) would stall the step, and `_ready_workers` gives it work only once this load is done
        for w in [w for w in self._workers if id(w) in up]:
            try:
                loaded.append(ray.get(w.ready))
            except RayActorError:
                self._replace(w)  # the replacement's first task loads this same adapter
        wrong = [v for v in loaded if v != version]
        if wrong:
            raise RuntimeError(f"workers report adapter versions {wrong} after loading {version}; the artefact's "
                               f"version field disagrees with the version passed to load_adapter")

    def generate(self, requests: Sequence[RolloutRequest], n: int | None = None,
                 sampling: SamplingConfig | None = None) -> list[RolloutGroup]:
        """One group per request, in request order, each sampled by exactly one worker."""
        results: list[RolloutGroup | None] = [None] * len(requests)
        attempts = [0] * len(requests)
        pending: dict[ray.ObjectRef[Any], tuple[_Worker, list[int]]] = {}

        def submit(indices: Sequence[int]) -> None:
            workers = self._ready_workers()
            for worker, shard in zip(workers, contiguous_shards(len(indices), len(workers)), strict=False):
                idx = [indices[i] for i in shard]
                for i in idx:
                    attempts[i] += 1
                ref = worker.handle.generate.remote([requests[i] for i in idx], n, sampling)
                pending[ref] = (worker, idx)

        serving: set[int] = set()
        if requests:
            submit(list(range(len(requests))))
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            worker, idx = pending.pop(ref)
            try:
                groups = ray.get(ref)
            except RayActorError as exc:
                self._replace(worker)
                exhausted = [requests[i].prompt_id for i in idx if attempts[i] >= self.config.max_attempts]
                if exhausted:
                    raise RuntimeError(f"requests {exhausted[:5]} failed on {self.config.max_attempts} workers "
                                       f"in a row (rollout.max_attempts); last error: {exc}") from exc
                # the retry goes to surviving workers (or the replacement once it is up)
                submit(list(idx))
                continue
            serving.add(worker.serial)
            for i, group in zip(idx, groups, strict=True):
                results[i] = group
        self.last_serving = tuple(sorted(serving))
        missing = [requests[i].prompt_id for i, g in enumerate(results) if g is None]
        if missing:
            raise RuntimeError(f"rollout pool lost requests {missing[:5]}; this is a bug in RolloutPool")
        return [g for g in results if g is not None]

    def shutdown(self) -> None:
        """Close and kill every worker."""
        while self._workers:
            self._stop(self._workers.pop())

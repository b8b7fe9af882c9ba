"""The rollout pool: N rollout worker actors behind one `generate` call, elastic between calls.

- Requests are split into contiguous shards, one per ready worker; results come back in request order,
  each request answered exactly once (a shard's result is used only from the worker it was last sent to).
- A worker that dies mid-call (`RayActorError`) or does not answer a shard of k requests within
  k * `pool.call_timeout_s` of starting it (a hung engine, a stopped process, a lost node) is killed and
  replaced; its shards go to the surviving workers (or to the replacement once it is up), up to
  `pool.max_attempts` tries per request. Each such fault is a log line naming the worker and a count in
  `take_faults()`, which the driver puts in the step's metrics row (README, "Reliability").
- Every worker loads the current adapter before any work: a new worker's first actor task is the
  adapter load, and Ray runs one caller's tasks on an actor in submission order.
- `load_adapter` waits for the workers that are up, each for at most `pool.load_timeout_s`; one that
  does not switch in time is replaced. One that refuses the adapter keeps serving the previous one (the
  engines add the new adapter before removing the old), every worker is put back on the previous adapter,
  and `AdapterLoadError` says why.
- `resize(n)` adds or removes workers between calls. A worker still starting (or waiting for resources
  the cluster does not have yet) is not waited for: the load is queued behind its start-up, and it takes
  work once its last queued load has finished.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from learner.batch import contiguous_shards
from rollout.config import RolloutConfig, SamplingConfig
from rollout.contracts import RolloutGroup, RolloutRequest
from rollout.knowledge import KnowledgeBase
from rollout.worker import RolloutWorker
from services.cluster.fault_log import FaultLog
from services.config import PoolConfig

FAULT_KINDS = ("worker_death", "worker_timeout", "load_timeout", "load_refusal")


class AdapterLoadError(RuntimeError):
    """Workers refused an adapter; every worker still serves the previous one."""


@dataclass(eq=False)
class _Worker:
    handle: Any  # ActorHandle[RolloutWorker]
    ready: ray.ObjectRef[Any]  # resolves once the engine is up and the current adapter is loaded
    serial: int
    where: ray.ObjectRef[Any]  # "pid P on node ..." once the actor is up (for log lines)

    def name(self) -> str:
        done, _ = ray.wait([self.where], timeout=0)
        if done:
            with contextlib.suppress(RayActorError, RayTaskError):
                return f"rollout worker {self.serial} ({ray.get(self.where)})"
        return f"rollout worker {self.serial} (not started)"


@dataclass(eq=False)
class _Shard:
    worker: _Worker
    indices: list[int]
    budget_s: float
    started: float | None  # when it reached the head of its worker's queue (time.monotonic())


@dataclass
class _InFlight:
    """One `generate` call's shards. An actor runs one call at a time in submission order, so a shard's
    clock starts when the shard before it on the same worker has finished, not when it was sent."""

    shards: dict[ray.ObjectRef[Any], _Shard] = field(default_factory=dict)
    queues: dict[int, list[ray.ObjectRef[Any]]] = field(default_factory=dict)  # by worker serial

    def add(self, ref: ray.ObjectRef[Any], worker: _Worker, indices: list[int], budget_s: float) -> None:
        queue = self.queues.setdefault(worker.serial, [])
        self.shards[ref] = _Shard(worker, indices, budget_s, None if queue else time.monotonic())
        queue.append(ref)

    def pop(self, ref: ray.ObjectRef[Any]) -> _Shard:
        shard = self.shards.pop(ref)
        queue = self.queues[shard.worker.serial]
        queue.remove(ref)
        if queue and self.shards[queue[0]].started is None:
            self.shards[queue[0]].started = time.monotonic()
        if not queue:
            del self.queues[shard.worker.serial]
        return shard

    def drop(self, worker: _Worker) -> list[int]:
        """Forget every shard sent to `worker` (running and queued); returns their request indices."""
        return [i for ref in list(self.queues.get(worker.serial, [])) for i in self.pop(ref).indices]

    def _heads(self) -> list[_Shard]:
        return [self.shards[q[0]] for q in self.queues.values()]

    def next_deadline(self) -> float:
        return min(s.started + s.budget_s for s in self._heads() if s.started is not None)

    def expired(self, now: float) -> list[_Shard]:
        return [s for s in self._heads() if s.started is not None and now >= s.started + s.budget_s]


class RolloutPool:
    """N `RolloutWorker` actors sharing one model directory, one knowledge base and one adapter."""

    def __init__(self, model_dir: str | Path, config: RolloutConfig, pool: PoolConfig,
                 knowledge: KnowledgeBase | None = None, num_workers: int | None = None) -> None:
        self.model_dir = str(model_dir)
        self.config = config  # what every engine runs
        self.pool = pool  # how many, where, and their deadlines
        self.knowledge = knowledge
        self._knowledge_ref = ray.put(knowledge)
        self._adapter_version = 0
        self._adapter_ref: ray.ObjectRef[Any] | None = None  # None: the base model
        self._serials = itertools.count()
        self._workers: list[_Worker] = []
        # workers replaced after dying or hanging (tests read it: the fault landed mid-call)
        self.replaced = 0
        self.faults = FaultLog("rollout", FAULT_KINDS)
        self.last_serving: tuple[int, ...] = ()  # serial numbers of the workers that served the last call
        self.resize(pool.num_workers if num_workers is None else num_workers)

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
        """Block until every worker has started and loaded the current adapter, for at most `timeout` seconds
        (default pool.start_timeout_s; then TimeoutError). A worker that dies before it is up (its node was
        lost: Ray may place a replacement on a node it has not yet declared dead) is replaced; a failed
        start-up (bad model dir, bad adapter) raises."""
        limit = self.pool.start_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            refs = [w.ready for w in self._workers]
            done, starting = ray.wait(refs, num_returns=len(refs),
                                      timeout=max(deadline - time.monotonic(), 0.0))
            if len(self._settle(done)) == len(self._workers):
                return
            if starting and time.monotonic() >= deadline:
                raise TimeoutError(f"{len(starting)} of {len(self._workers)} rollout workers did not come "
                                   f"up within {limit:.0f} s; check that the cluster has room for them "
                                   "(pool.cpus_per_worker / gpus_per_worker) and read the workers' logs")

    def take_faults(self) -> dict[str, int]:
        """Faults since the last call, as metrics (`rollout/worker_timeouts`, ...; zeros included)."""
        return self.faults.take()

    # -- membership ------------------------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        serial = next(self._serials)
        options: dict[str, Any] = {"num_cpus": self.pool.cpus_per_worker}
        if self.pool.gpus_per_worker > 0:
            options["num_gpus"] = self.pool.gpus_per_worker
        if self.pool.scheduling == "spread":
            options["scheduling_strategy"] = "SPREAD"
        handle = RolloutWorker.options(**options).remote(  # type: ignore[attr-defined]
            self.model_dir, self.config, self._knowledge_ref, self.config.seed + serial)
        where = handle.where.remote()
        ready = handle.load_adapter.remote(self._adapter_ref)
        return _Worker(handle=handle, ready=ready, serial=serial, where=where)

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

    def _replace(self, dead: _Worker, kind: str, detail: str, requests: int = 0) -> None:
        """Kill `dead` (a no-op when it is dead; Ray also ends a stopped process) and start a worker in its
        place, which loads the current adapter first; logs and counts the fault once per worker."""
        if dead not in self._workers:
            return  # already replaced: another of its shards reported the same fault
        ray.kill(dead.handle)
        new = self._spawn()
        self._workers[self._workers.index(dead)] = new
        self.replaced += 1
        self.faults.record(kind, dead.name(),
                           f"{detail}; killed it, rollout worker {new.serial} starts in its "
                           f"place on adapter v{self._adapter_version}", requests)

    def _ready_workers(self) -> list[_Worker]:
        """Workers that are up; waits for the first one when none is (at most pool.start_timeout_s). A
        worker that died while starting is replaced; one that failed to start is a loud error (bad model
        dir, bad adapter)."""
        deadline = time.monotonic() + self.pool.start_timeout_s
        while True:
            refs = [w.ready for w in self._workers]
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            if not done:
                done, _ = ray.wait(refs, num_returns=1, timeout=max(deadline - time.monotonic(), 0.0))
            if not done:
                raise TimeoutError(f"none of the {len(refs)} rollout workers came up within "
                                   f"pool.start_timeout_s={self.pool.start_timeout_s:.0f} s; check that the "
                                   "cluster has room for a worker (pool.cpus_per_worker / gpus_per_worker) "
                                   "and read the workers' logs")
            ready = self._settle(done)
            if ready:
                return ready

    def _settle(self, done: list[ray.ObjectRef[Any]]) -> list[_Worker]:
        """The workers whose start-up (or adapter load) finished in `done` and succeeded. One that died
        without
        failing its own start-up (its node was lost, or it was killed, possibly before it ever ran) is
        replaced; a start-up that failed (bad model dir, bad adapter) raises."""
        finished, ready = set(done), []
        for w in [w for w in self._workers if w.ready in finished]:
            try:
                ray.get(w.ready)
                ready.append(w)
            except RayActorError as exc:
                if exc.actor_init_failed:
                    raise
                self._replace(w, "worker_death", f"died while starting ({type(exc).__name__})")
        return ready

    # -- work ------------------------------------------------------------------------------------------

    def load_adapter(self, version: int, artefact: Any) -> None:
        """Make adapter `version` live on every worker. `artefact`: an object ref of the learner's exported
        `LoraArtefact` (or an `AdapterSpec`), or such an object in memory (put into the object store once
        here); None with version 0 for the base model. Blocks until all that were up have switched (each
        for at most pool.load_timeout_s); raises AdapterLoadError, with every worker back on the
        previous adapter, when a worker refuses it."""
        artefact_ref = artefact if artefact is None or isinstance(artefact, ray.ObjectRef) else ray.put(artefact)  # noqa: E501
        if (version == 0) != (artefact_ref is None):
            raise ValueError(f"version {version} with artefact {artefact_ref}: version 0 has no artefact, "
                             f"versions >= 1 need one")
        previous = self._adapter_version, self._adapter_ref
        done, _ = ray.wait([w.ready for w in self._workers], num_returns=len(self._workers), timeout=0)
        finished = set(done)
        # wait for the workers that were up; one still starting (a new vLLM engine, or an actor waiting for
        # a node) would stall the step, and `_ready_workers` gives it work only once this load is done
        up = [w for w in self._workers if w.ready in finished]
        before = {w.serial: w.ready for w in up}
        self._adapter_version, self._adapter_ref = version, artefact_ref
        for w in self._workers:
            # chained behind the start-up task, so a starting worker also ends on this adapter
            w.ready = w.handle.load_adapter.remote(artefact_ref)
        loaded, refused = self._await_loads(up, version)
        if refused:
            self._roll_back(version, previous, refused, before)
        wrong = [v for v in loaded if v != version]
        if wrong:
            raise RuntimeError(f"workers report adapter versions {wrong} after loading {version}; the "
                               "artefact's version field disagrees with the version passed to load_adapter")

    def _await_loads(self, workers: list[_Worker], version: int) -> tuple[list[int], dict[int, str]]:
        """Wait for `workers`' pending loads; returns the versions they report and, by serial, the reason
        of each worker that refused. Dead workers and those past pool.load_timeout_s are replaced."""
        pending = {w.ready: w for w in workers}
        deadline = time.monotonic() + self.pool.load_timeout_s
        loaded: list[int] = []
        refused: dict[int, str] = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=len(pending),
                               timeout=max(deadline - time.monotonic(), 0.0))
            for ref in done:
                w = pending.pop(ref)
                try:
                    loaded.append(ray.get(ref))
                except RayActorError as exc:
                    self._replace(w, "worker_death",
                                  f"died loading adapter v{version} ({type(exc).__name__})")
                except RayTaskError as exc:
                    refused[w.serial] = str(exc.cause if exc.cause is not None else exc).splitlines()[-1]
                    self.faults.record("load_refusal", w.name(), refused[w.serial])
            if pending and time.monotonic() >= deadline:
                for w in pending.values():
                    self._replace(w, "load_timeout", f"did not switch to adapter v{version} within "
                                  f"pool.load_timeout_s={self.pool.load_timeout_s:g} s")
                pending.clear()
        return loaded, refused

    def _roll_back(self, version: int, previous: tuple[int, ray.ObjectRef[Any] | None],
                   refused: dict[int, str],
                   before: dict[int, ray.ObjectRef[Any]]) -> None:
        """Put every worker back on the previous adapter and raise AdapterLoadError."""
        self._adapter_version, self._adapter_ref = previous
        for w in self._workers:
            if w.serial in refused:
                w.ready = before[w.serial]  # its engine kept the previous adapter live
            else:  # it switched, or is still starting, or replaced one that hung: back to the previous one
                w.ready = w.handle.load_adapter.remote(previous[1])
        self._await_loads([w for w in self._workers if w.serial in before
                           and w.serial not in refused], previous[0])
        reason = next(iter(refused.values()))
        raise AdapterLoadError(
            f"adapter v{version} failed to load on rollout worker(s) {sorted(refused)}: {reason}. Every "
            f"worker serves adapter v{previous[0]} again (a load adds the new adapter before removing the "
            "old one). Common causes: the adapter's rank exceeds rollout.max_lora_rank, or it adapts "
            "modules the engine cannot (learner.mlae.target_modules).")

    def generate(self, requests: Sequence[RolloutRequest], n: int | None = None,
                 sampling: SamplingConfig | None = None) -> list[RolloutGroup]:
        """One group per request, in request order, each sampled by exactly one worker."""
        results: list[RolloutGroup | None] = [None] * len(requests)
        attempts = [0] * len(requests)
        flight = _InFlight()

        def submit(indices: Sequence[int]) -> None:
            workers = self._ready_workers()
            for worker, shard in zip(workers, contiguous_shards(len(indices), len(workers)), strict=False):
                idx = [indices[i] for i in shard]
                for i in idx:
                    attempts[i] += 1
                ref = worker.handle.generate.remote([requests[i] for i in idx], n, sampling)
                flight.add(ref, worker, idx, self.pool.call_timeout_s * len(idx))

        def retry(indices: list[int], cause: str) -> None:
            exhausted = [requests[i].prompt_id for i in indices if attempts[i] >= self.pool.max_attempts]
            if exhausted:
                raise RuntimeError(f"requests {exhausted[:5]} failed on {self.pool.max_attempts} workers in "
                                   f"a row (pool.max_attempts); last fault: {cause}")
            submit(indices)  # to the surviving workers (or the replacement once it is up)

        serving: set[int] = set()
        if requests:
            submit(list(range(len(requests))))
        while flight.shards:
            done, _ = ray.wait(list(flight.shards), num_returns=1,
                               timeout=max(flight.next_deadline() - time.monotonic(), 0.0))
            if not done:  # a worker's current shard is past its deadline: replace it, resend all it holds
                lost, who = self._replace_late(flight)
                if lost:
                    retry(lost, f"{', '.join(who)} timed out")
                continue
            shard = flight.pop(done[0])
            try:
                groups = ray.get(done[0])
            except RayActorError as exc:
                lost = [*shard.indices, *flight.drop(shard.worker)]  # its queued shards will never run either
                self._replace(shard.worker, "worker_death", f"died mid-call ({type(exc).__name__}); "
                              f"{len(lost)} requests sent to other workers", len(lost))
                retry(lost, f"{shard.worker.name()} died: {exc}")
                continue
            serving.add(shard.worker.serial)
            for i, group in zip(shard.indices, groups, strict=True):
                if results[i] is not None:
                    raise RuntimeError(f"request {requests[i].prompt_id} answered twice (a RolloutPool bug)")
                results[i] = group
        self.last_serving = tuple(sorted(serving))
        missing = [requests[i].prompt_id for i, g in enumerate(results) if g is None]
        if missing:
            raise RuntimeError(f"rollout pool lost requests {missing[:5]}; this is a bug in RolloutPool")
        return [g for g in results if g is not None]

    def _replace_late(self, flight: _InFlight) -> tuple[list[int], list[str]]:
        """Replace every worker whose current shard is past its deadline; the requests it held (to resend)
        and the workers' names."""
        lost: list[int] = []
        who: list[str] = []
        for late in flight.expired(time.monotonic()):
            dropped = flight.drop(late.worker)
            self._replace(late.worker, "worker_timeout",
                          f"did not answer {len(late.indices)} requests within {late.budget_s:g} s "
                          f"(pool.call_timeout_s={self.pool.call_timeout_s:g} per request); "
                          f"{len(dropped)} requests sent to other workers", len(dropped))
            lost += dropped
            who.append(late.worker.name())
        return lost, who

    def shutdown(self) -> None:
        """Close and kill every worker."""
        while self._workers:
            self._stop(self._workers.pop())

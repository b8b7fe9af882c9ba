"""Faults inside one driver's Ray session: a rollout worker hung mid-generate, an adapter the engines refuse,
the reward actor hung, a learner rank killed. Each returns its row of the bench's table (rows.py)."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.faults.helpers import wait_busy
from bench.faults.inputs import REWARD_BATCHES, adapter_artefact, seeded_requests
from bench.faults.rows import Row, requests_lost, row

PER_REQUEST_S = 2.0  # pool.call_timeout_s of the hung-worker row: a shard of 8 requests gets 16 s


def _cut_call(pool: Any, victim: int, sig: signal.Signals, reqs: list[Any], sampling: Any,
              kill: Callable[[], None] | None = None) -> tuple[list[Any], float, float]:
    """Generate `reqs` while `victim` gets `sig` mid-call (or `kill()` runs); returns the groups, the time of
    the fault and the time the call returned."""
    out: list[list[Any]] = []
    call = threading.Thread(target=lambda: out.append(pool.generate(reqs, n=4, sampling=sampling)))
    call.start()
    wait_busy(victim)
    t_fault = time.time()
    if kill is None:
        os.kill(victim, sig)
    else:
        kill()
    call.join(timeout=600)
    if not out:
        raise RuntimeError("generate did not return after the fault")
    return out[0], t_fault, time.time()


def rollout_faults(model: Path, adapters: dict[str, Path]) -> list[Row]:
    """A worker stopped mid-generate, then an adapter the engine refuses, on one pool of 2 vLLM workers."""
    import ray

    from rollout.config import RolloutConfig, SamplingConfig
    from services.cluster.rollout_pool import AdapterLoadError, RolloutPool
    from services.config import PoolConfig

    cfg = RolloutConfig(engine="vllm", max_model_len=512)
    pool_cfg = PoolConfig(cpus_per_worker=0.25, num_workers=2, call_timeout_s=PER_REQUEST_S)
    sampling = SamplingConfig(temperature=0.9, max_new_tokens=64, min_new_tokens=64)
    pool = RolloutPool(model, cfg, pool_cfg)
    rows = []
    try:
        pool.load_adapter(1, ray.put(adapter_artefact(adapters["v1"], version=1)))
        pool.wait_ready()
        reqs = seeded_requests(16)
        t = time.time()
        want = pool.generate(reqs, n=4, sampling=sampling)
        calm_s = time.time() - t
        pool.take_faults()
        victim = int(ray.get(pool.handles()[0].pid.remote()))
        got, t_fault, t_end = _cut_call(pool, victim, signal.SIGSTOP, reqs, sampling)
        event = next(e for e in pool.faults.events if e.kind == "worker_timeout")
        deadline = pool_cfg.call_timeout_s * 8
        rows.append(row("rollout worker hung",
                        "SIGSTOP to a vLLM worker mid-generate (16 requests, 2 workers)",
                        event.at - t_fault, t_end - event.at, requests_lost(reqs, want, got), 0,
                        f"killed and replaced; its 8 requests answered by the other worker; the call took "
                        f"{t_end - t:.1f} s against {calm_s:.1f} s without the fault", deadline_s=deadline,
                        within_deadline_plus_10s=event.at - t_fault <= deadline + 10.0))
        pool.wait_ready()
        greedy = SamplingConfig(temperature=0.0, max_new_tokens=8)
        before = pool.generate(reqs[:4], n=2, sampling=greedy)
        t = time.time()
        try:
            pool.load_adapter(2, ray.put(adapter_artefact(adapters["r16"], version=2)))
            raise RuntimeError("the rank-16 adapter was not refused")
        except AdapterLoadError as exc:
            detect, reason = time.time() - t, str(exc).split(": ", 1)[1].split(". Every")[0]
        after = pool.generate(reqs[:4], n=2, sampling=greedy)
        rows.append(row("adapter load fails",
                        "a rank-16 adapter for engines of max_lora_rank 8", detect, None,
                        requests_lost(reqs[:4], before, after), None,
                        f"AdapterLoadError ({reason}); both workers still serve "
                        "v1 (answers unchanged); the run stops, resumable from "
                        "its last checkpoint", previous_adapter_live=all(
                            g.adapter_version == 1 for g in after)))
    finally:
        pool.shutdown()
    return rows


def reward_hang() -> Row:
    """The reward actor SIGSTOPped before a batch: replaced from the state after the last batch it scored."""
    import ray

    from rewards import RewardConfig, RewardScorer, ScheduleConfig
    from services.cluster.reward_client import RewardClient

    cfg = RewardConfig(schedule=ScheduleConfig(window=4), call_timeout_s=3.0)
    reference = RewardScorer(cfg)
    want = [reference.score_batch(b, step=i) for i, b in enumerate(REWARD_BATCHES)]
    client = RewardClient(cfg)
    try:
        got = [client.score(b, i, 0.0) for i, b in enumerate(REWARD_BATCHES[:3])]
        victim = int(ray.get(client._actor.__ray_call__.remote(lambda self: os.getpid())))
        os.kill(victim, signal.SIGSTOP)
        t_fault = time.time()
        got.append(client.score(REWARD_BATCHES[3], 3, 0.0))
        t_end = time.time()
        got += [client.score(b, i, 0.0) for i, b in enumerate(REWARD_BATCHES[4:], start=4)]
        event = client.faults.events[-1]
        same = [g.groups == w.groups and g.schedule == w.schedule for g, w in zip(got, want, strict=True)]
    finally:
        client.kill()
    return row("reward actor hung", "SIGSTOP to the reward actor before a batch", event.at - t_fault,
               t_end - event.at, len(same) - sum(same), 0,
               "killed; a new actor restored from the state after the last batch scored it; tau and window "
               "identical to a fault-free scorer's", deadline_s=cfg.call_timeout_s)


def learner_rank(model: Path, manifest: Path, work: Path) -> Row:
    """Rank 1 of 2 SIGKILLed after step 2 of a short SFT run: the run stops (RunFailed), the other rank
    ended."""
    import ray

    from services.config import RunConfig
    from services.training import train_loop
    from services.training.handles import start_handles

    run_dir = work / "runs" / "rank"
    cfg = RunConfig.model_validate({
        "name": "rank", "output_dir": str(run_dir.parent),
        "model": {"path": str(model), "family": "qwen2_5_vl"},
        "data": {"manifest": str(manifest)},
        "stages": [{"name": "warmup", "kind": "sft", "steps": 4, "prompts_per_step": 2, "lr": 1e-3}],
        "rollout": {"engine": "hf", "max_model_len": 512},
        "pool": {"num_workers": 1, "cpus_per_worker": 0.25},
        "learner": {"num_ranks": 2, "cpus_per_rank": 0.25, "micro_batch_size": 4},
        "eval": {"at_start": False, "every": 0, "max_samples": 2, "overlays": 0},
        "checkpoint": {"every": 2}})
    live: dict[str, Any] = {}

    def start(c: Any, d: Path) -> Any:
        live["h"] = start_handles(c, d)
        return live["h"]

    def kill(step: int, _row: Row) -> None:
        if step == 2:
            rank = live["h"].learner._workers[1]
            os.kill(int(ray.get(rank.__ray_call__.remote(lambda self: os.getpid()))), signal.SIGKILL)
            live["t"] = time.time()

    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        train_loop.run(cfg, run_dir=run_dir, on_step=kill, start=start)
        raise RuntimeError("the run did not stop after a learner rank died")
    except train_loop.RunFailed as exc:
        stopped = time.time() - live["t"]
        message = str(exc)
    return row("learner rank killed",
               "SIGKILL to rank 1 of 2 after step 2 (checkpoint step-2)", stopped, None,
               0, 0, "the run stopped (its other rank killed, not left in a collective): "
               + message.split("; ", 1)[-1], printed=message)

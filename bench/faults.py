"""Faults survived with nothing lost (issue 21): for each fault, the time to detect it, the time to recover
(or to stop cleanly), the requests lost (must be 0) and the steps that must be run again.

Real components on this machine, the tiny Qwen2.5-VL model: vLLM rollout workers, the reward actor, the
DeepSpeed learner, `medground train` processes, and for the lost node a two-node Ray cluster (a head and a
second `ray start --address` node on this machine). Requests lost: requests unanswered, or answered
differently from the same call without the fault (every request carries its own sampling seed, so the
answers must be identical); for the driver kills: the resumed run's rewards, tau and loss against the
uninterrupted run's. The fault injection and cluster helpers are the fault tests' own
(tests/integration/fault_helpers.py, local_cluster.py, rollout_fixtures.py).

Writes bench/results/faults.json with the machine. Usage: python -m bench.faults [--only NAME ...]
(`make bench-faults`; ~15 min on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from fault_helpers import wait_busy  # noqa: E402

from bench import machine  # noqa: E402

OUT = machine.results_path("faults")
WORK = Path("runs") / "bench" / "faults"
PER_REQUEST_S = 2.0  # pool.call_timeout_s of the hung-worker row: a shard of 8 requests gets 16 s
Row = dict[str, Any]


def _row(fault: str, injected: str, detect_s: float | None, recover_s: float | None, requests_lost: int | None,
         steps_lost: int | None, outcome: str, deadline_s: float | None = None, **extra: Any) -> Row:
    return {"fault": fault, "injected": injected, "deadline_s": deadline_s, "detect_s": detect_s,
            "recover_s": recover_s, "requests_lost": requests_lost, "steps_lost": steps_lost, "outcome": outcome,
            **extra}


def _inputs() -> tuple[Path, Path, dict[str, Path]]:
    """The tiny model, a synthetic data set and three adapters (two of rank 8, one of rank 16)."""
    from rollout_fixtures import make_lora_adapter

    from services.data.synth import make_spec, write_dataset
    from services.models.tiny import build_model_dir

    model = WORK / "tiny-qwen2_5_vl"
    if not (model / "config.json").is_file():
        build_model_dir(model, "qwen2_5_vl", "tiny", seed=0)
    manifest = WORK / "data" / "manifest.jsonl"
    if not manifest.is_file():
        write_dataset(make_spec("demo", splits={"train": 24, "val": 4, "test": 0}), manifest.parent, seed=0,
                      manifest_name=manifest.name)
    adapters = {name: WORK / "adapters" / name for name in ("v1", "v2", "r16")}
    if not (adapters["v1"] / "adapter_config.json").is_file():
        make_lora_adapter(model, adapters["v1"], seed=1)
        make_lora_adapter(model, adapters["v2"], seed=2)
        _rank16(model, adapters["r16"])
    return model, manifest, adapters


def _rank16(model_dir: Path, out: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules=["q_proj", "v_proj"])).save_pretrained(out)


# ---------------------------------------------------------------------------------------------------------
# Faults inside one call: the rollout pool and the reward client.


def _requests(count: int) -> list[Any]:
    from rollout_fixtures import requests

    return [dataclasses.replace(r, seed=1000 + i) for i, r in enumerate(requests(count))]


def _lost(reqs: list[Any], want: list[Any], got: list[Any]) -> int:
    """Requests unanswered, answered twice, or answered differently from the fault-free call."""
    answered = {g.prompt_id: g for g in got}
    return len(reqs) - len(answered) + sum(answered[w.prompt_id].completions != w.completions for w in want
                                           if w.prompt_id in answered) + len(got) - len(answered)


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
    from rollout_fixtures import adapter_artefact

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
        reqs = _requests(16)
        t = time.time()
        want = pool.generate(reqs, n=4, sampling=sampling)
        calm_s = time.time() - t
        pool.take_faults()
        victim = int(ray.get(pool.handles()[0].pid.remote()))
        got, t_fault, t_end = _cut_call(pool, victim, signal.SIGSTOP, reqs, sampling)
        event = next(e for e in pool.faults.events if e.kind == "worker_timeout")
        deadline = pool_cfg.call_timeout_s * 8
        rows.append(_row("rollout worker hung", "SIGSTOP to a vLLM worker mid-generate (16 requests, 2 workers)",
                         event.at - t_fault, t_end - event.at, _lost(reqs, want, got), 0,
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
        rows.append(_row("adapter load fails", "a rank-16 adapter for engines of max_lora_rank 8", detect, None,
                         _lost(reqs[:4], before, after), None,
                         f"AdapterLoadError ({reason}); both workers still serve v1 (answers unchanged); the run "
                         f"stops, resumable from its last checkpoint", previous_adapter_live=all(
                             g.adapter_version == 1 for g in after)))
    finally:
        pool.shutdown()
    return rows


def reward_hang() -> Row:
    import ray
    from test_reward_actor import BATCHES

    from rewards import RewardConfig, RewardScorer, ScheduleConfig
    from services.cluster.reward_client import RewardClient

    cfg = RewardConfig(schedule=ScheduleConfig(window=4), call_timeout_s=3.0)
    reference = RewardScorer(cfg)
    want = [reference.score_batch(b, step=i) for i, b in enumerate(BATCHES)]
    client = RewardClient(cfg)
    try:
        got = [client.score(b, i, 0.0) for i, b in enumerate(BATCHES[:3])]
        victim = int(ray.get(client._actor.__ray_call__.remote(lambda self: os.getpid())))
        os.kill(victim, signal.SIGSTOP)
        t_fault = time.time()
        got.append(client.score(BATCHES[3], 3, 0.0))
        t_end = time.time()
        got += [client.score(b, i, 0.0) for i, b in enumerate(BATCHES[4:], start=4)]
        event = client.faults.events[-1]
        same = [g.groups == w.groups and g.schedule == w.schedule for g, w in zip(got, want, strict=True)]
    finally:
        client.kill()
    return _row("reward actor hung", "SIGSTOP to the reward actor before a batch", event.at - t_fault,
                t_end - event.at, len(same) - sum(same), 0,
                "killed; a new actor restored from the state after the last batch scored it; tau and window "
                "identical to a fault-free scorer's", deadline_s=cfg.call_timeout_s)


def learner_rank(model: Path, manifest: Path) -> Row:
    import ray

    from services.config import RunConfig
    from services.training import train_loop
    from services.training.handles import start_handles

    run_dir = WORK / "runs" / "rank"
    cfg = RunConfig.model_validate({
        "name": "rank", "output_dir": str(run_dir.parent), "model": {"path": str(model), "family": "qwen2_5_vl"},
        "data": {"manifest": str(manifest)},
        "stages": [{"name": "warmup", "kind": "sft", "steps": 4, "prompts_per_step": 2, "lr": 1e-3}],
        "rollout": {"engine": "hf", "max_model_len": 512}, "pool": {"num_workers": 1, "cpus_per_worker": 0.25},
        "learner": {"num_ranks": 2, "cpus_per_rank": 0.25, "micro_batch_size": 4},
        "eval": {"at_start": False, "every": 0, "max_samples": 2, "overlays": 0},
        "checkpoint": {"every": 2}})
    live: dict[str, Any] = {}

    def start(c: Any, d: Path) -> Any:
        live["h"] = start_handles(c, d)
        return live["h"]

    def kill(step: int, row: Row) -> None:
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
    return _row("learner rank killed", "SIGKILL to rank 1 of 2 after step 2 (checkpoint step-2)", stopped, None,
                0, 0, "the run stopped (its other rank killed, not left in a collective): "
                + message.split("; ", 1)[-1], printed=message)


# ---------------------------------------------------------------------------------------------------------


NAMES = ("rollout", "reward", "learner", "node", "driver")


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)


def table(rows: list[Row]) -> str:
    head = "| fault | deadline s | time to detect s | time to recover s | requests lost | steps lost |\n" \
           "|---|---|---|---|---|---|"
    return "\n".join([head, *[f"| {r['fault']} | {_fmt(r['deadline_s'])} | {_fmt(r['detect_s'])} | "
                              f"{_fmt(r['recover_s'])} | {_fmt(r['requests_lost'])} | {_fmt(r['steps_lost'])} |"
                              for r in rows]])


def main(argv: list[str] | None = None) -> Row:
    import logging

    import ray

    from bench._fault_runs import driver_kills, lost_node

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=NAMES, default=list(NAMES), help="which faults to run")
    parser.add_argument("--rows-out", type=Path, help=argparse.SUPPRESS)  # the lost-node child's rows
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    started, record = time.time(), machine.start()
    model, manifest, adapters = _inputs()
    rows: list[Row] = []
    if {"rollout", "reward", "learner"} & set(args.only):
        temp = machine.start_ray()
        try:
            if "rollout" in args.only:
                rows += rollout_faults(model, adapters)
            if "reward" in args.only:
                rows.append(reward_hang())
            if "learner" in args.only:
                rows.append(learner_rank(model, manifest))
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)
    if "node" in args.only and args.only != ["node"]:
        # its own process: a process keeps the auth token of the first Ray it joined, so after the local
        # Ray above it cannot join the two-node cluster's
        out = WORK / "node_rows.json"
        subprocess.run([sys.executable, "-m", "bench.faults", "--only", "node", "--rows-out", str(out)], check=True)
        rows += json.loads(out.read_text())
    elif "node" in args.only:
        rows.append(lost_node(model, _requests, _lost))
        if args.rows_out is not None:
            args.rows_out.write_text(json.dumps(rows))
            return {"rows": rows}
    if "driver" in args.only:
        rows += driver_kills(model, manifest, WORK / "driver")
    hung = next((r for r in rows if r["fault"] == "rollout worker hung"), None)
    result: Row = {
        "description": __doc__.split("\n\n")[0].replace("\n", " "), "rows": rows, "table": table(rows),
        "acceptance": {"requests_lost_all_zero": all(r["requests_lost"] == 0 for r in rows),
                       "hung_worker_detected_within_deadline_plus_10s": None if hung is None
                       else hung["within_deadline_plus_10s"]},
        "wall_s": time.time() - started, "machine": machine.finish(record)}
    machine.write_json(result, OUT)
    print(result["table"])
    print(f"wrote {OUT} ({result['wall_s'] / 60:.1f} min; {machine.describe(record)})")
    return result


if __name__ == "__main__":
    main()

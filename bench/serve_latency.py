"""Latency of one grounding request on the model a user serves: one client, requests one after another,
through `GroundingService` (the engine, prompt, parser and frame conversion a Serve replica runs, without
HTTP; the Serve proxy adds a few ms), on demo phantoms (112 px) with their own phrases, greedy.

The README's other latency numbers (bench/serve_load.py) are the tiny random model's under load; this is
the number to expect from `medground serve --run-dir runs/demo` with one user at a time.
Writes bench/results/serve_latency.json.
Usage: python -m bench.serve_latency [--model models/base-demo | --run-dir runs/demo] [--requests 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="models/base-demo", help="HF model directory (the demo's base)")
    parser.add_argument("--run-dir", default=None, help="a run instead (its model, adapter and knowledge)")
    parser.add_argument("--engine", default="vllm", choices=["vllm", "hf"])
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    from services.data.manifest import load_manifest
    from services.data.synth import make_spec, write_dataset
    from services.serve.config import ServeArgs
    from services.serve.core import GroundingService

    record = machine.start()
    with tempfile.TemporaryDirectory(prefix="mgs-lat-") as tmp:
        spec = make_spec("demo", splits={"train": 0, "val": args.requests + 3, "test": 0})
        path = write_dataset(spec, Path(tmp), seed=7, manifest_name="manifest.jsonl")
        manifest = load_manifest(path, report=lambda _: None)
        # a bare model gets the shipped knowledge, chosen from each phrase, as the demo run's prompts carry it
        chosen = ({"run_dir": args.run_dir} if args.run_dir else
                  {"model_path": args.model, "knowledge_dir": "deploy/knowledge", "max_new_tokens": 48})
        service = GroundingService(ServeArgs(**chosen, engine=args.engine))
        try:
            latencies, tokens, boxes = [], [], 0
            for i, r in enumerate(manifest.records):
                data = manifest.image_path(r).read_bytes()
                start = time.perf_counter()
                (result,) = service.ground([service.check(data, r.phrase)])
                if i >= 3:  # the first requests warm the engine up
                    latencies.append(time.perf_counter() - start)
                    tokens.append(len(service.worker.processor.tokenizer(result.text)["input_ids"]))
                    boxes += result.box is not None
        finally:
            service.close()
    q = np.percentile(latencies, [50, 99])
    result_row = {"setup": f"{args.run_dir or args.model}, engine {args.engine}, 1 client, sequential, "
                           f"demo phantoms 112 px, greedy, knowledge in the prompt, in-process "
                           f"GroundingService (no HTTP)",
                  "requests": len(latencies), "p50_ms": round(float(q[0]) * 1000, 1),
                  "p99_ms": round(float(q[1]) * 1000, 1),
                  "mean_ms": round(statistics.fmean(latencies) * 1000, 1),
                  "answer_tokens_mean": round(statistics.fmean(tokens), 1), "answers_with_a_box": boxes,
                  "machine": machine.describe(record), **machine.finish(record)}
    print(json.dumps({k: v for k, v in result_row.items() if k not in ("versions",)}, indent=1))
    machine.write_json(result_row, machine.results_path("serve_latency"))


if __name__ == "__main__":
    main()

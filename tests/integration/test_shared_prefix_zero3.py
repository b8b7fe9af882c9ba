"""The shared-prefix learner under DeepSpeed ZeRO-3 with 2 CPU ranks (gloo): groups sharded whole, the vision
tower gathered once per rank and step, and two GRPO steps (two updates each, a KL term, MLAE masks) equal
to the plain path's (metrics within 1e-5, adapter within 1e-5). Slow: four rank processes start DeepSpeed."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from learner.distributed import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORLD = 2


def _rank(rank: int, port: int, model_dir: str, shared: bool, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), DS_ACCELERATOR="cpu", LOCAL_RANK="0")
    import torch
    from learner_samples import group_samples

    from learner.batch import TrainBatch, shard
    from learner.config import LearnerConfig
    from learner.engine import LearnerEngine
    from learner.packing import shard_groups

    torch.set_num_threads(1)
    # Image groups only: a ZeRO-3 rank without images would skip the tower's gather (on either path).
    samples = [dataclasses.replace(s, sampling_logprobs=tuple([-2.0] * len(s.completion_ids)))
               for s in group_samples(Path(model_dir)) if s.pixel_values is not None]
    cfg = LearnerConfig(shared_prefix=shared, lr=1e-2, micro_batch_size=3, zero_stage=3, num_ranks=WORLD,
                        mlae={"p": 0.5}, grpo={"beta": 0.04, "updates_per_batch": 2})  # type: ignore[arg-type]
    torch.manual_seed(0)
    engine = LearnerEngine(model_dir, cfg, rank, WORLD)
    try:
        engine.begin_stage("grpo", cfg.lr)
        rows = []
        for version in (0, 1):
            mine = (shard_groups if shared else shard)(samples, WORLD)[rank]
            m = engine.grpo_step(TrainBatch(tuple(dataclasses.replace(s, adapter_version=version)
                                                  for s in mine)))
            rows.append([m.loss, m.kl, m.grad_norm, m.entropy, m.logprob_mismatch or 0.0])
            artefact = engine.export(version + 1)  # a collective under ZeRO-3: every rank calls
        if rank == 0:
            Path(out).write_text(json.dumps({"rows": rows, "adapter": {k: t.tolist() for k, t in
                                                                       artefact.tensors.items()}}))
    finally:
        engine.close()


def test_zero3_two_ranks_shared_prefix_equals_plain(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    import torch.multiprocessing as mp

    results = {}
    for shared in (False, True):
        out = tmp_path / f"shared_{shared}.json"
        mp.start_processes(_rank, args=(free_port(), str(tiny_model_dir), shared, str(out)), nprocs=WORLD,
                           join=True, start_method="spawn")
        results[shared] = json.loads(out.read_text())
    for plain, packed in zip(results[False]["rows"], results[True]["rows"], strict=True):
        assert packed == pytest.approx(plain, rel=1e-5, abs=1e-5)
    assert results[False]["rows"][1][1] > 0  # the KL term and the second update did work
    plain_adapter, packed_adapter = results[False]["adapter"], results[True]["adapter"]
    assert max(float((torch.tensor(plain_adapter[k]) - torch.tensor(packed_adapter[k])).abs().max())
               for k in plain_adapter) < 1e-5

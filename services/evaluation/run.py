"""`medground eval RUN`: a run's adapter on its held-out split, through the same prediction path as
training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.checkpointing import run_adapter
from services.cluster.startup import init_ray
from services.config import load_run_config
from services.evaluation import heldout


def evaluate_run(run_dir: Path, step: int | None, max_samples: int | None, address: str | None,
                 kl_samples: int = 0, *, split: str | None = None, samples: int | None = None,
                 pool: Any | None = None) -> tuple[dict[str, Any], Path]:
    """Held-out evaluation of a run's adapter (`medground eval`): the run's model, rollout settings, eval
    split and sampled evaluation, one rollout worker, the same prediction path as training. Returns (metrics,
    the predictions file under RUN_DIR/eval/: `cli-<label>.jsonl`, or `<label>-<split>.jsonl` for another
    `split` of the run's manifest). `samples` replaces eval.samples (k sampled completions per image);
    `pool`: rollout workers already up on the run's model and rollout config (a study's), lent, not shut
    down. `kl_samples` > 0 adds `kl_from_base` (services/evaluation/kl.py, in this process: that many
    completions per grounding record, of the split's first grounding records, as many as the evaluation
    reads, seeded by the run's seed). Raises ValueError when the split has no records."""
    import ray

    from learner.export import LoraArtefact
    from rollout.knowledge import load_knowledge
    from services.cluster.rollout_pool import RolloutPool
    from services.data.manifest import load_manifest

    cfg = load_run_config(run_dir)
    if samples is not None:
        cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"samples": samples})})
    adapter, label = run_adapter(run_dir, step)
    artefact = LoraArtefact.load(adapter)  # a clear error when the checkpoint or its adapter is missing
    manifest = load_manifest(cfg.data.manifest, on_bad_record=cfg.data.on_bad_record).with_sizes()
    name = split or cfg.data.eval_split
    records = manifest.select(split=name)[:max_samples or cfg.eval.max_samples]
    if not records:
        raise ValueError(f"the manifest {cfg.data.manifest} has no records in split {name!r}")
    if pool is None:
        init_ray(address)
    workers = pool if pool is not None else RolloutPool(cfg.model.path, cfg.rollout, cfg.pool,
                                                        load_knowledge(cfg.data.knowledge_dir), num_workers=1)
    try:
        workers.load_adapter(artefact.version, ray.put(artefact))
        workers.wait_ready()
        path = run_dir / "eval" / (f"cli-{label}.jsonl" if split is None else f"{label}-{split}.jsonl")
        row, _ = heldout.evaluate(workers, manifest, records, cfg, path)
    finally:
        if pool is None:
            workers.shutdown()
    metrics = {"adapter": str(adapter), "adapter_version": artefact.version, "records": len(records), **row}
    if kl_samples > 0:
        from services.evaluation.kl import kl_from_base

        metrics["kl_from_base"] = kl_from_base(run_dir, step=step, images=len(records), samples=kl_samples,
                                               seed=cfg.seed, split=name)
    path.with_suffix(".json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return metrics, path

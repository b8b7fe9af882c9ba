"""Start Ray for a run and call the driver: the code behind `medground train` and `medground demo`.

`ray job submit` runs `medground train CONFIG` on the cluster's head; there Ray is already up
(RAY_ADDRESS is set by the job), so `ray.init()` joins it. Locally, an embedded Ray is started with the
machine's CPUs and the environment CPU engines need, and shut down when the run ends, however it ends.

SIGTERM (systemd, Kubernetes, `ray job stop`) and Ctrl-C during `medground train`: the first lets the step
finish, writes a checkpoint of it and stops (exit 143, naming the checkpoint and the resume command); a
second stops at once. Either way the local Ray this process started is shut down (README, "Reliability").
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from services.config import ConfigError, RunConfig, load_config, load_run_config

# The one CPU environment: what every process of a local run needs (the driver and each Ray worker); tests
# and benchmarks import it, deploy/jobs/runtime_env_cpu.yaml sets the same on a cluster. The vLLM KV cache
# is not here: the engine sets it from rollout.kv_cache_gib (docs/environment.md).
CPU_ENV = {"DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "RAY_USAGE_STATS_ENABLED": "0"}


log = logging.getLogger(__name__)


def init_ray(address: str | None) -> bool:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a local Ray; True when this call started
    one (the caller then owns its shutdown)."""
    import ray

    if ray.is_initialized():
        return False
    if address is None and "RAY_ADDRESS" not in os.environ:
        for key, value in CPU_ENV.items():
            os.environ.setdefault(key, value)
        ray.init(include_dashboard=False, runtime_env={"env_vars": CPU_ENV},
                 log_to_driver=os.environ.get("MEDGROUND_RAY_LOGS", "0") == "1")
        return True
    ray.init(address=address or os.environ.get("RAY_ADDRESS"))
    return False


class GracefulStop:
    """SIGTERM and SIGINT handlers for the driver: the first signal asks for a stop at the next step
    boundary (`check`, the driver's on_step callback, raises StopRequested there), a second raises
    KeyboardInterrupt at once. Installed after ray.init, whose own SIGTERM handler exits on the spot."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():  # Python delivers signals to it only
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            raise KeyboardInterrupt(f"{name} received twice: stopping now, without a checkpoint of this step")
        self.requested = name
        log.warning("%s received: finishing this step, writing a checkpoint of it, then stopping "
                    "(send it again to stop at once)", name)

    def check(self, step: int, row: dict[str, Any]) -> None:
        from services.train_loop import StopRequested

        if self.requested is not None:
            raise StopRequested(f"{self.requested} received")


def train(config: Path | None, overrides: list[str], address: str | None, resume: Path | None) -> Path:
    """Load the config (a resumed run reads its own resolved config), start Ray, run the driver."""
    from services import train_loop

    if resume is not None:
        cfg = load_run_config(resume)
    else:
        if config is None:
            raise ValueError("give a CONFIG file, or --resume RUN_DIR to continue a run")
        cfg = load_config(config, overrides)
    check_family(cfg)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = init_ray(address)
    try:
        with GracefulStop() as stop:
            return train_loop.run(cfg, run_dir=resume, resume=resume is not None, on_step=stop.check)
    finally:
        if started:
            import ray

            ray.shutdown()


def check_family(cfg: RunConfig) -> None:
    """`model.family` must name the family of the model directory: train, eval and serve read the family
    from the directory's config.json (rollout.images.family_of), so a config that says otherwise would
    build or describe a different model than the one that runs."""
    from rollout.images import family_of

    path = Path(cfg.model.path)
    if not (path / "config.json").is_file():
        return  # nothing built yet: ensure_inputs builds model.family, or the driver names the missing model
    found = family_of(path)
    if found != cfg.model.family:
        raise ConfigError(f"model.family is {cfg.model.family!r} but {path / 'config.json'} holds a {found!r} "
                          f"model; set model.family: {found} (or --set model.family={found}), or point "
                          f"model.path at a {cfg.model.family} model")


DEMO_CONFIG = Path("deploy/configs/demo.yaml")


def ensure_inputs(cfg: RunConfig, preset: str, **knobs: Any) -> None:
    """Build the model and write the synthetic data set (preset `preset`, seed 0) that `cfg` names, each only
    when missing: what `make demo` and the benches need on a fresh machine. With `model.base`, the model is
    that recipe's pretrained base (rebuilt when the directory was built from another recipe); otherwise a
    random small model."""
    from services.data.synth import make_spec, write_dataset
    from services.tiny_model import build_model_dir

    model = Path(cfg.model.path)
    if cfg.model.base is not None:
        from services.pretrain import build_base, is_built, load_recipe

        recipe = load_recipe(cfg.model.base)
        if not is_built(recipe, model):
            print(f"building the pretrained base {cfg.model.base} into {model} (once; cached by its recipe)")
            build_base(recipe, model)
    elif not (model / "config.json").is_file():
        print(f"building the small random model in {model}")
        build_model_dir(model, cfg.model.family, "small", seed=0, min_pixels=cfg.rollout.min_pixels,
                        max_pixels=cfg.rollout.max_pixels)
    manifest = Path(cfg.data.manifest)
    if not manifest.is_file():
        print(f"writing synthetic {preset} images to {manifest.parent}")
        write_dataset(make_spec(preset, **knobs), manifest.parent, seed=0, manifest_name=manifest.name)


def demo(overrides: list[str]) -> dict[str, Any]:
    """Build the demo's base and data when missing, train, and summarise where everything is, with the
    held-out numbers at the start and the end of GRPO and their standard errors."""
    import time

    from services.metrics import read_metrics

    t0 = time.perf_counter()
    cfg = load_config(DEMO_CONFIG, overrides)
    ensure_inputs(cfg, "demo", splits={"train": 2000, "val": 200, "test": 0})
    run_dir = Path(cfg.output_dir) / cfg.name
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the demo always starts fresh
    train(DEMO_CONFIG, overrides, address=None, resume=None)
    rows = read_metrics(run_dir / "metrics.jsonl")
    evals = [r for r in rows if "eval/A@0.5" in r]
    summary = {"run": str(run_dir), "metrics": str(run_dir / "metrics.jsonl"), "plots": str(run_dir / "plots"),
               "adapter": str(run_dir / "adapter"), "samples": str(run_dir / "samples"),
               "held-out images": evals[-1].get("eval/n"),
               "A@0.3 start": _with_se(evals[0], "A@0.3"), "A@0.3 end": _with_se(evals[-1], "A@0.3"),
               "A@0.5 start": _with_se(evals[0], "A@0.5"), "A@0.5 end": _with_se(evals[-1], "A@0.5"),
               "A@0.8 start": _with_se(evals[0], "A@0.8"), "A@0.8 end": _with_se(evals[-1], "A@0.8"),
               "mIoU start": _with_se(evals[0], "mIoU", 3), "mIoU end": _with_se(evals[-1], "mIoU", 3),
               "centre-box A@0.5": rows[0].get("baseline/centre/A@0.5"),
               "centre-box mIoU": rows[0].get("baseline/centre/mIoU"),
               **_paired_changes(run_dir / "eval", evals[0]["step"], evals[-1]["step"]),
               "minutes": round((time.perf_counter() - t0) / 60, 1)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _paired_changes(eval_dir: Path, first: int, last: int) -> dict[str, str]:
    """'change A@0.5': '-4.0 ± 2.3' from the per-image predictions of two evaluations (the same images)."""
    from services.eval_metrics import paired_changes
    from services.evaluation import read_ious

    changes = paired_changes(read_ious(eval_dir / f"step-{first}.jsonl"), read_ious(eval_dir / f"step-{last}.jsonl"))
    digits = {"mIoU": 3}
    return {f"change {name}": f"{mean:+.{digits.get(name, 1)}f} ± {se:.{digits.get(name, 1)}f} (paired)"
            for name, (mean, se) in changes.items()}


def _with_se(row: dict[str, Any], metric: str, digits: int = 1) -> str:
    """'59.5 ± 3.5': a held-out metric and its standard error (services/eval_metrics.py)."""
    return f"{row[f'eval/{metric}']:.{digits}f} ± {row[f'eval/{metric}_se']:.{digits}f}"


def run_adapter(run_dir: Path, step: int | None) -> tuple[Path, str]:
    """The adapter directory of a run and its label: checkpoint `step`, else the final `adapter/`, else the
    latest complete checkpoint's (`medground eval` and `medground export` pick the same one)."""
    from services import checkpointing

    if step is not None:
        return run_dir / "checkpoints" / f"step-{step}" / "adapter", f"step-{step}"
    if (run_dir / "adapter").is_dir():
        return run_dir / "adapter", "final"
    try:
        latest = checkpointing.latest_checkpoint(run_dir)
    except FileNotFoundError:
        raise FileNotFoundError(f"{run_dir} has no adapter/ and no checkpoint yet; train first") from None
    return latest / "adapter", latest.name


def evaluate_run(run_dir: Path, step: int | None, max_samples: int | None,
                 address: str | None) -> tuple[dict[str, Any], Path]:
    """Greedy held-out evaluation of a run's adapter (`medground eval`): the run's model, rollout settings
    and eval split, one rollout worker, the same prediction path as training. Returns (metrics, the
    predictions file under RUN_DIR/eval/)."""
    import ray

    from learner.export import LoraArtefact
    from rollout.knowledge import load_knowledge
    from services import evaluation
    from services.data.manifest import load_manifest
    from services.rollout_pool import RolloutPool

    cfg = load_run_config(run_dir)
    adapter, label = run_adapter(run_dir, step)
    artefact = LoraArtefact.load(adapter)  # a clear error when the checkpoint or its adapter is missing
    manifest = load_manifest(cfg.data.manifest, on_bad_record=cfg.data.on_bad_record).with_sizes()
    records = manifest.select(split=cfg.data.eval_split)[:max_samples or cfg.eval.max_samples]
    if not records:
        raise ValueError(f"the manifest {cfg.data.manifest} has no records in split {cfg.data.eval_split!r}")
    init_ray(address)
    pool = RolloutPool(cfg.model.path, cfg.rollout, cfg.pool, load_knowledge(cfg.data.knowledge_dir), num_workers=1)
    try:
        pool.load_adapter(artefact.version, ray.put(artefact))
        pool.wait_ready()
        predictions = evaluation.predict(pool, manifest, records, cfg.rollout.sampling.max_new_tokens)
    finally:
        pool.shutdown()
    metrics = {"adapter": str(adapter), "adapter_version": artefact.version, "records": len(records),
               **evaluation.report(predictions, cfg.reward.label_match)}
    path = evaluation.write_predictions(predictions, run_dir / "eval" / f"cli-{label}.jsonl")
    path.with_suffix(".json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return metrics, path

"""Start Ray for a run and call the driver: the code behind `medground train` (and `medground demo`,
services/training/demo.py); the inputs a config names, built when missing (`ensure_inputs`).

Ray is joined or started by services/cluster/startup.py; a local Ray this process started is shut down when
the run ends, however it ends.

SIGTERM (systemd, Kubernetes, `ray job stop`) and Ctrl-C during `medground train`: the first lets the step
finish, writes a checkpoint of it and stops (exit 143, naming the checkpoint and the resume command); a
second stops at once. Either way the local Ray this process started is shut down (README, "Reliability").
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from services.cluster.startup import init_ray
from services.config import ConfigError, RunConfig, load_config, load_run_config

log = logging.getLogger(__name__)


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
        from services.training.train_loop import StopRequested

        if self.requested is not None:
            raise StopRequested(f"{self.requested} received")


def train(config: Path | None, overrides: list[str], address: str | None, resume: Path | None) -> Path:
    """Load the config (a resumed run reads its own resolved config), start Ray, run the driver."""
    from services.training import train_loop

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
        raise ConfigError(f"model.family is {cfg.model.family!r} but {path / 'config.json'} holds a "
                          f"{found!r} model; set model.family: {found} (or --set model.family={found}), or "
                          f"point model.path at a {cfg.model.family} model")


def ensure_inputs(cfg: RunConfig, preset: str, **knobs: Any) -> None:
    """Build the model and write the synthetic data set (preset `preset`, seed 0) that `cfg` names, each only
    when missing: what `make demo` and the benches need on a fresh machine. With `model.base`, the model is
    that recipe's pretrained base (rebuilt when the directory was built from another recipe); otherwise a
    random small model."""
    from services.data.synth import make_spec, write_dataset
    from services.models.tiny import build_model_dir

    model = Path(cfg.model.path)
    if cfg.model.base is not None:
        from services.models.pretrain import build_base, is_built, load_recipe

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



"""`medground`: the operator's command line (typer).

Commands that are not built yet say so, name the issue that builds them, and exit with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from services.config import ConfigError, load_config

app = typer.Typer(help="Medical visual grounding with RL on Ray.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Synthesise, convert and inspect datasets.", no_args_is_help=True)
scale_app = typer.Typer(help="Resize parts of a running training job.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(scale_app, name="scale")

Overrides = Annotated[list[str] | None, typer.Option("--set", help="Override a field: --set learner.lr=1e-5")]
Address = Annotated[str | None, typer.Option("--address", envvar="MEDGROUND_RAY_ADDRESS",
                                             help="Ray cluster address (default: a local Ray).")]


def _not_built(what: str, issue: int) -> NoReturn:
    typer.echo(f"medground {what}: not built yet (tracked in issue {issue}).", err=True)
    raise typer.Exit(2)


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@app.command("init-model")
def init_model(
    out: Annotated[Path, typer.Argument(help="Directory to write the model into.")],
    tiny: Annotated[bool, typer.Option("--tiny", help="Build a small random model (the only kind so far).")] = False,
    family: Annotated[str, typer.Option(help="qwen2_5_vl (boxes in input pixels) or qwen2_vl (0..1000).")] = "qwen2_5_vl",
    size: Annotated[str, typer.Option(help="tiny (~0.7M params, tests) or small (a few M, the demo).")] = "tiny",
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a random Qwen-VL model with an offline tokenizer and processor (nothing is downloaded)."""
    if not tiny:
        _fail("only random models can be built offline: pass --tiny (and --size small for the demo model)")
    if family not in ("qwen2_5_vl", "qwen2_vl"):
        _fail(f"--family {family!r} is unknown; choose qwen2_5_vl or qwen2_vl")
    if size not in ("tiny", "small"):
        _fail(f"--size {size!r} is unknown; choose tiny or small")
    from services.tiny_model import build_model_dir, parameter_count

    path = build_model_dir(out, family=family, size=size, seed=seed)  # type: ignore[arg-type]
    typer.echo(f"wrote {path} ({family}, {size}, {parameter_count(path):,} parameters)")


@app.command("validate-config")
def validate_config(
    config: Annotated[Path, typer.Argument(help="YAML run config, e.g. deploy/configs/demo.yaml")],
    overrides: Overrides = None,
    show: Annotated[bool, typer.Option(help="Print the resolved config as JSON.")] = False,
) -> None:
    """Validate a run config (with overrides) and report every problem with its fix."""
    try:
        cfg = load_config(config, overrides or [])
    except ConfigError as exc:
        _fail(str(exc))
    if show:
        typer.echo(cfg.model_dump_json(indent=2))
    typer.echo(f"{config}: valid ({len(cfg.stages)} stages: {', '.join(s.name for s in cfg.stages)})")


@app.command()
def train(config: Annotated[Path, typer.Argument()], overrides: Overrides = None, address: Address = None,
          resume: Annotated[str | None, typer.Option(help="Run directory to resume.")] = None) -> None:
    """Run a training job (local Ray by default; `ray job submit` runs this same command)."""
    _not_built("train", 8)


@app.command()
def demo() -> None:
    """The main job: a short SFT + GRPO run on the small tiny model and synthetic phantoms."""
    _not_built("demo (`make demo`)", 8)


@app.command("eval")
def evaluate(run: Annotated[str, typer.Argument()]) -> None:
    """Evaluate a run's adapter on the held-out split (greedy)."""
    _not_built("eval", 8)


@app.command()
def serve(address: Address = None) -> None:
    """Serve grounding inference on Ray Serve."""
    _not_built("serve", 10)


@app.command()
def status(address: Address = None) -> None:
    """Step, tau, workers, throughput and adapter version of a running job."""
    _not_built("status", 10)


@app.command()
def submit(address: Address = None) -> None:
    """Submit a training job to a Ray cluster (wraps `ray job submit`)."""
    _not_built("submit", 10)


@scale_app.command("rollout")
def scale_rollout(n: Annotated[int, typer.Argument(help="Target number of rollout workers.")],
                  address: Address = None) -> None:
    """Resize the rollout pool of a running job between steps."""
    _not_built("scale rollout", 10)


@data_app.command("synth")
def data_synth() -> None:
    """Write synthetic chest-radiograph phantoms and a manifest."""
    _not_built("data synth", 3)


@data_app.command("convert")
def data_convert() -> None:
    """Convert a published dataset format into a medground manifest."""
    _not_built("data convert", 3)


@data_app.command("inspect")
def data_inspect() -> None:
    """Counts per task, split and size bucket, and a contact sheet with boxes."""
    _not_built("data inspect", 3)


def main() -> None:
    app(prog_name="medground")


if __name__ == "__main__":
    sys.exit(main())

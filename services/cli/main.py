"""`medground`: the operator's command line (typer).

Errors an operator can fix are printed as one line that names the problem and the fix, with exit status 1.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperOption

from services.config import ConfigError, RunConfig, load_config
from services.config_checks import preset_notes, shadowed_overrides, stage_reward_notes


def _flag_display_type(self: TyperOption, ctx: Any) -> str | None:
    """A plain flag takes no value, so its help shows no type (typer 0.29 prints `<bool>` beside flags)."""
    return None if self.is_flag else _typed_display(self, ctx)


_typed_display = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_display_type  # type: ignore[method-assign]

app = typer.Typer(help="Medical visual grounding with RL on Ray.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
scale_app = typer.Typer(help="Resize parts of a running training job.", no_args_is_help=True)
app.add_typer(scale_app, name="scale")

Overrides = Annotated[list[str] | None, typer.Option(
    "--set", metavar="KEY=VALUE", help="Override a field: --set learner.lr=1e-5 (a stage's own field, e.g. "
    "stages.0.lr, wins over the run's; a note says so)")]
Address = Annotated[str | None, typer.Option("--address", envvar="MEDGROUND_RAY_ADDRESS",
                                             help="Ray cluster address (default: a local Ray).")]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"medground {version('medground')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            typer.echo("medground (not installed; run `make setup`)")
        raise typer.Exit(0)


@app.callback()
def _root(show_version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                     help="Print the version and exit.")] = False) -> None:
    """Medical visual grounding with RL on Ray."""


def _notes(cfg: RunConfig, overrides: list[str] | None) -> None:
    """On stderr: each --set that a stage's own field overrides, a loss preset some of whose fields are set
    otherwise, a stage reward section that replaces the run's (services/config_checks.py)."""
    given = overrides or []
    for note in [*shadowed_overrides(list(cfg.stages), given), *preset_notes(cfg),
                 *stage_reward_notes(cfg, given)]:
        typer.echo(note, err=True)


@app.command("init-model")
def init_model(
    out: Annotated[Path, typer.Argument(help="Directory to write the model into.")],
    tiny: Annotated[bool, typer.Option("--tiny",
                                       help="A small random model (--size tiny or small).")] = False,
    shape: Annotated[str | None, typer.Option(help="A released checkpoint's widths, random weights: "
                                              "qwen2_5_vl_3b | qwen2_5_vl_7b | qwen3_vl_2b | qwen3_vl_4b | "
                                              "qwen3_vl_8b (sets the family).")] = None,
    family: Annotated[str | None,
                      typer.Option(help="For --tiny: qwen2_5_vl (boxes in input pixels), qwen2_vl or "
                                               "qwen3_vl (0..1000).")] = None,
    size: Annotated[str,
                    typer.Option(help="For --tiny: tiny (~0.7M params, tests) or small (a few M, "
                                      "the demo).")] = "tiny",
    layers: Annotated[int | None,
                      typer.Option(help="Keep only the first N text layers (CPU work at real "
                                        "width).")] = None,
    vision_layers: Annotated[int | None, typer.Option(help="Keep only the first N vision blocks.")] = None,
    tokenizer: Annotated[str | None,
                         typer.Option(help="bpe (1,024 tokens trained here; --tiny's default) or "
                                           "qwen (the real Qwen tokenizer; --shape's only choice).")] = None,
    dtype: Annotated[str, typer.Option(help="float32 (CPU) or bfloat16.")] = "float32",
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a random Qwen-VL model with an offline tokenizer and processor (nothing is downloaded)."""
    from services.models.shapes import REAL_SHAPES

    if tiny == (shape is not None):
        _fail("only random models can be built offline: pass --tiny (small CPU models) or --shape NAME (a "
              "released checkpoint's widths), not both")
    if shape is not None and shape not in REAL_SHAPES:
        _fail(f"--shape {shape!r} is unknown; choose one of {', '.join(REAL_SHAPES)}")
    if shape is not None and family is not None and not shape.startswith(family):
        _fail(f"--shape {shape} is a {shape.rsplit('_', 1)[0]} model; drop --family {family}")
    if family is not None and family not in ("qwen2_5_vl", "qwen2_vl", "qwen3_vl"):
        _fail(f"--family {family!r} is unknown; choose qwen2_5_vl, qwen2_vl or qwen3_vl")
    if size not in ("tiny", "small"):
        _fail(f"--size {size!r} is unknown; choose tiny or small")
    if tokenizer not in (None, "bpe", "qwen"):
        _fail(f"--tokenizer {tokenizer!r} is unknown; choose bpe or qwen")
    if dtype not in ("float32", "bfloat16"):
        _fail(f"--dtype {dtype!r} is unknown; choose float32 or bfloat16")
    from services.models.tiny import build_model_dir, parameter_count

    try:
        path = build_model_dir(out, family=family or "qwen2_5_vl", size=size, seed=seed,  # type: ignore[arg-type]
                               shape=shape, layers=layers, vision_layers=vision_layers,  # type: ignore[arg-type]
                               tokenizer=tokenizer, dtype=dtype)  # type: ignore[arg-type]
    except (ValueError, ImportError) as exc:
        _fail(str(exc))
    built = json.loads((path / "medground_model.json").read_text())
    typer.echo(f"wrote {path} ({built['family']}, {built['shape']}, {built['layers']} text layers, "
               f"{built['vision_layers']} vision blocks, {built['tokenizer']} tokenizer, "
               f"{parameter_count(path):,} parameters)")


@app.command("pretrain-base")
def pretrain_base(
    recipe: Annotated[Path, typer.Argument(help="Base recipe, e.g. deploy/configs/bases/study.yaml")],
    out: Annotated[Path,
                   typer.Argument(help="Model directory to build (reused when built from this recipe).")],
    force: Annotated[bool, typer.Option("--force",
                                        help="Rebuild even when OUT holds this recipe's base.")] = False,
) -> None:
    """Train a small Qwen-VL in full on synthetic grounding: the pretrained base of the CPU miniature."""
    import json

    from services.models.pretrain import REPORT_FILE, build_base, is_built, load_recipe

    try:
        loaded = load_recipe(recipe)
    except ConfigError as exc:
        _fail(str(exc))
    if force or not is_built(loaded, out):
        build_base(loaded, out)
    report = json.loads((out / REPORT_FILE).read_text())
    held, sampled = report["held_out"], report["sampled_T0.9"]
    typer.echo(f"{out}: base {report['digest']} ({report['parameters']:,} parameters, built in "
               f"{report['build_s'] / 60:.1f} min): held-out A@0.3 {held['A@0.3']:.1f} %, A@0.5 "
               f"{held['A@0.5']:.1f} ± {held['A@0.5_se']:.1f} %, A@0.8 {held['A@0.8']:.1f} %, mIoU "
               f"{held['mIoU']:.3f}; samples at T = 0.9: {sampled['parse_pct']:.0f} % parse, entropy at T = "
               f"1 {report['entropy_T1_nats']['answer_tokens']:.2f} nats/token")


@app.command("validate-config")
def validate_config(
    config: Annotated[Path, typer.Argument(help="YAML run config, e.g. deploy/configs/demo.yaml")],
    overrides: Overrides = None,
    show: Annotated[bool, typer.Option("--show", help="Print the resolved config as JSON (stdout holds only "
                                       "the JSON; the verdict goes to stderr).")] = False,
) -> None:
    """Validate a run config (with overrides) and report every problem with its fix."""
    try:
        cfg = load_config(config, overrides or [])
    except ConfigError as exc:
        _fail(str(exc))
    _notes(cfg, overrides)
    if show:  # stdout holds the JSON alone (pipe it to jq); the verdict goes to stderr
        typer.echo(cfg.model_dump_json(indent=2))
    n = len(cfg.stages)
    typer.echo(f"{config}: valid ({n} stage{'' if n == 1 else 's'}: {', '.join(s.name for s in cfg.stages)})",
               err=show)


@app.command()
def train(config: Annotated[Path | None, typer.Argument(help="YAML run config (omit with --resume).")] = None,
          overrides: Overrides = None, address: Address = None,
          resume: Annotated[Path | None,
                            typer.Option(help="Run directory to resume (runs/<name>).")] = None) -> None:
    """Run a training job (local Ray by default; `ray job submit` runs this same command). SIGTERM or Ctrl-C
    finishes the step, checkpoints it and stops (a second one stops at once)."""
    from services.training.launch import train as run_training
    from services.training.trackers import TrackerUnreachable
    from services.training.train_loop import RunFailed

    try:
        if config is not None:
            _notes(load_config(config, overrides or []), overrides)
        run_dir = run_training(config, overrides or [], address, resume)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, TrackerUnreachable) as exc:
        _fail(str(exc))
    except RunFailed as exc:
        _stopped(exc)
    typer.echo(f"run finished: {run_dir}")


def _stopped(exc: BaseException) -> NoReturn:
    """A run that stopped: its message (the step, the last checkpoint, the resume command); exit 143 (128 +
    SIGTERM) when a signal stopped it, else 1."""
    from services.training.train_loop import StopRequested

    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(143 if isinstance(exc.__cause__, StopRequested) else 1)


@app.command()
def demo(overrides: Overrides = None) -> None:
    """The main job: GRPO with the MedLoc-R1 schedule on a pretrained CPU base and synthetic phantoms. The
    first run builds the base (about 3 min on 2 cores; cached under models/); results land in runs/demo."""
    from services.training.demo import DEMO_CONFIG
    from services.training.demo import demo as run_demo
    from services.training.trackers import TrackerUnreachable
    from services.training.train_loop import RunFailed

    try:
        _notes(load_config(DEMO_CONFIG, overrides or []), overrides)
        summary = run_demo(overrides or [])
    except (ConfigError, FileNotFoundError, ValueError, TrackerUnreachable) as exc:
        _fail(str(exc))
    except RunFailed as exc:
        _stopped(exc)
    typer.echo("\ndemo finished:")
    for key, value in summary.items():
        typer.echo(f"  {key:18s} {value if not isinstance(value, float) else round(value, 3)}")


@app.command("eval")
def evaluate(run: Annotated[Path, typer.Argument(help="Run directory (runs/<name>).")],
             step: Annotated[int | None,
                             typer.Option(help="Checkpoint step (default: the final adapter, else "
                                                      "the latest checkpoint).")] = None,
             max_samples: Annotated[int | None, typer.Option(help="Held-out records (default: the run's "
                                                             "eval.max_samples).")] = None,
             out: Annotated[Path | None, typer.Option(
                 help="Also write the predictions to OUT (JSONL) and the metrics to OUT with a .json suffix, "
                      "e.g. /tmp/eval.jsonl (the run keeps its eval/cli-*.json(l)).")] = None,
             kl_samples: Annotated[int, typer.Option(
                 help="Also estimate the forward KL from the base (nats) with K completions per held-out "
                      "grounding record at temperature 1, in process (transformers); 0: not computed.",
                 metavar="K")] = 0,
             address: Address = None) -> None:
    """Evaluate a run's adapter on the held-out split (greedy), as the training loop does."""
    from services.evaluation.run import evaluate_run
    from services.training.trackers import TrackerUnreachable, attach, log_evaluation

    if out is not None:
        out = _writable_out(out)
    if kl_samples < 0:
        _fail(f"--kl-samples {kl_samples} is negative; give 0 (no KL) or the completions per record")
    try:
        trackers = attach(run)  # the run's tracker runs get the result too (a dead tracker: before the work)
        try:
            metrics, path = evaluate_run(run, step, max_samples, address, kl_samples)
            log_evaluation(trackers, metrics, path, path.stem.removeprefix("cli-"))
        finally:
            trackers.close(None)
    except (ConfigError, FileNotFoundError, ValueError, TrackerUnreachable) as exc:
        _fail(str(exc))
    rows = {k: v for k, v in metrics.items() if k != "kl_from_base"}
    rows |= {f"kl_from_base/{k}": v for k, v in metrics.get("kl_from_base", {}).items()}
    for key, value in sorted(rows.items()):
        typer.echo(f"  {key:28s} {round(value, 4) if isinstance(value, float) else value}")
    typer.echo(f"predictions: {path}")
    if out is not None:
        import shutil

        shutil.copyfile(path, out)
        shutil.copyfile(path.with_suffix(".json"), out.with_suffix(".json"))
        typer.echo(f"written: {out} and {out.with_suffix('.json')}")


def _writable_out(out: Path) -> Path:
    """`eval --out`: a .jsonl path whose folder exists (or can be made) and is writable, checked first."""
    if out.suffix != ".jsonl":
        _fail(f"--out {out} must end in .jsonl (the predictions; the metrics go beside it as .json)")
    if out.is_dir():
        _fail(f"--out {out} is a directory; name a file in it, e.g. {out / 'eval.jsonl'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.parent / f".medground-write-test-{out.name}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        _fail(f"--out {out}: cannot write in {out.parent} ({exc.strerror}); choose a writable folder")
    return out


@app.command()
def export(run: Annotated[Path, typer.Argument(help="Run directory (runs/<name>).")],
           merged: Annotated[Path, typer.Option("--merged", help="Directory to write the merged model into "
                                                "(the adapter folded into the base weights).")],
           step: Annotated[int | None,
                           typer.Option(help="Checkpoint step (default: the final adapter, else the "
                                                    "latest checkpoint).")] = None) -> None:
    """Merge a run's adapter into its base model: a plain model directory that transformers and vLLM load
    without LoRA (faster decoding; what deployment tools expect)."""
    from services.models.merge import export_merged
    from services.training.trackers import TrackerUnreachable, attach

    try:
        trackers = attach(run)
        try:
            info = export_merged(run, merged, step)
            trackers.artifact(merged, "merged", "merged")  # with logging.log_merged; registered when asked
        finally:
            trackers.close(None)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, TrackerUnreachable) as exc:
        _fail(str(exc))
    source = info["merged_from"]
    typer.echo(f"wrote {merged}: {source['base_model']} + adapter v{source['adapter_version']} "
               f"({source['checkpoint']}), {info['dtype']}")


@app.command()
def serve(
    model: Annotated[Path | None, typer.Option(help="HF model directory (or give --run-dir).")] = None,
    run_dir: Annotated[Path | None,
                       typer.Option(help="Training run (runs/NAME): model, rollout settings, and "
                                                 "its checkpoints watched for newer adapters.")] = None,
    adapter: Annotated[Path | None,
                       typer.Option(help="LoRA adapter dir to serve (default: the run's latest).")] = None,
    engine: Annotated[str | None, typer.Option(help="vllm (default) or hf.")] = None,
    config: Annotated[Path | None,
                      typer.Option(help="Ray Serve config file, e.g. deploy/serve/serve_config.yaml "
                                                "(replaces --model/--run-dir/--adapter/--engine).")] = None,
    host: Annotated[str,
                    typer.Option(help="Listen address (0.0.0.0 to expose; then set "
                                      "MEDGROUND_SERVE_TOKEN).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    address: Address = None,
) -> None:
    """Serve grounding inference on Ray Serve (page at /, API at /v1/ground, docs at /docs) until Ctrl-C."""
    from pydantic import ValidationError

    from services.serve.config import ServeArgs
    from services.serve.launch import load_serve_config, serve_forever
    from services.serve.preflight import PreflightError, preflight

    if engine is not None and engine not in ("vllm", "hf"):
        _fail(f"--engine {engine!r} is unknown; choose vllm or hf")
    args = None
    try:
        if config is not None:
            if not config.is_file():
                _fail(f"--config {config} does not exist; the shipped one is deploy/serve/serve_config.yaml")
            load_serve_config(config, host, port)
        else:
            args = ServeArgs.model_validate({k: str(v) for k,
                                             v in (("model_path", model), ("run_dir", run_dir),
                                             ("adapter_path", adapter), ("engine", engine)) if v is not None})
        preflight(args, host, port)  # every path, the port and the files, before Ray starts
    except ValidationError as exc:
        _fail(f"invalid serve options: {exc.errors()[0]['msg']}; pass --model DIR or --run-dir runs/NAME")
    except PreflightError as exc:
        _fail(str(exc))
    serve_forever(None if args is None else args.model_dump(exclude_none=True), config, host, port, address,
                  on_ready=typer.echo)


@app.command()
def status(run: Annotated[str | None, typer.Option(help="Run name (default: the only running job).")] = None,
           as_json: Annotated[bool, typer.Option("--json", help="Print the raw status as JSON.")] = False,
           address: Address = None) -> None:
    """Step, stage, tau, workers, throughput, adapter version and last eval of a running job."""
    from services.cli import ops

    try:
        ops.connect(address)
        report = ops.job_status(run)
    except ops.OperatorError as exc:
        _fail(str(exc))
    typer.echo(ops.to_json(report) if as_json else ops.format_status(report))


@app.command()
def submit(config: Annotated[Path, typer.Argument(help="YAML run config inside the working directory.")],
           overrides: Overrides = None,
           address: Annotated[str, typer.Option("--address", envvar="MEDGROUND_DASHBOARD_ADDRESS",
                                                help="The cluster's job server "
                                                     "(dashboard).")] = "http://127.0.0.1:8265",
           gpu: Annotated[bool,
                          typer.Option("--gpu",
                                       help="deploy/jobs/runtime_env_gpu.yaml (default: cpu).")] = False,
           working_dir: Annotated[Path,
                                  typer.Option(help="Uploaded with the job (configs, "
                                                    "knowledge).")] = Path("."),
           job_id: Annotated[str | None,
                             typer.Option(help="Submission id (default: medground-<run "
                                               "name>-<time>).")] = None,
           no_wait: Annotated[bool, typer.Option("--no-wait",
                                                 help="Return after submitting.")] = False) -> None:
    """Submit `medground train CONFIG` to a Ray cluster with the project's runtime environment (wraps
    `ray job submit`); follows the job's logs unless --no-wait."""
    import time

    from services.cli import ops

    try:
        cfg = load_config(config, overrides or [])  # fail here, not on the cluster
        _notes(cfg, overrides)
        entry = ops.entrypoint(config, overrides or [], working_dir)
        env = ops.runtime_env(gpu, working_dir.resolve())
        client, job = ops.submit(address, entry, env, job_id or f"medground-{cfg.name}-{int(time.time())}")
    except (ConfigError, ops.OperatorError) as exc:
        _fail(str(exc))
    typer.echo(f"submitted job {job}: {entry}")
    typer.echo(f"  logs:   ray job logs --follow {job} --address {address}")
    typer.echo(f"  status: medground status --run {cfg.name} --address HEAD:6379")
    typer.echo(f"  stop:   ray job stop {job} --address {address}")
    if no_wait:
        return
    try:
        final = ops.follow(client, job, typer.echo)
    except KeyboardInterrupt:
        typer.echo(f"\nstopped following; job {job} keeps running (ray job stop {job} to end it)")
        raise typer.Exit(130) from None
    typer.echo(f"job {job}: {final}")
    if final != "SUCCEEDED":
        raise typer.Exit(1)


@scale_app.command("rollout")
def scale_rollout(n: Annotated[int, typer.Argument(help="Target number of rollout workers (>= 1).")],
                  run: Annotated[str | None,
                                 typer.Option(help="Run name (default: the only running job).")] = None,
                  wait: Annotated[float, typer.Option(help="Seconds to wait until N workers are live "
                                                      "(0: return once requested).")] = 0.0,
                  address: Address = None) -> None:
    """Resize the rollout pool of a running job; the driver applies it between steps and new workers
    load the current adapter before they take work."""
    from services.cli import ops

    if n < 1:
        _fail(f"a rollout pool needs at least 1 worker, got {n}")
    try:
        ops.connect(address)
        ops.scale_rollout(run, n, wait, typer.echo)
    except ops.OperatorError as exc:
        _fail(str(exc))


def working_directory_on_path() -> None:
    """Put the working directory first on sys.path, as `python -m` does and the console script does not, so a
    `reward.extra_terms` module (`pkg.mod:fn`) imports at validation as it does in the reward actor, whose
    PYTHONPATH starts with the driver's working directory (rewards/actor.py)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def main() -> None:
    working_directory_on_path()
    app(prog_name="medground")


if __name__ == "__main__":
    sys.exit(main())

"""`medground`: the operator's command line (typer).

Errors an operator can fix are printed as one line that names the problem and the fix, with exit status 1.
"""

from __future__ import annotations

import json
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


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@app.command("init-model")
def init_model(
    out: Annotated[Path, typer.Argument(help="Directory to write the model into.")],
    tiny: Annotated[bool, typer.Option("--tiny", help="A small random model (--size tiny or small).")] = False,
    shape: Annotated[str | None, typer.Option(help="A released checkpoint's widths, random weights: "
                                              "qwen2_5_vl_3b | qwen2_5_vl_7b | qwen3_vl_2b | qwen3_vl_4b | "
                                              "qwen3_vl_8b (sets the family).")] = None,
    family: Annotated[str | None, typer.Option(help="For --tiny: qwen2_5_vl (boxes in input pixels), qwen2_vl or "
                                               "qwen3_vl (0..1000).")] = None,
    size: Annotated[str, typer.Option(help="For --tiny: tiny (~0.7M params, tests) or small (a few M, the demo).")] = "tiny",
    layers: Annotated[int | None, typer.Option(help="Keep only the first N text layers (CPU work at real width).")] = None,
    vision_layers: Annotated[int | None, typer.Option(help="Keep only the first N vision blocks.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="bpe (1,024 tokens trained here; --tiny's default) or qwen "
                                                  "(the real Qwen tokenizer; --shape's only choice).")] = None,
    dtype: Annotated[str, typer.Option(help="float32 (CPU) or bfloat16.")] = "float32",
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a random Qwen-VL model with an offline tokenizer and processor (nothing is downloaded)."""
    from services.model_shapes import REAL_SHAPES

    if tiny == (shape is not None):
        _fail("only random models can be built offline: pass --tiny (small CPU models) or --shape NAME (a released "
              "checkpoint's widths), not both")
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
    from services.tiny_model import build_model_dir, parameter_count

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
    out: Annotated[Path, typer.Argument(help="Model directory to build (reused when built from this recipe).")],
    force: Annotated[bool, typer.Option(help="Rebuild even when OUT holds this recipe's base.")] = False,
) -> None:
    """Train a small Qwen-VL in full on synthetic grounding: the pretrained base of the CPU miniature."""
    import json

    from services.pretrain import REPORT_FILE, build_base, is_built, load_recipe

    try:
        loaded = load_recipe(recipe)
    except ConfigError as exc:
        _fail(str(exc))
    if force or not is_built(loaded, out):
        build_base(loaded, out)
    report = json.loads((out / REPORT_FILE).read_text())
    held, sampled = report["held_out"], report["sampled_T0.9"]
    typer.echo(f"{out}: base {report['digest']} ({report['parameters']:,} parameters, built in "
               f"{report['build_s'] / 60:.1f} min): held-out A@0.3 {held['A@0.3']:.1f} %, A@0.5 {held['A@0.5']:.1f} "
               f"± {held['A@0.5_se']:.1f} %, A@0.8 {held['A@0.8']:.1f} %, mIoU {held['mIoU']:.3f}; samples at T = 0.9: "
               f"{sampled['parse_pct']:.0f} % parse, entropy at T = 1 {report['entropy_T1_nats']['answer_tokens']:.2f} "
               "nats/token")


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
    n = len(cfg.stages)
    typer.echo(f"{config}: valid ({n} stage{'' if n == 1 else 's'}: {', '.join(s.name for s in cfg.stages)})")


@app.command()
def train(config: Annotated[Path | None, typer.Argument(help="YAML run config (omit with --resume).")] = None,
          overrides: Overrides = None, address: Address = None,
          resume: Annotated[Path | None, typer.Option(help="Run directory to resume (runs/<name>).")] = None) -> None:
    """Run a training job (local Ray by default; `ray job submit` runs this same command). SIGTERM or Ctrl-C
    finishes the step, checkpoints it and stops (a second one stops at once)."""
    from services.launch import train as run_training
    from services.train_loop import RunFailed

    try:
        run_dir = run_training(config, overrides or [], address, resume)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as exc:
        _fail(str(exc))
    except RunFailed as exc:
        _stopped(exc)
    typer.echo(f"run finished: {run_dir}")


def _stopped(exc: BaseException) -> NoReturn:
    """A run that stopped: its message (the step, the last checkpoint, the resume command); exit 143 (128 +
    SIGTERM) when a signal stopped it, else 1."""
    from services.train_loop import StopRequested

    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(143 if isinstance(exc.__cause__, StopRequested) else 1)


@app.command()
def demo(overrides: Overrides = None) -> None:
    """The main job: GRPO with the MedLoc-R1 schedule on a pretrained CPU base and synthetic phantoms."""
    from services.launch import demo as run_demo
    from services.train_loop import RunFailed

    try:
        summary = run_demo(overrides or [])
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    except RunFailed as exc:
        _stopped(exc)
    typer.echo("\ndemo finished:")
    for key, value in summary.items():
        typer.echo(f"  {key:18s} {value if not isinstance(value, float) else round(value, 3)}")


@app.command("eval")
def evaluate(run: Annotated[Path, typer.Argument(help="Run directory (runs/<name>).")],
             step: Annotated[int | None, typer.Option(help="Checkpoint step (default: the final adapter, else "
                                                      "the latest checkpoint).")] = None,
             max_samples: Annotated[int | None, typer.Option(help="Held-out records (default: the run's "
                                                             "eval.max_samples).")] = None,
             address: Address = None) -> None:
    """Evaluate a run's adapter on the held-out split (greedy), as the training loop does."""
    from services.launch import evaluate_run

    try:
        metrics, path = evaluate_run(run, step, max_samples, address)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    for key, value in sorted(metrics.items()):
        typer.echo(f"  {key:28s} {round(value, 4) if isinstance(value, float) else value}")
    typer.echo(f"predictions: {path}")


@app.command()
def export(run: Annotated[Path, typer.Argument(help="Run directory (runs/<name>).")],
           merged: Annotated[Path, typer.Option("--merged", help="Directory to write the merged model into "
                                                "(the adapter folded into the base weights).")],
           step: Annotated[int | None, typer.Option(help="Checkpoint step (default: the final adapter, else the "
                                                    "latest checkpoint).")] = None) -> None:
    """Merge a run's adapter into its base model: a plain model directory that transformers and vLLM load
    without LoRA (faster decoding; what deployment tools expect)."""
    from services.merge import export_merged

    try:
        info = export_merged(run, merged, step)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as exc:
        _fail(str(exc))
    source = info["merged_from"]
    typer.echo(f"wrote {merged}: {source['base_model']} + adapter v{source['adapter_version']} "
               f"({source['checkpoint']}), {info['dtype']}")


@app.command()
def serve(
    model: Annotated[Path | None, typer.Option(help="HF model directory (or give --run-dir).")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Training run (runs/NAME): model, rollout settings, and "
                                                 "its checkpoints watched for newer adapters.")] = None,
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter dir to serve (default: the run's latest).")] = None,
    engine: Annotated[str | None, typer.Option(help="vllm (default) or hf.")] = None,
    config: Annotated[Path | None, typer.Option(help="Ray Serve config file, e.g. deploy/serve/serve_config.yaml "
                                                "(replaces --model/--run-dir/--adapter/--engine).")] = None,
    host: Annotated[str, typer.Option(help="Listen address (0.0.0.0 to expose; then set MEDGROUND_SERVE_TOKEN).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    address: Address = None,
) -> None:
    """Serve grounding inference on Ray Serve (page at /, API at /v1/ground, docs at /docs) until Ctrl-C."""
    from pydantic import ValidationError

    from services.serve.config import ServeArgs
    from services.serve.launch import load_serve_config, serve_forever

    if engine is not None and engine not in ("vllm", "hf"):
        _fail(f"--engine {engine!r} is unknown; choose vllm or hf")
    args = None
    try:
        if config is not None:
            if not config.is_file():
                _fail(f"--config {config} does not exist; the shipped one is deploy/serve/serve_config.yaml")
            load_serve_config(config, host, port)
        else:
            args = ServeArgs.model_validate({k: str(v) for k, v in (("model_path", model), ("run_dir", run_dir),
                                             ("adapter_path", adapter), ("engine", engine)) if v is not None})
            args.model_dump()  # validated; resolve() in the replica checks the files
    except ValidationError as exc:
        _fail(f"invalid serve options: {exc.errors()[0]['msg']}; pass --model DIR or --run-dir runs/NAME")
    serve_forever(None if args is None else args.model_dump(exclude_none=True), config, host, port, address,
                  on_ready=typer.echo)


@app.command()
def status(run: Annotated[str | None, typer.Option(help="Run name (default: the only running job).")] = None,
           as_json: Annotated[bool, typer.Option("--json", help="Print the raw status as JSON.")] = False,
           address: Address = None) -> None:
    """Step, stage, tau, workers, throughput, adapter version and last eval of a running job."""
    from services import ops

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
                                                help="The cluster's job server (dashboard).")] = "http://127.0.0.1:8265",
           gpu: Annotated[bool, typer.Option("--gpu", help="deploy/jobs/runtime_env_gpu.yaml (default: cpu).")] = False,
           working_dir: Annotated[Path, typer.Option(help="Uploaded with the job (configs, knowledge).")] = Path("."),
           job_id: Annotated[str | None, typer.Option(help="Submission id (default: medground-<run name>-<time>).")] = None,
           no_wait: Annotated[bool, typer.Option("--no-wait", help="Return after submitting.")] = False) -> None:
    """Submit `medground train CONFIG` to a Ray cluster with the project's runtime environment (wraps
    `ray job submit`); follows the job's logs unless --no-wait."""
    import time

    from services import ops

    try:
        cfg = load_config(config, overrides or [])  # fail here, not on the cluster
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
                  run: Annotated[str | None, typer.Option(help="Run name (default: the only running job).")] = None,
                  wait: Annotated[float, typer.Option(help="Seconds to wait until N workers are live "
                                                      "(0: return once requested).")] = 0.0,
                  address: Address = None) -> None:
    """Resize the rollout pool of a running job; the driver applies it between steps and new workers
    load the current adapter before they take work."""
    from services import ops

    if n < 1:
        _fail(f"a rollout pool needs at least 1 worker, got {n}")
    try:
        ops.connect(address)
        ops.scale_rollout(run, n, wait, typer.echo)
    except ops.OperatorError as exc:
        _fail(str(exc))


def _pair(text: str | None, kind: type[int] | type[float], name: str) -> tuple[float, float] | None:
    if text is None:
        return None
    parts = text.split(",")
    try:
        low, high = (kind(p) for p in parts)
    except ValueError:
        _fail(f"{name} {text!r} must be two numbers LOW,HIGH, e.g. {name} 0.02,0.2")
    return low, high


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Argument(help="Folder to write images/ and the manifest into.")],
    preset: Annotated[str, typer.Option(help="demo | demo-classification | demo-grading | small-target | hybrid")] = "demo",
    seed: Annotated[int, typer.Option(help="Seed; the same seed writes byte-identical files.")] = 0,
    tasks: Annotated[str | None, typer.Option(help="Comma list of grounding,classification,grading.")] = None,
    size: Annotated[int | None, typer.Option(help="Image side in pixels.")] = None,
    n_train: Annotated[int | None, typer.Option(help="Train images.")] = None,
    n_val: Annotated[int | None, typer.Option(help="Val images.")] = None,
    n_test: Annotated[int | None, typer.Option(help="Test images.")] = None,
    area: Annotated[str | None, typer.Option(help="One relative-area range LOW,HIGH (0..1) for all images.")] = None,
    contrast: Annotated[str | None, typer.Option(help="Lesion contrast range LOW,HIGH (0..1).")] = None,
    distractors: Annotated[str | None, typer.Option(help="Distractor lesions per image LOW,HIGH.")] = None,
    noise: Annotated[float | None, typer.Option(help="Quantum noise std (0..0.5).")] = None,
    normal_fraction: Annotated[float | None, typer.Option(help="Share of images without a finding.")] = None,
    manifest: Annotated[str, typer.Option(help="Manifest file name (.jsonl or .parquet).")] = "manifest.jsonl",
) -> None:
    """Write synthetic chest-radiograph phantoms and a manifest."""
    from pydantic import ValidationError

    from services.data.synth import PRESETS, make_spec, write_dataset

    splits = None
    if any(n is not None for n in (n_train, n_val, n_test)):
        base = PRESETS[preset].splits if preset in PRESETS else {}
        given = {"train": n_train, "val": n_val, "test": n_test}
        splits = {k: v if v is not None else base.get(k, 0) for k, v in given.items()}
    area_range = _pair(area, float, "--area")
    try:
        spec = make_spec(preset, size=size, splits=splits, tasks=tasks.split(",") if tasks else None,
                         area_buckets=None if area_range is None else (area_range,),
                         contrast=_pair(contrast, float, "--contrast"),
                         distractors=_pair(distractors, int, "--distractors"),
                         noise_std=noise, normal_fraction=normal_fraction)
    except (ValueError, ValidationError) as exc:
        _fail(str(exc))
    path = write_dataset(spec, out, seed=seed, manifest_name=manifest)
    images = sum(spec.splits.values())
    typer.echo(f"wrote {images} images ({spec.size}px, preset {preset}, seed {seed}) and {path}")


@data_app.command("convert")
def data_convert(
    source: Annotated[Path, typer.Argument(help="The dataset's file or folder, as published.")],
    out: Annotated[Path, typer.Argument(help="Manifest to write (.jsonl or .parquet); images go beside it.")],
    fmt: Annotated[str, typer.Option("--format", help="vlm-r1 | ms-cxr | nih | vindr | rsna | coco | masks | "
                                     "volumes | medmnist")],
    image_root: Annotated[str | None, typer.Option(help="Image folder, relative to OUT's folder or absolute.")] = None,
    split: Annotated[str | None, typer.Option(help="Put every record in this split (default: hashed by patient).")] = None,
    phrase: Annotated[str | None, typer.Option(help="Phrase or question for formats that carry none.")] = None,
    finding: Annotated[str | None, typer.Option(help="Finding name for masks and volumes.")] = None,
    modality: Annotated[str | None, typer.Option(help="Modality key (cxr, ct, mr, us, derm) for knowledge keys.")] = None,
    slice_: Annotated[str, typer.Option("--slice", help="Volumes: max | center | all | INDEX.")] = "max",
    window: Annotated[str | None, typer.Option(help="Volumes: window CENTER,WIDTH in modality units.")] = None,
    min_votes: Annotated[int, typer.Option(help="VinDr: radiologists needed for a fused box.")] = 1,
    task: Annotated[str, typer.Option(help="MedMNIST: classification or grading.")] = "classification",
    labels: Annotated[str | None, typer.Option(help="MedMNIST: comma list of class names by index.")] = None,
    on_bad_record: Annotated[str, typer.Option(help="A malformed row: fail (stop, naming it) or skip (count it "
                                               "and go on), as data.on_bad_record does for manifests.")] = "fail",
) -> None:
    """Convert a published dataset format into a medground manifest (exit 1 when no record comes out)."""
    from services.data import write_manifest
    from services.data.converters import ConvertError, ConvertOptions, convert
    from services.data.medimage import MedicalImageError

    if on_bad_record not in ("skip", "fail"):
        _fail(f"--on-bad-record {on_bad_record!r} must be skip or fail")
    options = ConvertOptions(image_root=image_root, split=split, phrase=phrase, finding=finding, modality=modality,
                             slice=slice_, window=_pair(window, float, "--window"), min_votes=min_votes, task=task,
                             labels=tuple(labels.split(",")) if labels else (),
                             on_bad_record=on_bad_record)  # type: ignore[arg-type]
    try:
        result = convert(fmt, source, out.parent, options)
        path = write_manifest(result.records, out)
    except (ConvertError, MedicalImageError, ValueError) as exc:
        _fail(str(exc))
    for bad in result.skipped:
        typer.echo(f"{source}: skipped {bad}", err=True)
    typer.echo(f"{fmt}: {result.summary()} -> {path}")


@data_app.command("inspect")
def data_inspect(
    manifest: Annotated[Path, typer.Argument(help="A .jsonl or .parquet manifest.")],
    sheet: Annotated[Path | None, typer.Option(help="Contact sheet PNG (default: next to the manifest).")] = None,
    limit: Annotated[int, typer.Option(help="Records drawn on the sheet.")] = 24,
    on_bad_record: Annotated[str, typer.Option(help="skip or fail")] = "fail",
) -> None:
    """Counts per task, split and size bucket, a contact sheet with boxes, and the records whose boxes are
    not in their image's frame (exit 1 when an image drawn is unreadable or such a record exists)."""
    from services.data import ManifestError, load_manifest
    from services.data.inspect import contact_sheet, count, frame_problems

    if on_bad_record not in ("skip", "fail"):
        _fail(f"--on-bad-record {on_bad_record!r} must be skip or fail")
    try:
        loaded = load_manifest(manifest, on_bad_record)  # type: ignore[arg-type]
    except ManifestError as exc:
        _fail(str(exc))
    typer.echo(count(loaded.records).table())
    drawn = contact_sheet(loaded, sheet or manifest.with_name(manifest.stem + "_sheet.png"), limit=limit)
    typer.echo(f"contact sheet: {drawn.path}")
    if drawn.unreadable:  # training would stop at these records: say so now, not at the first step
        for problem in drawn.unreadable:
            typer.echo(f"  unreadable image: {problem}", err=True)
        _fail(f"{len(drawn.unreadable)} of the images drawn could not be read (listed above); fix or remove "
              "those records")
    misplaced = frame_problems(loaded)  # boxes drawn off their image: wrong boxes, or a refusal at training
    for problem in misplaced[:20]:
        typer.echo(f"  boxes in another frame: {problem}", err=True)
    if misplaced:
        _fail(f"{len(misplaced)} record(s) have boxes in another frame than their image"
              f"{' (first 20 listed above)' if len(misplaced) > 20 else ' (listed above)'}")


def main() -> None:
    app(prog_name="medground")


if __name__ == "__main__":
    sys.exit(main())

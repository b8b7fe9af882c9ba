"""`medground data ...`: synthesise, convert and inspect data sets (services/data/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.main import _fail

data_app = typer.Typer(help="Synthesise, convert and inspect datasets.", no_args_is_help=True)


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
    preset: Annotated[str,
                      typer.Option(help="demo | demo-sparse | demo-classification | demo-grading | "
                                        "small-target | multibox | hybrid")] = "demo",
    seed: Annotated[int, typer.Option(help="Seed; the same seed writes byte-identical files.")] = 0,
    tasks: Annotated[str | None, typer.Option(help="Comma list of grounding,classification,grading.")] = None,
    size: Annotated[int | None, typer.Option(help="Image side in pixels.")] = None,
    n_train: Annotated[int | None, typer.Option(min=0, help="Train images.")] = None,
    n_val: Annotated[int | None, typer.Option(min=0, help="Val images.")] = None,
    n_test: Annotated[int | None, typer.Option(min=0, help="Test images.")] = None,
    area: Annotated[str | None,
                    typer.Option(help="One relative-area range LOW,HIGH (0..1) for all images.")] = None,
    contrast: Annotated[str | None, typer.Option(help="Lesion contrast range LOW,HIGH (0..1).")] = None,
    distractors: Annotated[str | None, typer.Option(help="Distractor lesions per image LOW,HIGH.")] = None,
    noise: Annotated[float | None, typer.Option(help="Quantum noise std (0..0.5).")] = None,
    normal_fraction: Annotated[float | None, typer.Option(help="Share of images without a finding.")] = None,
    manifest: Annotated[str,
                        typer.Option(help="Manifest file name (.jsonl or .parquet).")] = "manifest.jsonl",
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
    image_root: Annotated[str | None,
                          typer.Option(help="Image folder, relative to OUT's folder or absolute.")] = None,
    split: Annotated[str | None,
                     typer.Option(help="Put every record in this split (default: hashed by "
                                       "patient).")] = None,
    phrase: Annotated[str | None,
                      typer.Option(help="Phrase or question for formats that carry none.")] = None,
    finding: Annotated[str | None, typer.Option(help="Finding name for masks and volumes.")] = None,
    modality: Annotated[str | None,
                        typer.Option(help="Modality key (cxr, ct, mr, us, derm) for knowledge keys.")] = None,
    slice_: Annotated[str, typer.Option("--slice", help="Volumes: max | center | all | INDEX.")] = "max",
    window: Annotated[str | None,
                      typer.Option(help="Volumes: window CENTER,WIDTH in modality units.")] = None,
    min_votes: Annotated[int, typer.Option(help="VinDr: radiologists needed for a fused box.")] = 1,
    task: Annotated[str, typer.Option(help="MedMNIST: classification or grading.")] = "classification",
    labels: Annotated[str | None, typer.Option(help="MedMNIST: comma list of class names by index.")] = None,
    on_bad_record: Annotated[str,
                             typer.Option(help="A malformed row: fail (stop, naming it) or skip "
                                               "(count it and go on), as data.on_bad_record does "
                                               "for manifests.")] = "fail",
    negatives: Annotated[str, typer.Option(help="Images without the finding (RSNA Target 0, VinDr 'No "
                                           "finding', masks without a lesion): skip (counted) or keep as "
                                           "records with no box, for stages with multi_box: true.")] = "skip",
    components: Annotated[str, typer.Option(help="Masks and volumes: union (one box per mask) or each (one "
                                            "box per connected lesion).")] = "union",
) -> None:
    """Convert a published dataset format into a medground manifest (exit 1 when no record comes out)."""
    from services.data import write_manifest
    from services.data.converters import ConvertError, ConvertOptions, convert
    from services.data.medimage import MedicalImageError

    if on_bad_record not in ("skip", "fail"):
        _fail(f"--on-bad-record {on_bad_record!r} must be skip or fail")
    if negatives not in ("skip", "keep"):
        _fail(f"--negatives {negatives!r} must be skip or keep")
    if components not in ("union", "each"):
        _fail(f"--components {components!r} must be union or each")
    options = ConvertOptions(image_root=image_root, split=split, phrase=phrase, finding=finding,
                             modality=modality,
                             slice=slice_, window=_pair(window, float, "--window"),
                             min_votes=min_votes, task=task,
                             labels=tuple(labels.split(",")) if labels else (),
                             on_bad_record=on_bad_record, negatives=negatives,  # type: ignore[arg-type]
                             components=components)  # type: ignore[arg-type]
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
    sheet: Annotated[Path | None,
                     typer.Option(help="Contact sheet PNG (default: next to the manifest).")] = None,
    limit: Annotated[int, typer.Option(help="Records drawn on the sheet.")] = 24,
    on_bad_record: Annotated[str, typer.Option(help="skip or fail")] = "fail",
    allow_missing: Annotated[bool, typer.Option("--allow-missing",
                                                help="Report missing images but exit 0.")] = False,
) -> None:
    """Counts per task, split and size bucket, a contact sheet with boxes, every record whose image is
    missing, and the records whose boxes are not in their image's frame (exit 1 when an image is missing,
    unless --allow-missing, when one drawn is unreadable, or when such a record exists)."""
    from services.data import ManifestError, load_manifest
    from services.data.inspect import contact_sheet, count, frame_problems, missing_images

    if on_bad_record not in ("skip", "fail"):
        _fail(f"--on-bad-record {on_bad_record!r} must be skip or fail")
    try:
        loaded = load_manifest(manifest, on_bad_record)  # type: ignore[arg-type]
    except ManifestError as exc:
        _fail(str(exc))
    typer.echo(count(loaded.records).table())
    drawn = contact_sheet(loaded, sheet or manifest.with_name(manifest.stem + "_sheet.png"), limit=limit)
    typer.echo(f"contact sheet: {drawn.path}")
    missing = missing_images(loaded)
    if missing:  # training would stop at the first of these: say so now, with every name
        for record_id, path in missing[:20]:
            typer.echo(f"  missing image: {path} (record {record_id})", err=True)
        more = (f" (first 20 listed above; {len(missing) - 20} more)" if len(missing) > 20
                else " (listed above)")
        files = len({p for _, p in missing})
        message = (f"{len(missing)} of {len(loaded.records)} records point at an image that does not exist "
                   f"({files} file{'s' if files != 1 else ''}){more}; put the images beside the manifest or "
                   "fix the paths")
        if not allow_missing:
            _fail(message + " (--allow-missing reports them and goes on)")
        typer.echo(f"warning: {message}", err=True)
    gone = {record_id for record_id, _ in missing}
    unreadable = [p for p in drawn.unreadable if not any(p.startswith(f"{g}: ") for g in gone)]  # said above
    if unreadable:  # training would stop at these records: say so now, not at the first step
        for problem in unreadable:
            typer.echo(f"  unreadable image: {problem}", err=True)
        _fail(f"{len(unreadable)} of the images drawn could not be read (listed above); fix or remove "
              "those records")
    misplaced = frame_problems(loaded)  # boxes drawn off their image: wrong boxes, or a refusal at training
    for problem in misplaced[:20]:
        typer.echo(f"  boxes in another frame: {problem}", err=True)
    if misplaced:
        _fail(f"{len(misplaced)} record(s) have boxes in another frame than their image"
              f"{' (first 20 listed above)' if len(misplaced) > 20 else ' (listed above)'}")

"""Real pixels end to end: the CT and MR volumes with lesion masks that the `pyradiomics-bhklab` source
archive ships (data/lung1, lung2, brain1, brain2: real scans, NRRD, LPS) go through `data convert
--format volumes`, `data inspect` and the held-out prediction path (the slow tier: a short `medground
train` and `medground eval`). The side written in each
phrase ("on the patient's left side") is checked against the volume's own orientation by an independent
computation: the lesion's centroid and the body's centroid in the NRRD's world coordinates (LPS: +x is the
patient's left), from pynrrd and numpy only, never through the converter's reorientation.

tools/setup_env.sh downloads the archive (without installing it) into .venv/fixtures/.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from services.cli import app
from services.data import load_manifest
from services.data.medimage import read_image

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ARCHIVES = sorted((ROOT / ".venv" / "fixtures").glob("pyradiomics_bhklab-3.1.4.tar.gz"))
VOLUMES = ("lung1", "lung2", "brain1", "brain2")
runner = CliRunner()


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not ARCHIVES:
        pytest.skip("pyradiomics-bhklab archive absent from .venv/fixtures (run tools/setup_env.sh to fetch "
                    "it)")
    out = tmp_path_factory.mktemp("volumes")
    wanted = {f"{v}_{kind}.nrrd" for v in VOLUMES for kind in ("image", "label")}
    with tarfile.open(ARCHIVES[0]) as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if name in wanted and Path(member.name).parent.name == "data":
                member.name = name
                tar.extract(member, out, filter="data")
    assert {p.name for p in out.iterdir()} == wanted
    return out


def patient_side(image_path: Path, label_path: Path) -> str:
    """'left' or 'right': where the lesion's centroid lies against the body's, in world LPS coordinates
    (index -> origin + index @ space directions; a RAS-space file's x is negated)."""
    import nrrd

    image, header = nrrd.read(str(image_path), index_order="F")
    label, _ = nrrd.read(str(label_path), index_order="F")
    directions = np.asarray(header["space directions"], dtype=np.float64)
    origin = np.asarray(header["space origin"], dtype=np.float64)
    sign = {"left-posterior-superior": 1.0, "right-anterior-superior": -1.0}[header["space"]]
    lesion_x = sign * (origin + np.argwhere(label > 0).mean(axis=0) @ directions)[0]
    body_x = sign * (origin + np.argwhere(image > image.mean()).mean(axis=0) @ directions)[0]
    return "left" if lesion_x > body_x else "right"


def _convert_and_inspect(volumes: Path, manifest: Path) -> list[Any]:
    converted = runner.invoke(app, ["data", "convert", "--format", "volumes", "--slice", "all",
                                    "--split", "train",
                                    "--finding", "lesion", str(volumes), str(manifest)])
    assert converted.exit_code == 0, converted.output
    records = load_manifest(manifest).records
    sides = {v: patient_side(volumes / f"{v}_image.nrrd", volumes / f"{v}_label.nrrd") for v in VOLUMES}
    # The published description of the data agrees: lung1 a right upper-lung nodule, lung2 a left lower-lobe
    # mass.
    assert sides["lung1"] == "right" and sides["lung2"] == "left"
    assert {r.meta.attributes["volume"] for r in records} == set(VOLUMES) and len(records) >= 8
    for record in records:
        side = sides[str(record.meta.attributes["volume"])]
        assert record.meta.attributes["side"] == side and f"patient's {side} side" in record.phrase, record.id
        # radiological display: the patient's right on the image's left
        (x1, _, x2, _), width = record.boxes[0], record.width or 0
        assert ((x1 + x2) / 2 < width / 2) == (side == "right"), record.id
        png = read_image(manifest.parent / record.image)  # a real scan, windowed: not flat
        assert png.size == (record.width, record.height) and png.pixels.std() > 20

    inspected = runner.invoke(app, ["data", "inspect", str(manifest)])
    assert inspected.exit_code == 0, inspected.output
    return list(records)


def test_real_volumes_convert_inspect_and_are_predicted_on(shared_pool: Any, volumes: Path,
                                                           tmp_path: Path) -> None:
    """Convert and inspect, then the held-out prediction path (the shared rollout pool, the base model) on
    the real slices: every slice read, prompted and answered, and scored in its own frame."""
    from services import evaluation

    manifest = tmp_path / "data" / "manifest.jsonl"
    records = _convert_and_inspect(volumes, manifest)
    predictions = evaluation.predict(shared_pool, load_manifest(manifest), records[:4], max_new_tokens=8)
    assert [p.record.id for p in predictions] == [r.id for r in records[:4]]
    assert all(0.0 <= p.iou <= 1.0 for p in predictions)
    assert evaluation.report(predictions, "exact")["eval/n"] == 4


@pytest.mark.slow  # the same slices through a whole `medground train` and `medground eval`
def test_real_volumes_convert_inspect_train_and_eval(ray_local: None, tiny_model_dir: Path, volumes: Path,
                                                     tmp_path: Path) -> None:
    manifest = tmp_path / "data" / "manifest.jsonl"
    _convert_and_inspect(volumes, manifest)
    tree = {
        "name": "real-volumes", "seed": 0, "output_dir": str(tmp_path / "runs"),
        "model": {"path": str(tiny_model_dir), "family": "qwen2_5_vl"},
        "data": {"manifest": str(manifest), "train_split": "train", "eval_split": "train"},
        "stages": [{"name": "warmup", "kind": "sft", "steps": 2, "prompts_per_step": 4, "lr": 1e-3},
                   {"name": "grounding", "kind": "grpo", "steps": 1, "prompts_per_step": 2, "refill_cap": 0}],
        "pool": {"num_workers": 1, "cpus_per_worker": 0.25},
        "rollout": {"group_size": 2, "max_model_len": 512,
                    "sampling": {"temperature": 1.0, "max_new_tokens": 8}},
        "learner": {"num_ranks": 1, "cpus_per_rank": 0.25, "micro_batch_size": 4, "lr": 1e-3},
        "reward": {"accuracy": "raw_iou", "w_recite": 0.0},
        "eval": {"every": 0, "max_samples": 4, "overlays": 2},
        "checkpoint": {"every": 0},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(tree))
    trained = runner.invoke(app, ["train", str(tmp_path / "run.yaml")])
    assert trained.exit_code == 0, trained.output
    run_dir = tmp_path / "runs" / "real-volumes"
    assert len(list((run_dir / "samples").glob("step-*/*.png"))) >= 2
    evaluated = runner.invoke(app, ["eval", str(run_dir), "--max-samples", "4"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "eval/A@0.5" in evaluated.output and "records" in evaluated.output

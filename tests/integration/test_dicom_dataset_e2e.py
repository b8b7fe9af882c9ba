"""A DICOM dataset end to end: a small VinDr-CXR-format set of generated DICOM files (MONOCHROME1 and 2,
12- and 16-bit, rescaled, windowed, several windows with LINEAR_EXACT, a palette, an empty-tag file and one
without a transfer syntax) goes through `data convert --format vindr`, `data inspect` and the held-out
prediction path with its overlays (the slow tier adds a short `medground train` and a Serve request with one
of its files). Every file shows its dense "lesion" bright, and the boxes drawn on the overlays sit where the
records say.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from dicom_files import dataset, palette, write
from PIL import Image
from typer.testing import CliRunner

from learner.distributed import free_port
from services.cli import app
from services.data import load_manifest

pytestmark = pytest.mark.integration
requests = pytest.importorskip("requests")

SIZE = (96, 80)  # width, height of every file
runner = CliRunner()


def _density(box: tuple[int, int, int, int], seed: int) -> np.ndarray:
    """A chest-like density map in [0, 1]: a smooth background with a dense (1.0) block inside `box`."""
    width, height = SIZE
    _, xx = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    d = 0.15 + 0.2 * np.sin(xx / width * np.pi) + 0.03 * rng.random((height, width))
    x1, y1, x2, y2 = box
    d[y1:y2, x1:x2] = 1.0
    return d


def _files(train: Path) -> dict[str, tuple[int, int, int, int] | None]:
    """Write the set; returns image id -> lesion box (xyxy in pixels), None for the normal image."""
    boxes: dict[str, tuple[int, int, int, int] | None] = {
        "m2-12bit-window": (10, 12, 30, 28), "m1-12bit-nowindow": (60, 40, 84, 60),
        "m2-16bit-rescaled": (40, 10, 56, 30), "m2-16bit-nowindow": (20, 44, 44, 70),
        "palette": (50, 20, 70, 36), "empty-tags": (14, 50, 34, 66), "exact-two-windows": (66, 8, 88, 26),
        "no-transfer-syntax": (30, 30, 50, 48), "normal": None,
    }
    for k, (image_id, box) in enumerate(boxes.items()):
        d = _density(box or (0, 0, 0, 0), k)
        kwargs: dict[str, Any] = {}
        if image_id == "m1-12bit-nowindow":
            ds = dataset(np.round((1 - d) * 4000), photometric="MONOCHROME1", bits_stored=12)
        elif image_id == "m2-16bit-rescaled":  # CT-like: signed, HU = stored - 1024, window in HU
            ds = dataset(np.round(d * 3000 - 500), bits_stored=16, signed=True)
            ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
            ds.WindowCenter, ds.WindowWidth = 0, 3000
        elif image_id == "m2-16bit-nowindow":
            ds = dataset(np.round(d * 60000), bits_stored=16)
        elif image_id == "palette":  # a "hot" palette: index 255 (dense) is white, 0 black
            ds = dataset(np.round(d * 255).astype(np.uint8), photometric="PALETTE COLOR", bits_allocated=8)
            i = np.arange(256)
            palette(ds, (np.minimum(2 * i, 255) * 257, np.clip(2 * i - 255, 0, 255) * 257, i * 257))
        elif image_id == "exact-two-windows":
            ds = dataset(np.round(d * 4000), bits_stored=12)
            ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = [2000, 1000], [4000, 500], "LINEAR_EXACT"
        else:
            ds = dataset(np.round(d * 4000), bits_stored=12)
            if image_id == "m2-12bit-window":
                ds.WindowCenter, ds.WindowWidth = 2000, 4000
            if image_id == "empty-tags":
                ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = None, None, None, None
            kwargs["without_transfer_syntax"] = image_id == "no-transfer-syntax"
        ds.Modality = "DX"
        write(train / f"{image_id}.dicom", ds, **kwargs)
    return boxes


def _csv(path: Path, boxes: dict[str, tuple[int, int, int, int] | None]) -> None:
    """VinDr rows: two radiologists per lesion, one pixel either side of it (their mean is the box)."""
    rows = ["image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"]
    for image_id, box in boxes.items():
        if box is None:
            rows += [f"{image_id},No finding,14,R{r},,,," for r in (1, 2, 3)]
            continue
        x1, y1, x2, y2 = box
        rows.append(f"{image_id},Nodule/Mass,8,R8,{x1 - 1},{y1 - 1},{x2 - 1},{y2 - 1}")
        rows.append(f"{image_id},Nodule/Mass,8,R9,{x1 + 1},{y1 + 1},{x2 + 1},{y2 + 1}")
    path.write_text("\n".join(rows) + "\n")


def _green_box(overlay: np.ndarray) -> tuple[int, int, int, int]:
    green = (overlay[..., 1] == 220) & (overlay[..., 0] == 0) & (overlay[..., 2] == 0)
    ys, xs = np.nonzero(green)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _config(tmp: Path, model: Path, manifest: Path) -> Path:
    tree = {
        "name": "dicom-e2e", "seed": 0, "output_dir": str(tmp / "runs"),
        "model": {"path": str(model), "family": "qwen2_5_vl"},
        "data": {"manifest": str(manifest), "train_split": "train", "eval_split": "train"},
        "stages": [{"name": "warmup", "kind": "sft", "steps": 1, "prompts_per_step": 4, "lr": 1e-3},
                   {"name": "grounding", "kind": "grpo", "steps": 1, "prompts_per_step": 2, "refill_cap": 0}],
        "pool": {"num_workers": 1, "cpus_per_worker": 0.25},
        "rollout": {"group_size": 2, "max_model_len": 512,
                    "sampling": {"temperature": 1.0, "max_new_tokens": 8}},
        "learner": {"num_ranks": 1, "cpus_per_rank": 0.25, "micro_batch_size": 4, "lr": 1e-3},
        "reward": {"accuracy": "raw_iou", "w_recite": 0.0},
        "eval": {"every": 0, "max_samples": 8, "overlays": 8},
        "checkpoint": {"every": 0},
    }
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _convert_and_inspect(data: Path) -> dict[str, Any]:
    """The set through `data convert --format vindr` and `data inspect`; returns image id -> record."""
    boxes = _files(data / "train")
    _csv(data / "train.csv", boxes)
    converted = runner.invoke(app, ["data", "convert", "--format", "vindr", "--split", "train",
                                    str(data / "train.csv"), str(data / "manifest.jsonl")])
    assert converted.exit_code == 0, converted.output
    assert "negatives 1" in converted.output
    records = {r.id.split(":")[1]: r for r in load_manifest(data / "manifest.jsonl").records}
    assert sorted(records) == sorted(k for k, b in boxes.items() if b is not None)
    for image_id, record in records.items():
        assert (record.width, record.height) == SIZE  # read from each DICOM header
        assert record.boxes == (tuple(float(v) for v in boxes[image_id]),)  # type: ignore[arg-type]

    inspected = runner.invoke(app, ["data", "inspect", str(data / "manifest.jsonl")])
    assert inspected.exit_code == 0, inspected.output
    sheet = np.asarray(Image.open(data / "manifest_sheet.png").convert("L"))
    assert sheet.shape == (2 * (224 + 30), 6 * 224) and sheet[:224, : 6 * 224].std() > 20  # tiles drawn
    return records


def _check_overlays(drawn: list[Path], records: dict[str, Any]) -> None:
    """Each overlay draws its record's box where the record says, around the file's dense (bright) lesion."""
    assert len(drawn) == len(records)
    for path in drawn:
        record = records[path.stem.split("_")[1]]
        overlay = np.asarray(Image.open(path).convert("RGB")).astype(int)
        scale = max(1, 256 // max(SIZE))  # 256 // 96 = 2: the overlay is the image at 2x
        assert overlay.shape[:2] == (SIZE[1] * scale, SIZE[0] * scale)
        x1, y1, x2, y2 = record.boxes[0]
        gx1, gy1, gx2, gy2 = _green_box(overlay)
        # PIL draws the outline on the box's pixels: x1 * scale ... x2 * scale (inclusive)
        assert (gx1, gy1, gx2, gy2) == pytest.approx((x1 * scale, y1 * scale, x2 * scale, y2 * scale), abs=1)
        grey = overlay.mean(axis=2)
        inside = grey[int(y1 * scale) + 3: int(y2 * scale) - 3, int(x1 * scale)
                      + 3: int(x2 * scale) - 3].mean()
        away = np.ones(grey.shape, bool)
        away[max(0, int(y1 * scale) - 4): int(y2 * scale) + 5,
             max(0, int(x1 * scale) - 4): int(x2 * scale) + 5] = False
        away[:12, :60] = False  # the IoU caption
        # the dense lesion is bright
        assert inside > grey[away].mean() + 60, (path.name, inside, grey[away].mean())


def test_vindr_dicom_set_converts_inspects_and_is_predicted_on(shared_pool: Any, tmp_path: Path) -> None:
    """Convert, inspect, then the held-out prediction path (the shared rollout pool, the base model) with its
    overlays: every file read by the one reader, every box where its record says."""
    from services import evaluation

    data = tmp_path / "vindr"
    records = _convert_and_inspect(data)
    manifest = load_manifest(data / "manifest.jsonl")
    predictions = evaluation.predict(shared_pool, manifest, list(records.values()), max_new_tokens=8)
    assert [p.record.id for p in predictions] == [r.id for r in records.values()]
    _check_overlays(evaluation.write_overlays(predictions, manifest, tmp_path / "overlays", 8), records)


@pytest.mark.slow  # the same files through a whole `medground train` and a Serve request
def test_vindr_dicom_set_converts_inspects_trains_and_serves(ray_local: None, tiny_model_dir: Path,
                                                               tmp_path: Path) -> None:
    data = tmp_path / "vindr"
    records = _convert_and_inspect(data)
    trained = runner.invoke(app, ["train", str(_config(tmp_path, tiny_model_dir, data / "manifest.jsonl"))])
    assert trained.exit_code == 0, trained.output
    run_dir = tmp_path / "runs" / "dicom-e2e"
    overlays = sorted((run_dir / "samples").glob("step-*/*.png"))
    last_step = max(p.parent.name for p in overlays)
    _check_overlays([p for p in overlays if p.parent.name == last_step], records)
    _serve_one(run_dir, data / "train" / "m1-12bit-nowindow.dicom")


def _serve_one(run_dir: Path, dicom: Path) -> None:
    """Serve the trained run and send it one of the set's files (MONOCHROME1, no window)."""
    from ray import serve

    from services.serve.app import GroundingDeployment

    tmp = Path(tempfile.mkdtemp(prefix="mge-", dir="/tmp"))
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        deployment = GroundingDeployment.options(
            ray_actor_options={"num_cpus": 0.5})
        serve.run(deployment.bind({"run_dir": str(run_dir), "adapter_path": str(run_dir / "adapter")}),
                  name="medground-e2e", route_prefix="/")
        response = requests.post(f"http://127.0.0.1:{port}/v1/ground", timeout=120,
                                 files={"image": (dicom.name, dicom.read_bytes(), "application/dicom")},
                                 data={"phrase": "nodule/mass"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["image"]["kind"], body["image"]["width"], body["image"]["height"]) == ("dicom", *SIZE)
        assert body["adapter_version"] >= 1  # the run's trained adapter, not the bare model
        assert json.dumps(body)  # a complete JSON answer
    finally:
        serve.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

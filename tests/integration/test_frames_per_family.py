"""A frame test per model family: the same image and box give the same original-pixel box through train,
eval and serve (docs/architecture.md, "Coordinate frames").

For each family (Qwen2.5-VL: input pixels, 28 px cells; Qwen2-VL: 0..1000, 28 px; Qwen3-VL: 0..1000,
32 px) and a few image sizes:
- train: the SFT target of the record, built from the frame the real processor reports for its prompt;
- eval: `services.evaluation.predict` over a rollout worker whose engine answers that very target, parsed
  and mapped back into original pixels;
- serve: `GroundingService.ground` on the uploaded PNG bytes of the same image, same engine.
The engine is the only part replaced (the `RolloutEngine` seam): it answers what training teaches, so what
is compared is the processor's frame, the prompt's convention, the parser and the conversion of each path.
The reward side's `smart_resize` with the family's cell must give the frame the processor gave.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import rewards
from rollout.config import RolloutConfig, SamplingConfig
from rollout.contracts import Completion
from rollout.core import RolloutWorkerCore
from rollout.images import FAMILIES, family_of
from rollout.processing import PreparedPrompt
from services.data.manifest import Manifest
from services.data.records import Record
from services.evaluation import predict
from services.serve.config import ServeArgs
from services.serve.core import GroundingService
from services.targets import reference_answer

pytestmark = pytest.mark.integration
SIZES = [(300, 170), (97, 211), (640, 480)]
BOX = (0.21, 0.33, 0.62, 0.71)  # relative to the image: the same finding at every size
BUDGET = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}  # the tiny models' processor budget


class TeachingEngine:
    """Answers every prompt with the SFT target of its record in the prompt's own frame."""

    adapter_version = 0

    def __init__(self, records: dict[tuple[int, int], Record]) -> None:
        self.records = records

    def generate(self, prompts: Sequence[PreparedPrompt], n: int,
                 sampling: SamplingConfig) -> list[tuple[Completion, ...]]:
        out = []
        for p in prompts:
            text = reference_answer(self.records[p.prompt.image.size], p.frame)
            out.append((Completion(text=text, token_ids=(1,), logprobs=(-0.1,), finish_reason="stop"),) * n)
        return out

    def load_adapter(self, adapter: object) -> None:
        raise AssertionError("no adapter in this test")

    def close(self) -> None:
        """Nothing to release."""


def _image(size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(size[0])
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8"))


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(params=["qwen2_5_vl", "qwen2_vl", "qwen3_vl"])
def model_dir(request: pytest.FixtureRequest) -> Path:
    name = {"qwen2_5_vl": "tiny_model_dir", "qwen2_vl": "tiny_qwen2_model_dir",
            "qwen3_vl": "tiny_qwen3_model_dir"}[request.param]
    path: Path = request.getfixturevalue(name)
    assert family_of(path) == request.param
    return path


def test_same_image_and_box_give_the_same_original_box_in_train_eval_and_serve(model_dir: Path,
                                                                                tmp_path: Path) -> None:
    family = family_of(model_dir)
    spec = FAMILIES[family]
    records: dict[tuple[int, int], Record] = {}
    for w, h in SIZES:
        _image((w, h)).save(tmp_path / f"{w}x{h}.png")
        box = (BOX[0] * w, BOX[1] * h, BOX[2] * w, BOX[3] * h)
        records[(w, h)] = Record(id=f"{w}x{h}", image=f"{w}x{h}.png", width=w, height=h, phrase="a nodule",
                                 boxes=(box,), split="val")
    manifest = Manifest(tmp_path / "manifest.jsonl", tuple(records.values()))
    config = RolloutConfig(engine="hf", **BUDGET)

    worker = RolloutWorkerCore(model_dir, config)
    worker.engine = TeachingEngine(records)
    service = GroundingService(ServeArgs(model_path=str(model_dir), engine="hf", rollout=BUDGET))
    service.worker.engine = TeachingEngine(records)
    try:
        evaluated = predict(worker, manifest, list(records.values()), max_new_tokens=64)
        served = service.ground([service.check(_png(_image(size)), "a nodule") for size in SIZES])
    finally:
        worker.close()
        service.close()

    for (w, h), ev, sv in zip(SIZES, evaluated, served, strict=True):
        truth = records[(w, h)].boxes[0]
        # the frame each path saw: the processor's grid, the family's cell and convention
        assert sv.convention == spec.convention
        in_w, in_h = sv.input_size
        assert in_w % spec.cell == 0 and in_h % spec.cell == 0
        reward_side = rewards.ImageFrame.for_image(w, h, spec.convention, factor=spec.cell, **BUDGET)
        assert (reward_side.input_width, reward_side.input_height) == (in_w, in_h)
        # the model-convention box is what training taught: 0..1000 units for Qwen2-VL and Qwen3-VL
        assert sv.model_box is not None and ev.box is not None and sv.box is not None
        if spec.convention == "norm1000":
            assert sv.model_box == tuple(float(round(v * 1000)) for v in BOX)
        # eval and serve agree exactly; both are the truth up to the target's rounding to whole units
        assert ev.box == pytest.approx(sv.box, abs=1e-9)
        sx, sy = reward_side.to_original_scale  # one model unit in original pixels
        assert sv.box == pytest.approx(truth, abs=0.5 * max(sx, sy) + 1e-9)
        assert ev.iou == pytest.approx(rewards.iou(sv.box, truth)) and ev.iou > 0.9  # eval scores that box


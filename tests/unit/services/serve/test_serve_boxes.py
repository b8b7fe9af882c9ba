"""The endpoint answers lists of boxes (issue 31): a model trained with `multi_box` is asked for the list form
and its answer read as a set (0, 1 or 2 boxes, in original pixels), `[]` is a valid "not present", a broken
member is named; a single-box model answers as before. Against fakes: the answer reading (`read_answer`),
the service's batch with a fake engine, the real routes with the stand-in deployment (tests/serve_fake.py).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_fake import LISTS, OUTSIDE, fake_app

from rollout.contracts import Completion, RolloutGroup, RolloutRequest
from rollout.images import ImageFrame
from services.config import RunConfig
from services.evaluation import GREEDY, grounding_answer
from services.serve.core import GroundingService, GroundRequest, answer_form, read_answer
from services.serve.explain import NOT_PRESENT, no_box_reason
from services.serve.trained_on import KnowledgeChoice
from services.serve.validate import DecodedImage

FRAME = ImageFrame(400, 300, 200, 150, "input_pixels")  # the model saw half the image: original = 2 x input
ONE = ((20.0, 20.0, 60.0, 60.0),)
TWO = (*ONE, (120.0, 80.0, 180.0, 140.0))


@pytest.mark.parametrize(("phrase", "model_boxes"), [("not present", ()), ("one lesion", ONE),
                                                     ("two lesions", TWO)])
def test_a_list_answer_gives_every_box_in_original_pixels(phrase: str, model_boxes: tuple[Any, ...]) -> None:
    result = read_answer(LISTS[phrase], FRAME, 3, multi_box=True)
    # x and y both scale by 400/200 = 300/150 = 2: [20, 20, 60, 60] -> [40, 40, 120, 120], ...
    assert result.boxes == tuple(tuple(2 * v for v in b) for b in model_boxes)
    assert result.model_boxes == model_boxes and result.parse_ok and result.format_ok
    assert result.box == (result.boxes[0] if model_boxes else None)  # the old field: the first box
    assert result.no_box_reason == (None if model_boxes else NOT_PRESENT)  # "not present" is an answer
    assert (result.adapter_version, result.image_size, result.input_size) == (3, (400, 300), (200, 150))


def test_a_list_in_norm1000_units_scales_by_original_over_1000() -> None:
    # 300x170 image: x * 0.3, y * 0.17: [100, 200, 500, 600] -> [30, 34, 150, 102]; a bare list is a box
    text = '<answer>[{"bbox_2d": [100, 200, 500, 600]}, [0, 0, 1000, 1000]]</answer>'
    result = read_answer(text, ImageFrame(300, 170, 140, 84, "norm1000"), 0, multi_box=True)
    assert len(result.boxes) == 2
    assert result.boxes[0] == pytest.approx((30.0, 34.0, 150.0, 102.0))
    assert result.boxes[1] == pytest.approx((0.0, 0.0, 300.0, 170.0))
    assert result.parse_ok and not result.format_ok  # no <think> block


@pytest.mark.parametrize(("text", "reason"), [
    (LISTS["broken list"], 'unparsable: list member 1 is not a box: each member needs "bbox_2d": '
                           "[x1, y1, x2, y2], four finite numbers"),
    ('<answer>[{"bbox_2d": [20, 20, 60, 60]}, {"bbox_2d": [500, 500, 600, 600]}]</answer>',
     "box 1 [500.0, 500.0, 600.0, 600.0] has no area inside the image (outside it, or x1 >= x2 or y1 >= y2); "
     "the image is the 200x150 pixels the model saw"),
    ('<answer>[{"bbox_2d": [20, 20, 60, 60]</answer>', "unparsable: the answer opens a list of objects that "
                                                       "is not valid JSON; write [{\"bbox_2d\": [x1, y1, x2, "
                                                       "y2]}, ...] or [] for none"),
    ("[]", "unparsable: the answer has no <answer>...</answer> block"),
])
def test_an_unusable_list_is_no_answer_and_says_which_member(text: str, reason: str) -> None:
    result = read_answer(text, FRAME, 0, multi_box=True)
    assert not result.parse_ok and result.boxes == result.model_boxes == () and result.box is None
    assert result.no_box_reason == reason


@pytest.mark.parametrize("text", ['<think>t</think><answer>{"bbox_2d": [14, 21, 42, 49]}</answer>', OUTSIDE,
                                  "no answer", "<answer>[]</answer>", LISTS["two lesions"]])
def test_a_single_box_model_answers_as_before(text: str) -> None:
    """At most one box: evaluation's `grounding_answer` box, and the old reason when there is none; `[]` is
    no answer for a model never asked for lists, and a list of two gives its first box."""
    result = read_answer(text, FRAME, 0, multi_box=False)
    parsed, box = grounding_answer(text, FRAME)
    assert result.boxes == (() if box is None else (box,)) and result.parse_ok == (box is not None)
    assert result.model_boxes == (() if parsed is None else (parsed.box,))
    assert result.no_box_reason == (None if box is not None else no_box_reason(text, FRAME))
    if text == LISTS["two lesions"]:
        assert result.boxes == ((40.0, 40.0, 120.0, 120.0),)


def _run(*multi: bool) -> RunConfig:
    return RunConfig.model_validate({"model": {"path": "m"}, "data": {"manifest": "m.jsonl"}, "stages": [
        {"name": f"s{i}", "kind": "grpo", "steps": 1, "multi_box": m} for i, m in enumerate(multi)]})


def test_answer_form_rule() -> None:
    assert answer_form(None, _run(False, True)) is True  # any stage with multi_box: the list form
    assert answer_form(None, _run(False, False)) is False
    assert answer_form(None, None) is False  # a bare model: one box unless told
    assert answer_form(True, None) is True and answer_form(False, _run(True)) is False  # ServeArgs.multi_box


class _Engine:
    """The worker core's `generate`: records the requests, answers each with the next fixed text."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.seen: list[RolloutRequest] = []

    def generate(self, batch: list[RolloutRequest], n: int, sampling: Any) -> list[RolloutGroup]:
        self.seen = batch
        empty = np.zeros(0, dtype=np.int64)
        return [RolloutGroup(r.prompt_id, "grounding", (Completion(t, (), (), "stop"),), empty, FRAME, None,
                             2, np.zeros((0, 0), np.float32), np.zeros((1, 3), np.int64), empty)
                for r, t in zip(batch, self.texts, strict=True)]


@pytest.mark.parametrize("multi_box", [True, False])
def test_the_service_asks_for_and_reads_the_runs_form(multi_box: bool) -> None:
    service = object.__new__(GroundingService)  # the batch path only: no model, no engine
    engine = _Engine([LISTS["two lesions"], LISTS["not present"]])
    service.worker = engine  # type: ignore[assignment]
    service.sampling, service.multi_box = GREEDY, multi_box
    image = DecodedImage(Image.new("RGB", (400, 300)), kind="png", width=400, height=300)
    requests = [GroundRequest(image, "lesion", KnowledgeChoice(None, "off"))] * 2
    results = service.ground(requests)
    assert [r.multi_box for r in engine.seen] == [multi_box] * 2  # the prompt's answer form
    if multi_box:
        assert [len(r.boxes) for r in results] == [2, 0] and all(r.parse_ok for r in results)
    else:  # the same texts read as single boxes: the first box, and `[]` is no answer
        assert [len(r.boxes) for r in results] == [1, 0] and [r.parse_ok for r in results] == [True, False]


def _ground(client: TestClient, phrase: str) -> dict[str, Any]:
    rgb = np.full((300, 400, 3), 200, dtype=np.uint8)
    rgb[100:150, 50:90] = 30  # the single-box stand-in answers these dark pixels
    data = io.BytesIO()
    Image.fromarray(rgb).save(data, "PNG")
    response = client.post("/v1/ground", files={"image": ("scan.png", data.getvalue(), "image/png")},
                           data={"phrase": phrase})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_the_response_carries_boxes_and_the_deprecated_box(monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_app(monkeypatch) as (api, _):
        client = TestClient(api)
        phrases = ("not present", "one lesion", "two lesions", "broken list", "nodule")
        none, one, two, broken, single = (_ground(client, p) for p in phrases)
    assert none["boxes"] == [] and none["box"] is None and none["parse_ok"]
    assert none["no_box_reason"] == NOT_PRESENT and none["model_input"]["boxes"] == []
    assert one["boxes"] == [[40, 40, 120, 120]] and one["box"] == [40, 40, 120, 120]
    assert one["model_input"]["boxes"] == [[20, 20, 60, 60]] and one["model_input"]["box"] == [20, 20, 60, 60]
    assert two["boxes"] == [[40, 40, 120, 120], [240, 160, 360, 280]] and two["box"] == two["boxes"][0]
    assert two["model_input"]["boxes"] == [list(b) for b in TWO] and two["no_box_reason"] is None
    assert broken["boxes"] == [] and broken["box"] is None and not broken["parse_ok"]
    assert broken["no_box_reason"].startswith("unparsable: list member 1 is not a box")
    # the single-box stand-in: one box, the same in `box` and `boxes`, as before
    assert single["boxes"] == [single["box"]] == [[50, 100, 90, 150]] and single["parse_ok"]
    assert single["model_input"]["boxes"] == [single["model_input"]["box"]]

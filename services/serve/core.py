"""The grounding service as a plain class: validated uploads in, boxes in original-image pixels out.

What is evaluated is what is served: requests go through the rollout worker core (the same prompt builder,
HF processor and engine as training and evaluation) with evaluation's greedy sampling, and answers through
`services.evaluation.grounding_answer` / `grounding_boxes` (the rewards parser and frame conversion). The Ray
Serve deployment (services/serve/app.py) forwards here; tests construct this class directly.

The answer form (issue 31) follows evaluation's rule (`services.evaluation.evaluate`): a run any of whose
stages has `multi_box: true` is asked for a list of boxes (`[]`: not present) and read as a set; any other
run, and a bare model, is asked for one box. `ServeArgs.multi_box` overrides the rule (a merged export of a
multi-box run served by `model_path` carries no stages to read it from).

Not thread-safe on purpose: the deployment calls `ground`, `load_adapter` and `refresh` from one engine
thread; `check` is pure and may run anywhere.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import rewards
from rollout.contracts import RolloutRequest
from rollout.core import RolloutWorkerCore
from rollout.images import ImageFrame
from rollout.knowledge import KnowledgeBase, load_knowledge
from services.config import RunConfig, load_run_config
from services.evaluation import GREEDY, grounding_answer, grounding_boxes
from services.serve.adapters import AdapterError, AdapterSource, latest_adapter, read_adapter
from services.serve.config import ServeArgs, resolve
from services.serve.explain import no_box_reason
from services.serve.trained_on import KnowledgeChoice, TrainedOn, choose_knowledge, trained_on
from services.serve.validate import BadInput, DecodedImage, check_phrase, decode_image

Origin = Literal["start", "watch", "admin"]
NO_KNOWLEDGE = KnowledgeChoice(None, "off")


@dataclass(frozen=True)
class GroundRequest:
    """One checked request: the decoded image (original frame), the trimmed phrase, and the knowledge its
    prompt is built with (services/serve/trained_on.py: the request's key, or one chosen for the phrase)."""

    image: DecodedImage
    phrase: str
    knowledge: KnowledgeChoice = NO_KNOWLEDGE

    @property
    def knowledge_key(self) -> str | None:
        return self.knowledge.key


def serve_request(index: int, request: GroundRequest, multi_box: bool = False) -> RolloutRequest:
    """The rollout request of a checked upload: what evaluation's `rollout_request(record, multi_box=...)` is
    for a record (image, phrase, grounding, the chosen knowledge key, the answer form), so both build one
    prompt (rollout/prompts.py)."""
    return RolloutRequest(prompt_id=f"serve-{index}", image=request.image.image, question=request.phrase,
                          knowledge_key=request.knowledge.key, multi_box=multi_box)


@dataclass(frozen=True)
class GroundResult:
    """The answer to one request.

    `boxes`: every box, (x1, y1, x2, y2) in pixels of the uploaded image, in the answer's order; () when the
    answer has no usable box, or (multi-box models) says "not present"; `model_boxes`: the same boxes in the
    model's convention (input pixels or 0..1000), clipped; `parse_ok`: the answer parsed (a valid `[]` too);
    `input_size`: (width, height) the model saw; `format_ok`: exact think/answer format; `no_box_reason`: why
    `boxes` is empty (None when it is not).
    """

    boxes: tuple[rewards.Box, ...]
    model_boxes: tuple[rewards.Box, ...]
    parse_ok: bool
    text: str
    format_ok: bool
    adapter_version: int
    image_size: tuple[int, int]
    input_size: tuple[int, int]
    convention: str
    no_box_reason: str | None = None

    @property
    def box(self) -> rewards.Box | None:
        """The first box in original pixels, or None (the single-box answer of old)."""
        return self.boxes[0] if self.boxes else None

    @property
    def model_box(self) -> rewards.Box | None:
        """The first box in the model's convention, or None."""
        return self.model_boxes[0] if self.model_boxes else None


def read_answer(text: str, frame: ImageFrame, adapter_version: int, multi_box: bool) -> GroundResult:
    """One model answer as a result: parsed by evaluation's path (`grounding_answer`, or `grounding_boxes`
    for a multi-box model, whose `[]` is a valid "not present"), converted into original pixels, and the
    reason when there is no box (`no_box_reason`). Pure: no engine."""
    parsed, first = grounding_answer(text, frame, multi_box=multi_box)
    if multi_box:
        boxes = grounding_boxes(text, frame) or ()
        model_boxes = (parsed.boxes or ()) if parsed is not None else ()
    else:  # a single-box answer parses only with its box
        boxes = () if first is None else (first,)
        model_boxes = () if parsed is None or parsed.box is None else (parsed.box,)
    return GroundResult(
        boxes=boxes, model_boxes=model_boxes, parse_ok=parsed is not None, text=text,
        format_ok=parsed is not None and parsed.format_ok, adapter_version=adapter_version,
        image_size=(frame.original_width, frame.original_height),
        input_size=(frame.input_width, frame.input_height), convention=frame.convention,
        no_box_reason=None if boxes else no_box_reason(text, frame, multi_box))


def answer_form(override: bool | None, run: RunConfig | None) -> bool:
    """True when the served model is asked for a list of boxes: `override` (ServeArgs.multi_box) when set,
    else whether any stage of the run has `multi_box: true` (evaluation's rule); a bare model: False."""
    if override is not None:
        return override
    return run is not None and any(stage.multi_box for stage in run.stages)


@dataclass(frozen=True)
class LiveAdapter:
    """The adapter being served (version 0: the base model) and how it got there."""

    version: int
    path: str | None
    step: int | None
    origin: Origin
    loaded_at: float


class GroundingService:
    """One engine (vLLM or transformers) behind the checks and conversions of the grounding API."""

    def __init__(self, args: ServeArgs) -> None:
        self.args = args
        self.resolved = resolve(args)
        self.knowledge: KnowledgeBase | None = (load_knowledge(self.resolved.knowledge_dir)
                                                if self.resolved.knowledge_dir else None)
        run_dir = self.resolved.run_dir
        run = load_run_config(run_dir) if run_dir else None
        self.trained = (trained_on(run, run_dir, self.knowledge) if run is not None and run_dir
                        else TrainedOn(note="served from a model directory, not a run"))
        self.multi_box = answer_form(args.multi_box, run)
        self.worker = RolloutWorkerCore(self.resolved.model_path, self.resolved.rollout, self.knowledge)
        cap = args.max_new_tokens or self.resolved.rollout.sampling.max_new_tokens  # evaluation's cap
        self.sampling = GREEDY.model_copy(update={"max_new_tokens": cap})
        self.live = LiveAdapter(0, None, None, "start", time.time())
        self._watched_step: int | None = None  # newest checkpoint step seen in the watched run
        start = read_adapter(args.adapter_path) if args.adapter_path else self._latest()
        if start is not None:
            self.load_adapter(start, "start")

    # ---- requests -------------------------------------------------------------------------------------

    def check(self, data: bytes, phrase: object, knowledge_key: object = None,
              name: str = "upload") -> GroundRequest:
        """Validate one upload; BadInput (4xx) names what is wrong. Pure: safe outside the engine thread."""
        text = check_phrase(phrase, self.args.limits)
        key = self._check_knowledge(knowledge_key)
        inject = self.resolved.rollout.inject_knowledge
        choice = choose_knowledge(text, key, self.trained, self.knowledge, inject)
        return GroundRequest(decode_image(data, self.args.limits, name), text, choice)

    def _check_knowledge(self, key: object) -> str | None:
        if key is None or key == "":
            return None
        if not isinstance(key, str):
            raise BadInput(422, "bad_knowledge_key",
                           f"'knowledge_key' must be a string, got {type(key).__name__}")
        if self.knowledge is None or not self.resolved.rollout.inject_knowledge:
            raise BadInput(422, "knowledge_off",
                           "this service injects no prior knowledge; omit 'knowledge_key'")
        if key not in self.knowledge.entries:
            known = ", ".join(sorted(self.knowledge.entries)[:6])
            raise BadInput(422, "unknown_knowledge_key", f"'knowledge_key' {key!r} is unknown; use one of: "
                                                         f"{known}, ... (GET /v1/model lists them)")
        return key

    def ground(self, requests: Sequence[GroundRequest]) -> list[GroundResult]:
        """Greedy answers for a batch, parsed and converted to original pixels, in request order."""
        batch = [serve_request(i, r, self.multi_box) for i, r in enumerate(requests)]
        groups = self.worker.generate(batch, n=1, sampling=self.sampling)
        return [read_answer(g.completions[0].text, g.frame, g.adapter_version, self.multi_box)
                for g in groups]

    # ---- adapters -------------------------------------------------------------------------------------

    def _latest(self) -> AdapterSource | None:
        if self.resolved.run_dir is None:
            return None
        found = latest_adapter(self.resolved.run_dir)
        if found is not None:
            self._watched_step = found.step
        return found

    def load_adapter(self, source: AdapterSource, origin: Origin) -> LiveAdapter:
        """Make `source` live for the next batch (vLLM hot-loads it under a new LoRA id)."""
        self.worker.load_adapter(source.spec())
        self.live = LiveAdapter(source.version, source.path, source.step, origin, time.time())
        return self.live

    def refresh(self) -> bool:
        """Load the watched run's newest complete checkpoint adapter if it is newer than the last one seen;
        True when the live adapter changed."""
        if self.resolved.run_dir is None:
            return False
        found = latest_adapter(self.resolved.run_dir)
        if found is None or (self._watched_step is not None and found.step is not None
                             and found.step <= self._watched_step):
            return False
        self._watched_step = found.step
        self.load_adapter(found, "watch")
        return True

    def reload(self, path: str | None) -> LiveAdapter:
        """The admin call: load the adapter at `path`, or without one the watched run's latest adapter."""
        if path is not None:
            try:
                source = read_adapter(path)
            except AdapterError as exc:
                raise BadInput(422, "bad_adapter", str(exc)) from None
        else:
            if self.resolved.run_dir is None:
                raise BadInput(422, "no_watched_run", "this service watches no run directory; pass "
                                                      "{\"path\": \"<adapter dir>\"}")
            found = self._latest()
            if found is None:
                raise BadInput(422, "no_adapter", f"{self.resolved.run_dir} has no complete checkpoint with "
                                                  "an adapter yet; wait for one or pass a path")
            source = found
        return self.load_adapter(source, "admin")

    def info(self) -> dict[str, Any]:
        """What is being served: model, engine, rollout settings that shape answers, the live adapter."""
        r = self.resolved.rollout
        return {"model_path": str(Path(self.resolved.model_path).resolve()), "family": self.worker.family,
                "convention": self.worker.convention, "engine": r.engine, "run_dir": self.resolved.run_dir,
                "min_pixels": r.min_pixels, "max_pixels": r.max_pixels,
                "max_new_tokens": self.sampling.max_new_tokens, "multi_box": self.multi_box,
                "knowledge_keys": sorted(self.knowledge.entries) if self.knowledge else [],
                "inject_knowledge": self.knowledge is not None and r.inject_knowledge,
                "trained_on": self.trained.as_dict(),
                "adapter": {"version": self.live.version, "path": self.live.path, "step": self.live.step,
                            "origin": self.live.origin, "loaded_at": self.live.loaded_at},
                "limits": self.args.limits.model_dump()}

    def close(self) -> None:
        self.worker.close()

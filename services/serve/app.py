"""The Ray Serve application: a FastAPI ingress over `GroundingService` (services/serve/core.py).

    POST /v1/ground         multipart (image file + phrase) or JSON (base64 image + phrase) -> boxes
    GET  /v1/model          model, engine, live adapter version and where it came from
    POST /v1/admin/reload   load {"path": "<adapter dir>"} now, or without a path the watched run's latest
    GET  /healthz           liveness of this replica (open even when a token is set)
    GET  /                  the page: choose an image, type a phrase, see the boxes; /docs: OpenAPI

Requests are checked off the engine thread, then batched (`@serve.batch`) into one engine call on a single
engine thread, which also runs adapter loads, so generation and reloads never overlap. A watcher thread
polls the run directory for newer checkpoints. `build_app(args)` is the import path the Serve config uses.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve import Application

from services.serve.adapters import AdapterError
from services.serve.config import ServeArgs, ServeUserConfig
from services.serve.core import GroundingService, GroundRequest, GroundResult
from services.serve.http import check_token, read_upload
from services.serve.validate import BadInput, preview_png

STATIC = Path(__file__).resolve().parent / "static"
log = logging.getLogger("ray.serve")


class ImageInfo(BaseModel):
    width: int = Field(description="Width of the uploaded image in pixels (the box's frame).")
    height: int = Field(description="Height of the uploaded image in pixels.")
    kind: str = Field(description="png, jpeg or dicom (sniffed from the bytes).")


class ModelInput(BaseModel):
    width: int = Field(description="Width the model saw after smart_resize, in pixels.")
    height: int = Field(description="Height the model saw, in pixels.")
    convention: str = Field(description="input_pixels (Qwen2.5-VL) or norm1000 (Qwen2-VL).")
    boxes: list[list[float]] = Field(default_factory=list, description="Every parsed box [x1, y1, x2, y2] "
                                     "in the model's convention, clipped, in the answer's order.")
    box: list[float] | None = Field(description="Deprecated (kept for one release; use boxes): the first of "
                                                "boxes, or null.")


class GroundResponse(BaseModel):
    boxes: list[list[float]] = Field(default_factory=list, description=(
        "Every box [x1, y1, x2, y2] in pixels of the uploaded image, in the answer's order. Empty when the "
        "finding is not present (parse_ok true: a model trained with multi_box answered []) or when the "
        "answer holds no usable box (parse_ok false); no_box_reason says which. A single-box model "
        "answers at most one."))
    box: list[float] | None = Field(description="Deprecated (kept for one release; use boxes): the first of "
                                                "boxes, or null.")
    parse_ok: bool = Field(description="The answer parsed: one box, or for a multi-box model a list of "
                                       "boxes, the empty list (not present) included.")
    format_ok: bool = Field(description="The answer followed <think>...</think><answer>...</answer> exactly.")
    text: str = Field(description="The model's raw answer.")
    adapter_version: int = Field(description="LoRA adapter version that answered (0: the base model).")
    latency_ms: float = Field(description="Time in this replica from request to answer, milliseconds.")
    image: ImageInfo
    model_input: ModelInput
    preview_png: str | None = Field(None, description="Base64 PNG of the decoded image (when preview=true).")
    no_box_reason: str | None = Field(None, description="Why boxes is empty: the model answered that the "
                                      "finding is not present (parse_ok true), or the answer is unusable: no "
                                      "answer block, no four numbers, a list member that is not a box (named "
                                      "by its index), an empty box, or a box outside the image the model "
                                      "saw.")
    knowledge_key: str | None = Field(None, description="The prior-knowledge key the prompt was built with "
                                      "(null: none), as training built it for a record with this key.")
    knowledge_source: str = Field("off", description=(
        "How it was chosen: request (knowledge_key sent), phrase (a finding name or synonym of the run's "
        "keys found in the phrase), only_key (the run trained grounding under one key), none (no match), "
        "off (the model was trained without knowledge)."))
    knowledge_match: str | None = Field(None, description="The finding name matched in the phrase (phrase).")
    trained_on: dict[str, Any] = Field(default_factory=dict, description=(
        "What the model was trained on, from the run's own config and manifest: modalities, records per "
        "task, knowledge keys."))


class ReloadBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str | None = Field(None,
                             description="Adapter directory (PEFT LoRA written by medground); omit to load "
                             "the watched run's latest complete checkpoint.")


_GROUND_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image", "phrase"], "properties": {
        "image": {"type": "string", "format": "binary", "description": "PNG, JPEG or DICOM file"},
        "phrase": {"type": "string", "description": "The finding to locate"},
        "knowledge_key": {"type": "string", "description": "Optional prior-knowledge key, e.g. cxr/nodule "
                          "(default: chosen from the phrase by the run's rule, see knowledge_source)"},
        "preview": {"type": "boolean", "description": "Also return a PNG preview of the decoded image"}}}},
    "application/json": {"schema": {"type": "object", "required": ["image", "phrase"], "properties": {
        "image": {"type": "string", "format": "byte", "description": "The file's bytes, base64"},
        "phrase": {"type": "string"}, "knowledge_key": {"type": "string"}, "preview": {"type": "boolean"},
        "filename": {"type": "string"}}}}}}}

_ERROR_BODY = {"content": {"application/json": {"example": {"error": "code",
                                                            "detail": "what is wrong and what to do"}}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed body (JSON, base64, multipart)", **_ERROR_BODY},
    401: {"description": "Missing or wrong bearer token (when MEDGROUND_SERVE_TOKEN is set)", **_ERROR_BODY},
    413: {"description": "Upload over the byte limit, or too many pixels", **_ERROR_BODY},
    415: {"description": "Wrong Content-Type, or not a PNG/JPEG/DICOM file", **_ERROR_BODY},
    422: {"description": "Missing/empty/overlong field, damaged image, DICOM without "
                         "pixels, ...", **_ERROR_BODY}}

api = FastAPI(title="medground grounding", version="1", docs_url="/docs",
              description="Locate a finding in a medical image: image + phrase -> boxes in original pixels.")


@api.exception_handler(BadInput)
async def _bad_input(_: Request, exc: BadInput) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse({"error": exc.code, "detail": exc.message}, status_code=exc.status, headers=headers)


# Above the deployment class: `serve.ingress` pickles the routes when the class is decorated, so a global
# they call must exist by then (defined below the class, it was a NameError in the replica, a 500).
def ground_response(result: GroundResult, checked: GroundRequest, preview: str | None, latency_ms: float,
                    trained: dict[str, Any]) -> GroundResponse:
    """The response to one request: `result`'s boxes (original pixels, rounded to 0.01 px; in the model's
    convention unrounded), `box` (deprecated) their first, and what the request was built with."""
    boxes = [[round(v, 2) for v in b] for b in result.boxes]
    model_boxes = [list(b) for b in result.model_boxes]
    return GroundResponse(
        boxes=boxes, box=boxes[0] if boxes else None, parse_ok=result.parse_ok, format_ok=result.format_ok,
        text=result.text, adapter_version=result.adapter_version, latency_ms=round(latency_ms, 2),
        image=ImageInfo(width=checked.image.width, height=checked.image.height, kind=checked.image.kind),
        model_input=ModelInput(width=result.input_size[0], height=result.input_size[1],
                               convention=result.convention, boxes=model_boxes,
                               box=model_boxes[0] if model_boxes else None),
        preview_png=preview, no_box_reason=result.no_box_reason, knowledge_key=checked.knowledge.key,
        knowledge_source=checked.knowledge.source, knowledge_match=checked.knowledge.matched,
        trained_on=trained)


@serve.deployment(name="Grounding", max_ongoing_requests=32, ray_actor_options={"num_cpus": 1},
                  autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8},
                  user_config=ServeUserConfig().model_dump(), health_check_period_s=10,
                  health_check_timeout_s=60)
@serve.ingress(api)
class GroundingDeployment:
    """One replica: one engine, one engine thread, one watcher thread."""

    def __init__(self, args: dict[str, Any]) -> None:
        self.args = ServeArgs.model_validate(args)
        self.token = os.environ.get(self.args.token_env) or None
        self.engine = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medground-engine")
        # The engine is built on its own thread and only ever used there (vLLM is not thread-safe).
        self.service: GroundingService = self.engine.submit(GroundingService, self.args).result()
        self.user = ServeUserConfig()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="medground-watch", daemon=True)
        self._watcher.start()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.user = ServeUserConfig.model_validate(user_config)
        self._ground_batch.set_max_batch_size(self.user.max_batch_size)
        self._ground_batch.set_batch_wait_timeout_s(self.user.batch_wait_timeout_s)

    def _watch(self) -> None:
        while not self._stop.wait(self.user.watch_interval_s or 1.0):
            if self.user.watch_interval_s <= 0:
                continue
            try:
                if self.engine.submit(self.service.refresh).result():
                    log.info("adapter v%d loaded from %s", self.service.live.version, self.service.live.path)
            except AdapterError as exc:  # a checkpoint with a broken adapter: keep serving the live one
                log.warning("watched run: %s", exc)

    def check_health(self) -> None:
        if not self._watcher.is_alive():
            raise RuntimeError("the adapter watcher thread died; see the replica log")

    def __del__(self) -> None:  # Serve calls it when the replica shuts down
        if not hasattr(self, "_stop"):
            return  # __init__ failed before the engine existed: nothing to release
        self._stop.set()
        self.engine.submit(self.service.close).result(timeout=60)
        self.engine.shutdown(wait=False)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _ground_batch(self, requests: list[GroundRequest]) -> list[GroundResult]:
        return await asyncio.get_running_loop().run_in_executor(self.engine, self.service.ground, requests)

    @api.post("/v1/ground", response_model=GroundResponse, openapi_extra=_GROUND_BODY,
              responses=_ERRORS)
    async def ground(self, request: Request) -> GroundResponse:
        """Locate `phrase` in the image; the boxes are in pixels of the uploaded image."""
        start = time.perf_counter()
        check_token(request, self.token)
        upload = await read_upload(request, self.args.limits)
        checked = await asyncio.to_thread(self.service.check, upload.data, upload.phrase,
                                          upload.knowledge_key,
                                          upload.name)
        result = await self._ground_batch(checked)
        preview = (await asyncio.to_thread(preview_png, checked.image.image, self.args.limits)
                   if upload.preview else None)
        return ground_response(result, checked, preview, (time.perf_counter() - start) * 1000,
                               self.service.trained.as_dict())

    @api.get("/v1/model")
    async def model(self, request: Request) -> dict[str, Any]:
        """The model, engine and the live adapter (version, path, checkpoint step, how it was loaded)."""
        check_token(request, self.token)
        return {**self.service.info(), "auth": self.token is not None, "batching": self.user.model_dump()}

    @api.post("/v1/admin/reload", responses=_ERRORS)
    async def reload(self, request: Request) -> dict[str, Any]:
        """Load an adapter now: {"path": dir}, or an empty body for the watched run's latest checkpoint.
        Applies to the replica that serves the call (every replica polls the watched run by itself)."""
        check_token(request, self.token)
        raw = await request.body()
        try:
            body = ReloadBody.model_validate_json(raw) if raw.strip() else ReloadBody()
        except ValidationError as exc:
            raise BadInput(422, "bad_reload_body", f"the body must be {{\"path\": \"<adapter "
                                                   f"dir>\"}} or empty ({exc.error_count()} "
                                                   f"error(s): {exc.errors()[0]['msg']})") from None
        live = await asyncio.get_running_loop().run_in_executor(self.engine, self.service.reload, body.path)
        return {"version": live.version, "path": live.path, "step": live.step, "origin": live.origin}

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        """Open without a token: liveness and the live adapter version of this replica."""
        return {"status": "ok", "adapter_version": self.service.live.version}

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text())

    @api.get("/static/app.js", include_in_schema=False)
    async def script(self) -> FileResponse:
        return FileResponse(STATIC / "app.js", media_type="text/javascript")


def build_app(args: dict[str, Any]) -> Application:
    """The app builder named by deploy/serve/serve_config.yaml (`services.serve.app:build_app`): `args` is a
    `ServeArgs` mapping (run_dir or model_path, engine, limits, ...); deployment options come from the
    config."""
    ServeArgs.model_validate(args)  # fail at deploy time, with the field named, not in every replica
    return GroundingDeployment.bind(dict(args))

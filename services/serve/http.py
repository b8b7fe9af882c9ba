"""Reading a grounding request off HTTP (Starlette, no Ray): the bearer token, a capped body, and the two
request shapes (multipart form, JSON with base64). Everything refused here is a `BadInput` (4xx).

The body is capped while it streams in (a receive wrapper), so a client that lies about Content-Length or
sends chunks cannot make the replica buffer more than the limit.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message, Receive

from services.serve.config import Limits
from services.serve.validate import BadInput, decode_base64

FORM_TYPES = ("multipart/form-data",)
JSON_TYPES = ("application/json",)
_FIELD_BYTES = 64 * 1024  # form fields other than the file (phrase, knowledge_key, preview)


@dataclass(frozen=True)
class Upload:
    """The raw parts of a request, before the image is decoded: file bytes, phrase, options."""

    data: bytes
    phrase: object
    knowledge_key: object
    preview: bool
    name: str


def check_token(request: Request, expected: str | None) -> None:
    """401 unless `Authorization: Bearer <expected>`; no check when `expected` is None or empty."""
    if not expected:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise BadInput(401, "unauthorized", "this service needs a bearer token: send 'Authorization: Bearer "
                                            "<token>' (the server's MEDGROUND_SERVE_TOKEN)")
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise BadInput(401, "unauthorized",
                       "the bearer token is wrong; use the server's MEDGROUND_SERVE_TOKEN")


def body_cap(limits: Limits) -> int:
    """Bytes a request body may have: the image as base64 (4/3) plus room for the other fields."""
    return limits.max_upload_bytes * 4 // 3 + 4 * _FIELD_BYTES


class _CappedReceive:
    def __init__(self, receive: Receive, cap: int, limits: Limits) -> None:
        self.receive, self.cap, self.limits, self.seen = receive, cap, limits, 0

    async def __call__(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.cap:
                raise _body_too_large(self.seen, self.limits)
        return message


def _body_too_large(size: int, limits: Limits) -> BadInput:
    return BadInput(413, "upload_too_large", f"the request body exceeds {size - 1} bytes, more than an "
                                             f"image of {limits.max_upload_bytes} bytes needs; downscale or "
                                             "recompress it")


async def read_upload(request: Request, limits: Limits) -> Upload:
    """The request's image bytes and fields, from multipart/form-data or JSON; BadInput otherwise."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in FORM_TYPES + JSON_TYPES:
        raise BadInput(415, "unsupported_content_type",
                       f"Content-Type {media or '(none)'!r} is not accepted; send multipart/form-data with "
                       "an 'image' file and a 'phrase' field, or application/json with 'image' (base64) "
                       "and 'phrase'")
    cap = body_cap(limits)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise _body_too_large(int(declared), limits)
    capped = Request(request.scope, receive=_CappedReceive(request.receive, cap, limits))
    if media in JSON_TYPES:
        return _from_json(await capped.body(), limits)
    return await _from_form(capped)


def _from_json(body: bytes, limits: Limits) -> Upload:
    try:
        obj: Any = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadInput(400, "bad_json", f"the body is not valid JSON ({exc}); send "
                                        f"{{\"image\": \"<base64>\", \"phrase\": \"...\"}}") from None
    if not isinstance(obj, dict):
        raise BadInput(422, "bad_json", f"the JSON body must be an object with 'image' and 'phrase', got "
                                        f"{type(obj).__name__}")
    unknown = sorted(set(obj) - {"image", "phrase", "knowledge_key", "preview", "filename"})
    if unknown:
        raise BadInput(422, "unknown_field", f"unknown field(s) {unknown}; accepted: image, phrase, "
                                             "knowledge_key, preview, filename")
    preview = obj.get("preview", False)
    if not isinstance(preview, bool):
        raise BadInput(422, "bad_preview", f"'preview' must be true or false, got {preview!r}")
    name = obj.get("filename") if isinstance(obj.get("filename"), str) else "upload"
    return Upload(decode_base64(obj.get("image"), limits), obj.get("phrase"),
                  obj.get("knowledge_key"), preview,
                  name)


async def _from_form(request: Request) -> Upload:
    # Starlette turns a malformed multipart body into a 400 (HTTPException) by itself.
    async with request.form(max_files=1, max_fields=8, max_part_size=_FIELD_BYTES) as form:
        image = form.get("image")
        if image is None:
            raise BadInput(422, "missing_image", "the form has no 'image' part; attach the file as 'image' "
                                                 "(e.g. curl -F image=@scan.png -F phrase=...)")
        if not isinstance(image, UploadFile):
            raise BadInput(422, "image_not_a_file", "the form's 'image' part is text, not a file; attach "
                                                    "the file (curl -F image=@scan.png, not -F "
                                                    "image=scan.png)")
        data = await image.read()
        preview = str(form.get("preview", "false")).strip().lower()
        if preview not in ("true", "false", "1", "0", ""):
            raise BadInput(422, "bad_preview", f"'preview' must be true or false, got {preview!r}")
        knowledge_key = form.get("knowledge_key")
        return Upload(data, form.get("phrase"), knowledge_key, preview in ("true", "1"),
                      image.filename or "upload")

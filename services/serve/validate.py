"""Checking what a client sent, before anything reaches the engine: every rejection is a `BadInput` with
an HTTP status (4xx) and a message that says what is wrong and what to do.

The format is sniffed from the bytes (PNG and JPEG signatures, the DICOM Part 10 `DICM` marker), never
trusted from a file name or a declared type. The pixel count is read from the header before any pixel is
decoded, so a decompression bomb costs a header parse. Every image goes through the data package's one
reader (DICOM: modality LUT, VOI LUT or window, palette, MONOCHROME1 inversion), as training and
evaluation read it, and what the reader refuses is a 4xx with its message.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass
from typing import Literal

from PIL import Image

from services.data.medimage import ImageTooLarge, MedicalImageError, read_image
from services.serve.config import Limits

ImageKind = Literal["png", "jpeg", "dicom"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
# Chat-template markup (<|im_start|>, <|image_pad|>, ...): in a phrase it would change the prompt's
# structure, and image pads would no longer match the image; no finding is named like that.
_SPECIAL = re.compile(r"<\|[^|<>]{1,40}\|>")


class BadInput(ValueError):
    """A request the service refuses: `status` (400, 401, 413, 415 or 422), a short `code`, the message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class DecodedImage:
    """An upload ready for the prompt: `image` RGB, in the frame the returned box uses (original pixels,
    upright: a photo's EXIF orientation applied, as browsers show it)."""

    image: Image.Image
    kind: ImageKind
    width: int
    height: int


def sniff(data: bytes) -> ImageKind:
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    raise BadInput(415, "unsupported_image",
                   "the upload is not a PNG, JPEG or DICOM file (checked from its first bytes); send one of "
                   "those (DICOM as a Part 10 file with the 128-byte preamble and 'DICM' marker)")


def check_phrase(phrase: object, limits: Limits) -> str:
    """The trimmed phrase, or BadInput: missing, not text, empty, too long, or holding chat markup."""
    if phrase is None:
        raise BadInput(422, "missing_phrase", "the 'phrase' field is missing; send the finding to locate, "
                                              "e.g. phrase=left upper lobe nodule")
    if not isinstance(phrase, str):
        raise BadInput(422, "bad_phrase", f"'phrase' must be a string, got {type(phrase).__name__}")
    text = phrase.strip()
    if not text:
        raise BadInput(422, "empty_phrase", "'phrase' is empty; name the finding to locate, e.g. 'right "
                                            "pleural effusion'")
    if len(text) > limits.max_phrase_chars:
        raise BadInput(422, "phrase_too_long", f"'phrase' has {len(text)} characters, more than the limit of "
                                               f"{limits.max_phrase_chars}; shorten it to the finding's name")
    if _SPECIAL.search(text):
        raise BadInput(422, "bad_phrase",
                       "'phrase' contains chat-template markup like <|...|>; send plain text")
    if "\x00" in text:
        raise BadInput(422, "bad_phrase", "'phrase' contains a NUL character; send plain text")
    return text


def decode_base64(text: object, limits: Limits) -> bytes:
    """Bytes of a base64 string (a `data:...;base64,` prefix is allowed), or BadInput."""
    if text is None:
        raise BadInput(422, "missing_image", "the 'image' field is missing; send the file's bytes as base64 "
                                             "in 'image' (or use multipart/form-data with an 'image' file "
                                             "part)")
    if not isinstance(text, str):
        raise BadInput(422, "bad_base64", f"'image' must be a base64 string, got {type(text).__name__}")
    payload = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
    payload = "".join(payload.split())  # line breaks from `base64` tools are fine
    if len(payload) * 3 // 4 > limits.max_upload_bytes:
        raise _too_large(len(payload) * 3 // 4, limits)
    try:
        data = base64.b64decode(payload, validate=True)
    except binascii.Error as exc:
        raise BadInput(400, "bad_base64", f"'image' is not valid base64 ({exc}); encode the "
                                          "file's bytes with standard base64 (e.g. `base64 -w0 "
                                          "image.png`)") from None
    if not data:
        raise BadInput(422, "empty_image", "'image' is empty; send the file's bytes")
    return data


def _too_large(size: int, limits: Limits) -> BadInput:
    return BadInput(413, "upload_too_large", f"the upload has {size} bytes, more than the limit of "
                                             f"{limits.max_upload_bytes}; downscale or recompress the image")


def decode_image(data: bytes, limits: Limits, name: str = "upload") -> DecodedImage:
    """Check and decode one uploaded file (PNG, JPEG or DICOM) into an RGB image, or raise BadInput.

    Pixels come from the data layer's one reader, as in training and evaluation: whatever it refuses (a
    damaged stream, a compressed DICOM without a decoder, an empty or malformed tag) is a 4xx here with
    the reader's message, which names the tag and the fix."""
    if not data:
        raise BadInput(422, "empty_image", "the image is empty (0 bytes); attach the file")
    if len(data) > limits.max_upload_bytes:
        raise _too_large(len(data), limits)
    kind = sniff(data)
    formats = {"png": ("PNG",), "jpeg": ("JPEG",), "dicom": None}[kind]
    try:
        image = read_image(data, name=name, max_pixels=limits.max_image_pixels,
                           formats=formats).to_pil()
    except ImageTooLarge as exc:
        raise BadInput(413, "too_many_pixels", str(exc)) from None
    except MedicalImageError as exc:
        code = _dicom_code(str(exc)) if kind == "dicom" else "corrupt_image"
        raise BadInput(422, code, str(exc)) from None
    width, height = image.size
    if min(width, height) < limits.min_image_side:
        raise BadInput(422, "image_too_small", f"the image is {width}x{height} pixels; both sides must be "
                                               f"at least {limits.min_image_side}")
    if max(width, height) / min(width, height) > limits.max_aspect_ratio:
        raise BadInput(422, "bad_aspect_ratio", f"the image is {width}x{height} pixels, an aspect ratio "
                                                f"above {limits.max_aspect_ratio:g}; crop it closer to the "
                                                "region")
    return DecodedImage(image.convert("RGB"), kind, width, height)


def _dicom_code(message: str) -> str:
    """A short machine-readable code for the reader's DICOM refusals (the message says the rest)."""
    if "has no pixel data" in message:
        return "dicom_without_pixels"
    if "does not match the header" in message or "header cannot be parsed" in message:
        return "corrupt_dicom"
    return "unreadable_dicom"


def preview_png(image: Image.Image, limits: Limits) -> str:
    """A base64 PNG of what the model saw, at most `preview_side` on the long side (for the page)."""
    preview = image.copy()
    preview.thumbnail((limits.preview_side, limits.preview_side))
    out = io.BytesIO()
    preview.save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")

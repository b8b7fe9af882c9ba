"""Checking what a client sent, before anything reaches the engine: every rejection is a `BadInput` with
an HTTP status (4xx) and a message that says what is wrong and what to do.

The format is sniffed from the bytes (PNG and JPEG signatures, the DICOM Part 10 `DICM` marker), never
trusted from a file name or a declared type. The pixel count is read from the header before any pixel is
decoded, so a decompression bomb costs a header parse. DICOM goes through the data package's reader
(modality LUT, VOI window, MONOCHROME1 inversion), as training and evaluation read it.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
import warnings
from dataclasses import dataclass
from typing import Literal

from PIL import Image

from services.data.medimage import MedicalImageError, dicom_to_image
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
    """An upload ready for the prompt: `image` RGB, in the frame the returned box uses (original pixels)."""

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
                   "the upload is not a PNG, JPEG or DICOM file (checked from its first bytes); send one of those "
                   "(DICOM as a Part 10 file with the 128-byte preamble and 'DICM' marker)")


def check_phrase(phrase: object, limits: Limits) -> str:
    """The trimmed phrase, or BadInput: missing, not text, empty, too long, or holding chat markup."""
    if phrase is None:
        raise BadInput(422, "missing_phrase", "the 'phrase' field is missing; send the finding to locate, "
                                              "e.g. phrase=left upper lobe nodule")
    if not isinstance(phrase, str):
        raise BadInput(422, "bad_phrase", f"'phrase' must be a string, got {type(phrase).__name__}")
    text = phrase.strip()
    if not text:
        raise BadInput(422, "empty_phrase", "'phrase' is empty; name the finding to locate, e.g. 'right pleural "
                                            "effusion'")
    if len(text) > limits.max_phrase_chars:
        raise BadInput(422, "phrase_too_long", f"'phrase' has {len(text)} characters, more than the limit of "
                                               f"{limits.max_phrase_chars}; shorten it to the finding's name")
    if _SPECIAL.search(text):
        raise BadInput(422, "bad_phrase", "'phrase' contains chat-template markup like <|...|>; send plain text")
    if "\x00" in text:
        raise BadInput(422, "bad_phrase", "'phrase' contains a NUL character; send plain text")
    return text


def decode_base64(text: object, limits: Limits) -> bytes:
    """Bytes of a base64 string (a `data:...;base64,` prefix is allowed), or BadInput."""
    if text is None:
        raise BadInput(422, "missing_image", "the 'image' field is missing; send the file's bytes as base64 in "
                                             "'image' (or use multipart/form-data with an 'image' file part)")
    if not isinstance(text, str):
        raise BadInput(422, "bad_base64", f"'image' must be a base64 string, got {type(text).__name__}")
    payload = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
    payload = "".join(payload.split())  # line breaks from `base64` tools are fine
    if len(payload) * 3 // 4 > limits.max_upload_bytes:
        raise _too_large(len(payload) * 3 // 4, limits)
    try:
        data = base64.b64decode(payload, validate=True)
    except binascii.Error as exc:
        raise BadInput(400, "bad_base64", f"'image' is not valid base64 ({exc}); encode the file's bytes with "
                                          f"standard base64 (e.g. `base64 -w0 image.png`)") from None
    if not data:
        raise BadInput(422, "empty_image", "'image' is empty; send the file's bytes")
    return data


def _too_large(size: int, limits: Limits) -> BadInput:
    return BadInput(413, "upload_too_large", f"the upload has {size} bytes, more than the limit of "
                                             f"{limits.max_upload_bytes}; downscale or recompress the image")


def decode_image(data: bytes, limits: Limits, name: str = "upload") -> DecodedImage:
    """Check and decode one uploaded file (PNG, JPEG or DICOM) into an RGB image, or raise BadInput."""
    if not data:
        raise BadInput(422, "empty_image", "the image is empty (0 bytes); attach the file")
    if len(data) > limits.max_upload_bytes:
        raise _too_large(len(data), limits)
    kind = sniff(data)
    image = _decode_dicom(data, limits, name) if kind == "dicom" else _decode_raster(data, kind, limits)
    width, height = image.size
    if min(width, height) < limits.min_image_side:
        raise BadInput(422, "image_too_small", f"the image is {width}x{height} pixels; both sides must be at least "
                                               f"{limits.min_image_side}")
    if max(width, height) / min(width, height) > limits.max_aspect_ratio:
        raise BadInput(422, "bad_aspect_ratio", f"the image is {width}x{height} pixels, an aspect ratio above "
                                                f"{limits.max_aspect_ratio:g}; crop it closer to the region")
    rgb = image if image.mode == "RGB" else _to_rgb(image)
    return DecodedImage(rgb, kind, width, height)


def _check_pixels(width: int, height: int, limits: Limits, frames: int = 1) -> None:
    if width * height * frames > limits.max_image_pixels:
        raise BadInput(413, "too_many_pixels", f"the image declares {width}x{height}"
                                               f"{f'x{frames} frames' if frames > 1 else ''} pixels, more than the "
                                               f"limit of {limits.max_image_pixels}; downscale it first")


def _decode_raster(data: bytes, kind: ImageKind, limits: Limits) -> Image.Image:
    fmt = "PNG" if kind == "png" else "JPEG"
    with warnings.catch_warnings():
        # Our own pixel limit (checked next, from the header) decides; PIL's warning would only be noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=[fmt])
        except Image.DecompressionBombError:
            raise BadInput(413, "too_many_pixels", f"the {fmt} header declares more than the limit of "
                                                   f"{limits.max_image_pixels} pixels; downscale it first") from None
        except (OSError, SyntaxError, ValueError) as exc:  # PIL's ways of saying "cannot parse the header"
            raise BadInput(422, "corrupt_image", f"the {fmt} file cannot be read ({exc}); it is damaged or "
                                                 f"truncated: send the complete file") from None
    _check_pixels(*image.size, limits)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:  # truncated or damaged pixel data
        raise BadInput(422, "corrupt_image", f"the {fmt} pixel data cannot be decoded ({exc}); the file is "
                                             f"truncated or damaged: send the complete file") from None
    return image


def _decode_dicom(data: bytes, limits: Limits, name: str) -> Image.Image:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, struct.error, ValueError, KeyError) as exc:
        raise BadInput(422, "corrupt_dicom", f"the DICOM file cannot be parsed ({exc}); send a complete "
                                             f"Part 10 file") from None
    if "PixelData" not in ds:
        raise BadInput(422, "dicom_without_pixels", "the DICOM file has no pixel data (a structured report, "
                                                    "segmentation or presentation state, or a file cut short?); "
                                                    "send a complete image object")
    if "Rows" not in ds or "Columns" not in ds:
        raise BadInput(422, "corrupt_dicom", "the DICOM file lacks Rows/Columns, so its pixel data cannot be "
                                             "read; send a valid image object")
    _check_pixels(int(ds.Columns), int(ds.Rows), limits, int(ds.get("NumberOfFrames", 1) or 1))
    try:
        return dicom_to_image(ds, name).to_pil()
    except MedicalImageError as exc:  # compressed without a decoder, bad window, ...: the reader says why
        raise BadInput(422, "unreadable_dicom", str(exc)) from None
    except (ValueError, EOFError) as exc:  # pixel data shorter than Rows x Columns x bits says
        raise BadInput(422, "corrupt_dicom", f"the DICOM pixel data cannot be decoded ({exc}); the file is "
                                             f"truncated or its header disagrees with its pixels") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    from rollout.images import load_image  # the rollout side's conversion (16-bit stretch), as in training

    return load_image(image)


def preview_png(image: Image.Image, limits: Limits) -> str:
    """A base64 PNG of what the model saw, at most `preview_side` on the long side (for the page)."""
    preview = image.copy()
    preview.thumbnail((limits.preview_side, limits.preview_side))
    out = io.BytesIO()
    preview.save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")

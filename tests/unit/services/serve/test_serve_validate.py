"""The upload checks of the Serve app: every bad input is a BadInput with a 4xx status and a message that
says what to do; good PNG, JPEG and DICOM uploads decode to RGB in their original size."""

from __future__ import annotations

import base64
import io
import zlib

import numpy as np
import pytest
from dicom_files import real_world_variants
from PIL import Image

from services.serve.config import Limits
from services.serve.validate import BadInput, check_phrase, decode_base64, decode_image, preview_png

LIMITS = Limits(max_upload_bytes=256 * 1024, max_image_pixels=1_000_000, max_phrase_chars=50)


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, 128).save(out, "PNG")
    return out.getvalue()


def _jpeg(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")).save(out, "JPEG")
    return out.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with one tiny IDAT: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR",
                                        ihdr) + chunk(b"IDAT",
                                                      zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _dicom(with_pixels: bool = True, truncate: int = 0) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 30, 40, 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 1000, 2000
    if with_pixels:
        ds.PixelData = (np.arange(30 * 40, dtype=np.uint16) * 3).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    return data[:-truncate] if truncate else data


GOOD_PNG = _png((60, 40))

BAD_IMAGES = [
    ("not an image", b"hello, this is text and not an image at all", 415, "unsupported_image"),
    ("GIF", b"GIF89a" + b"\0" * 64, 415, "unsupported_image"),
    ("empty", b"", 422, "empty_image"),
    ("truncated PNG", GOOD_PNG[: len(GOOD_PNG) // 2], 422, "corrupt_image"),
    ("PNG signature only", GOOD_PNG[:12], 422, "corrupt_image"),
    ("truncated JPEG", _jpeg((64, 64))[:300], 422, "corrupt_image"),
    ("decompression bomb", _png_header_only(30_000, 30_000), 413, "too_many_pixels"),
    ("just over the pixel limit", _png_header_only(1001, 1000), 413, "too_many_pixels"),
    ("over the byte limit", b"\x89PNG\r\n\x1a\n" + b"\0" * (256 * 1024), 413, "upload_too_large"),
    ("DICOM without pixel data", _dicom(with_pixels=False), 422, "dicom_without_pixels"),
    ("DICOM with truncated pixels", _dicom(truncate=1200), 422, "corrupt_dicom"),
    ("DICOM marker and garbage", b"\0" * 128 + b"DICM" + b"garbage" * 10, 422, "dicom_without_pixels"),
    ("1-pixel-high strip", _png((60, 1)), 422, "image_too_small"),
    ("aspect ratio over 200", _png((2010, 10)), 422, "bad_aspect_ratio"),
]


@pytest.mark.parametrize(("data", "status", "code"), [b[1:] for b in BAD_IMAGES],
                         ids=[b[0] for b in BAD_IMAGES])
def test_bad_images_are_4xx_with_a_fix(data: bytes, status: int, code: str) -> None:
    with pytest.raises(BadInput) as info:
        decode_image(data, LIMITS)
    assert (info.value.status, info.value.code) == (status, code)
    assert 400 <= info.value.status < 500
    assert ";" in info.value.message or "send" in info.value.message  # says what to do, not only what broke


@pytest.mark.parametrize(("data", "kind", "size"), [
    (GOOD_PNG, "png", (60, 40)), (_png((50, 30), "I;16"), "png", (50, 30)),
    (_png((20, 20), "L"), "png", (20, 20)),
    (_jpeg((64, 48)), "jpeg", (64, 48)), (_dicom(), "dicom", (40, 30))])
def test_good_images_decode_to_rgb_in_their_original_size(data: bytes, kind: str,
                                                          size: tuple[int, int]) -> None:
    decoded = decode_image(data, LIMITS)
    assert (decoded.kind, decoded.image.size, (decoded.width, decoded.height)) == (kind, size, size)
    assert decoded.image.mode == "RGB"


def test_dicom_goes_through_the_data_readers_window_and_inversion() -> None:
    """MONOCHROME1 with window 1000/2000: stored 0 is below the window, so black before inversion, white
    after."""
    pixels = np.asarray(decode_image(_dicom(), LIMITS).image)[..., 0]
    assert pixels[0, 0] == 255  # stored value 0 -> window 0 -> inverted to 255
    assert pixels[-1, -1] < pixels[0, 0]  # the brightest stored value ends darkest


@pytest.mark.parametrize(("phrase", "code"), [
    (None, "missing_phrase"), ("", "empty_phrase"), ("   \n", "empty_phrase"), ("x" * 51, "phrase_too_long"),
    (42, "bad_phrase"), ("nodule <|image_pad|>", "bad_phrase"), ("a\x00b", "bad_phrase")])
def test_bad_phrases_are_422(phrase: object, code: str) -> None:
    with pytest.raises(BadInput) as info:
        check_phrase(phrase, LIMITS)
    assert (info.value.status, info.value.code) == (422, code)


def test_phrase_is_trimmed_and_may_use_the_whole_limit() -> None:
    assert check_phrase("  left upper lobe nodule \n", LIMITS) == "left upper lobe nodule"
    assert check_phrase("y" * 50, LIMITS) == "y" * 50


@pytest.mark.parametrize(("text", "status", "code"), [
    (None, 422, "missing_image"), (17, 422, "bad_base64"), ("not base64!", 400, "bad_base64"),
    ("abc", 400, "bad_base64"), ("", 422, "empty_image"), ("A" * (400 * 1024), 413, "upload_too_large")])
def test_bad_base64(text: object, status: int, code: str) -> None:
    with pytest.raises(BadInput) as info:
        decode_base64(text, LIMITS)
    assert (info.value.status, info.value.code) == (status, code)


def test_base64_with_data_url_prefix_and_line_breaks() -> None:
    encoded = base64.encodebytes(GOOD_PNG).decode()  # 76-column lines
    assert decode_base64("data:image/png;base64," + encoded, LIMITS) == GOOD_PNG


def test_preview_is_a_png_no_larger_than_the_limit() -> None:
    image = decode_image(_png((2000, 500)), Limits(max_image_pixels=2_000_000)).image
    preview = Image.open(io.BytesIO(base64.b64decode(preview_png(image, Limits(preview_side=256)))))
    assert (preview.format, preview.size) == ("PNG", (256, 64))


DICOM_VARIANTS = real_world_variants()


@pytest.mark.parametrize("kind", list(DICOM_VARIANTS))
def test_real_world_dicom_variants_decode_or_get_a_422_naming_the_tag(kind: str) -> None:
    """The kinds of DICOM that once answered HTTP 500: each decodes, or is a 422 with the reader's message."""
    data, fragment = DICOM_VARIANTS[kind]
    limits = Limits(max_upload_bytes=2 * 1024 * 1024, min_image_side=8)
    if fragment is None:
        decoded = decode_image(data, limits, name="scan.dcm")
        assert decoded.kind == "dicom" and decoded.image.mode == "RGB"
        return
    with pytest.raises(BadInput) as info:
        decode_image(data, limits, name="scan.dcm")
    assert (info.value.status == 422 and fragment in info.value.message
            and info.value.message.startswith("scan.dcm"))

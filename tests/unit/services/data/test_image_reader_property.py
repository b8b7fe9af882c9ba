"""Property test of the image reader: random valid and broken DICOM headers give an image whose contrast
runs the expected way, or a MedicalImageError; never another exception.

Each example is a ramp of stored values rising from the left column to the right. Valid files vary the
photometric interpretation (MONOCHROME1/2, PALETTE COLOR), bits allocated/stored, signedness, rescale
(absent, empty, positive or negative slope), windows (absent, empty, one, several; LINEAR, LINEAR_EXACT,
SIGMOID, a monotone VOI LUT) and palette tables. Broken files take one fault from a list that a reader
must refuse by name. The expected orientation: grey brightness never falls along the ramp for MONOCHROME2
with a positive slope, never rises for MONOCHROME1 or a negative slope (both flips undo each other), and a
palette image equals the palette looked up independently.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from dicom_files import dataset, palette, ramp, to_bytes, voi_lut, with_invalid_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.data.medimage import MedicalImageError, read_image

FAULTS = ("bits stored > bits allocated", "truncated pixel data", "rescale slope not a number",
          "samples per pixel empty")
GREY_FAULTS = ("window width 0", "unknown VOI LUT function")  # a palette image has no VOI transform
PALETTE_FAULTS = ("palette tables missing",)


@st.composite
def headers(draw: st.DrawFn) -> dict[str, Any]:
    photometric = draw(st.sampled_from(["MONOCHROME2", "MONOCHROME1", "PALETTE COLOR"]))
    allocated = 8 if photometric == "PALETTE COLOR" else draw(st.sampled_from([8, 16]))
    stored_bits = draw(st.integers(2, allocated))
    signed = photometric != "PALETTE COLOR" and draw(st.booleans())
    low_limit, high_limit = (-(2 ** (stored_bits - 1)),
                             2 ** (stored_bits - 1) - 1) if signed else (0, 2**stored_bits - 1)
    low = draw(st.integers(low_limit, high_limit))
    high = draw(st.integers(low, high_limit))
    return {
        "photometric": photometric, "allocated": allocated, "stored_bits": stored_bits, "signed": signed,
        "low": low, "high": high, "cols": draw(st.integers(2, 24)),
        "rescale": draw(st.sampled_from([None, "empty", "positive", "negative"])),
        "slope": draw(st.floats(0.05, 8.0)), "intercept": draw(st.floats(-2000, 2000)),
        "voi": draw(st.sampled_from([None, "empty", "LINEAR", "LINEAR_EXACT", "SIGMOID", "LUT", "several"])),
        "center_frac": draw(st.floats(-0.2, 1.2)), "width_frac": draw(st.floats(0.01, 2.0)),
        "palette_seed": draw(st.integers(0, 2**16)),
        "fault": draw(st.sampled_from([None, None, None, *FAULTS,
                                       *(PALETTE_FAULTS if photometric == "PALETTE COLOR"
                                         else GREY_FAULTS)])),
    }


def _build(h: dict[str, Any]) -> tuple[bytes, np.ndarray | None]:
    """The file's bytes and, for PALETTE COLOR, the expected RGB."""
    stored = ramp(3, h["cols"], h["low"], h["high"])
    ds = dataset(stored, photometric=h["photometric"], bits_allocated=h["allocated"],
                 bits_stored=h["stored_bits"],
                 signed=h["signed"])
    expected = None
    if h["photometric"] == "PALETTE COLOR":
        rng = np.random.default_rng(h["palette_seed"])
        tables = tuple(rng.integers(0, 65536, 2 ** h["stored_bits"]) for _ in range(3))
        if h["fault"] != "palette tables missing":
            palette(ds, tables)  # type: ignore[arg-type]
        # Independent lookup: entry / 65535 * 255, rounded.
        expected = np.stack([np.round(t[stored] / 65535 * 255) for t in tables], axis=-1).astype(np.uint8)
    else:
        slope = {"positive": h["slope"], "negative": -h["slope"]}.get(h["rescale"] or "", 1.0)
        if h["rescale"] == "empty":
            ds.RescaleSlope, ds.RescaleIntercept = None, None
        elif h["rescale"] is not None:
            ds.RescaleSlope, ds.RescaleIntercept = round(slope, 4), round(h["intercept"], 2)
        _add_voi(ds, h, slope)
    if h["fault"] == "bits stored > bits allocated":
        ds.BitsStored = h["allocated"] + 1
    if h["fault"] == "truncated pixel data":
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    if h["fault"] == "window width 0":
        ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 0, 0, "LINEAR"
        if "VOILUTSequence" in ds:
            del ds.VOILUTSequence
    if h["fault"] == "unknown VOI LUT function":
        ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 0, 10, "GAMMA"
        if "VOILUTSequence" in ds:
            del ds.VOILUTSequence
    if h["fault"] == "samples per pixel empty":
        ds.SamplesPerPixel = None
    data = to_bytes(ds)
    if h["fault"] == "rescale slope not a number":
        # 4 decimals: no window value (rounded to 2) can hold the same text (hypothesis found width 1.25)
        ds.RescaleSlope, ds.RescaleIntercept = 1.2345, 0
        data = with_invalid_text(to_bytes(ds), "1.2345", "one.23")
    return data, expected


def _add_voi(ds: Any, h: dict[str, Any], slope: float) -> None:
    """A window placed within (or just past) the ramp's modality range."""
    lo_m = min(h["low"] * slope, h["high"] * slope) + (h["intercept"]
                                                       if h["rescale"] in ("positive", "negative") else 0)
    span = max(abs(h["high"] - h["low"]) * abs(slope), 1.0)
    center, width = round(lo_m + h["center_frac"] * span, 2), round(max(1.0, h["width_frac"] * span), 2)
    match h["voi"]:
        case "empty":
            ds.WindowCenter, ds.WindowWidth = None, None
        case "LINEAR" | "LINEAR_EXACT" | "SIGMOID":
            ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, h["voi"]
        case "several":
            ds.WindowCenter, ds.WindowWidth = [center, center + 5], [width, width * 2]
        case "LUT" if h["rescale"] not in ("positive", "negative"):  # a LUT indexes integer stored values
            table = np.sort(np.random.default_rng(h["palette_seed"]).integers(0, 4096, 64))
            voi_lut(ds, int(h["low"]), 12, table)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers())
def test_reader_gives_an_oriented_image_or_a_medical_image_error(h: dict[str, Any]) -> None:
    data, expected = _build(h)
    fault = h["fault"]
    try:
        image = read_image(data, name="generated")
    except MedicalImageError as exc:
        assert fault is not None, f"a valid file was refused: {exc}"
        assert str(exc).startswith("generated") and ";" in str(exc)
        return
    assert fault is None, f"{fault} was not refused"
    pixels = image.pixels.astype(int)
    if expected is not None:
        assert np.array_equal(image.pixels, expected)
        return
    assert pixels.ndim == 2 and pixels.shape == (3, h["cols"])
    steps = np.diff(pixels[0])
    falling = (h["photometric"] == "MONOCHROME1") != (h["rescale"] == "negative")
    assert (steps <= 0).all() if falling else (steps >= 0).all(), (pixels[0], h)
    if h["voi"] in (None, "empty") and h["high"] > h["low"]:  # the fallback window spans the ramp
        assert abs(int(pixels[0, -1]) - int(pixels[0, 0])) >= 200
    if h["voi"] in ("LINEAR", "LINEAR_EXACT", "SIGMOID", "several"):
        assert image.window is not None  # the file's (first) window, not the fallback

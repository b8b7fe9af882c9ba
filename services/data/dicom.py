"""DICOM files to display pixels, with pydicom's own LUT functions (docs/images.md says what and why).

Order of operations (PS3.3 C.11, "Look Up Tables and Presentation States"): stored values -> modality LUT
(Modality LUT Sequence, else Rescale Slope/Intercept) -> VOI LUT (a window given by the caller, else the
file's VOI LUT Sequence, else its first Window Center/Width with VOI LUT Function LINEAR, LINEAR_EXACT or
SIGMOID, else the fallback window every high-bit-depth grey image gets) -> 8 bits -> MONOCHROME1 inverted
last. PALETTE COLOR goes through its palette (PS3.3 C.7.6.3.1.5); YBR is converted to RGB by pydicom.
Enhanced (multi-frame) IODs keep rescale, window and spacing in the Shared / Per-frame Functional Groups
(PS3.3 C.7.6.16): the frame read gets its own (services/data/dicom_groups.py) before pydicom's functions run.
Float and Double Float Pixel Data (7FE0,0008/0009; parametric maps) are decoded by pydicom as well.

Real files break the standard in a few recurring ways, each handled here as a kind: empty elements are
absent (PS3.5 7.4 lets a Type 2 element be empty; exporters also empty Type 1 ones); a file meta without
(0002,0010) is read with the encoding pydicom detected; a value pydicom cannot convert, or a number that
is not one (IS "1A"), in an element the pipeline reads is refused naming it; everything refused is a
`MedicalImageError` naming the file, the tag and the fix. Called only through
`services.data.medimage.read_image`.
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from services.data.medimage import (
    ImageTooLarge,
    MedicalImage,
    MedicalImageError,
    fallback_window,
    to_uint8,
)

# Type 1 elements of the Image Pixel module (PS3.3 C.7.6.3) without which pixel data has no meaning.
REQUIRED = {"Rows": "(0028,0010)", "Columns": "(0028,0011)", "SamplesPerPixel": "(0028,0002)",
            "PhotometricInterpretation": "(0028,0004)", "BitsAllocated": "(0028,0100)",
            "BitsStored": "(0028,0101)", "PixelRepresentation": "(0028,0103)"}
# Decimal-string elements the pixel pipeline reads; a value that is not a number is refused, never guessed.
NUMERIC = {"RescaleSlope": "(0028,1053)", "RescaleIntercept": "(0028,1052)", "WindowCenter": "(0028,1050)",
           "WindowWidth": "(0028,1051)"}
# Pixel data elements: integer, float (32-bit) and double float (64-bit) (PS3.3 C.7.6.3, C.7.6.24).
PIXEL_DATA = {"PixelData": "(7FE0,0010)", "FloatPixelData": "(7FE0,0008)",
              "DoubleFloatPixelData": "(7FE0,0009)"}
# Groups the pixel pipeline reads (Image Pixel and presentation, functional groups, pixel data): an element
# of these that pydicom cannot convert is refused by name; elsewhere it is dropped, since nothing reads it.
PIPELINE_GROUPS = (0x0028, 0x5200, 0x7FE0)
GREY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
# What pydicom's decoders and the header parser raise on damaged or unsupported data (none of ours).
_DECODE_ERRORS = (ValueError, RuntimeError, NotImplementedError, AttributeError, TypeError,
                  KeyError, IndexError,
                  EOFError, OSError, struct.error, OverflowError)
_FIX_HEADER = "fix the header (e.g. with pydicom or dcmodify) or re-export the image"


def read_dataset(source: Path | bytes, name: str, stop_before_pixels: bool = False) -> Any:
    """The dataset of a Part 10 file (path or bytes), or MedicalImageError; pydicom's warnings about
    oddities are silenced because this module checks every element it uses itself."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    fp: Any = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as exc:
        raise MedicalImageError(f"{name} is not a DICOM Part 10 file ({exc}); a dataset without the 128-byte "
                                "preamble and 'DICM' marker can be rewritten with pydicom: "
                                "dcmread(path, force=True).save_as(out, enforce_file_format=True)") from None
    except _DECODE_ERRORS as exc:
        raise MedicalImageError(f"{name}: the DICOM header cannot be parsed "
                                f"({type(exc).__name__}: {exc}); the file is truncated or an "
                                f"element's value representation is broken; {_FIX_HEADER}") from None


def element(ds: Any, tag: Any, name: str, where: str = "") -> Any:
    """`ds[tag]` converted by pydicom, or MedicalImageError naming the tag (a value of the wrong length for
    its VR, an undecodable sequence item, ...)."""
    from pydicom.datadict import keyword_for_tag
    from pydicom.errors import BytesLengthException
    from pydicom.tag import Tag

    try:
        with warnings.catch_warnings():  # pydicom warns about invalid values; the callers check them
            warnings.simplefilter("ignore", UserWarning)
            return ds[tag]
    except (*_DECODE_ERRORS, BytesLengthException) as exc:
        t = Tag(tag)
        label = f"{keyword_for_tag(t) or 'element'} ({t.group:04X},{t.element:04X})"
        raise MedicalImageError(f"{name}: {where}{label} cannot be read ({type(exc).__name__}: "
                                f"{' '.join(str(exc).split())[:200]}); {_FIX_HEADER}") from None


def drop_empty(ds: Any, name: str) -> None:
    """Convert every top-level element; delete those whose value is empty (an empty tag means 'absent',
    PS3.5 7.4). An element pydicom cannot convert is refused by name in the groups the pipeline reads,
    and dropped elsewhere (nothing reads it)."""
    for tag in list(ds.keys()):
        if tag.group in PIPELINE_GROUPS:
            elem = element(ds, tag, name)
        else:
            try:
                elem = element(ds, tag, name)
            except MedicalImageError:
                del ds[tag]
                continue
        if elem.keyword not in PIXEL_DATA and elem.VR != "SQ" and elem.is_empty:
            del ds[tag]


def number_of_frames(ds: Any, name: str) -> int:
    """Number of Frames (0028,0008) as a whole number >= 1 (1 when absent), or MedicalImageError."""
    raw = ds.get("NumberOfFrames", 1)
    if isinstance(raw, int) and raw >= 1:
        return int(raw)
    raise MedicalImageError(f"{name}: NumberOfFrames (0028,0008) holds {raw!r}, not a whole number >= 1 "
                            f"(value representation IS); {_FIX_HEADER}")


def _number(ds: Any, keyword: str, name: str, where: str = "") -> list[float]:
    """A decimal-string element as floats (multi-valued or not), or MedicalImageError naming the tag."""
    raw = ds[keyword].value
    values = list(raw) if isinstance(raw, list | tuple) or type(raw).__name__ == "MultiValue" else [raw]
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise MedicalImageError(f"{name}: {where}{keyword} {NUMERIC[keyword]} holds {raw!r}, not "
                                f"a number (value representation DS); {_FIX_HEADER}") from None
    if not all(np.isfinite(out)):
        raise MedicalImageError(f"{name}: {where}{keyword} {NUMERIC[keyword]} holds {raw!r}, not a finite "
                                f"number; {_FIX_HEADER}")
    return out


def check_header(ds: Any, name: str) -> None:
    """Refuse a dataset whose pixel module cannot be read; normalise the numeric elements in place. Float
    pixel data has no Bits Stored nor Pixel Representation (PS3.3 C.7.6.24): 32 or 64 bits, signed."""
    floating = "PixelData" not in ds
    for keyword, tag in REQUIRED.items():
        if floating and keyword in ("BitsStored", "PixelRepresentation"):
            continue
        if keyword not in ds:
            raise MedicalImageError(f"{name}: the required element {keyword} {tag} is missing or empty, so "
                                    f"the pixel data cannot be interpreted; {_FIX_HEADER}")
        if keyword != "PhotometricInterpretation" and not isinstance(ds[keyword].value, int):
            raise MedicalImageError(f"{name}: {keyword} {tag} holds {ds[keyword].value!r}, not an integer "
                                    f"(value representation US); {_FIX_HEADER}")
    if floating:
        key = next(k for k in PIXEL_DATA if k in ds)
        if int(ds.BitsAllocated) != (32 if key == "FloatPixelData" else 64):
            raise MedicalImageError(f"{name}: {key} {PIXEL_DATA[key]} needs BitsAllocated (0028,0100) "
                                    f"{32 if key == 'FloatPixelData' else 64}, the header says "
                                    f"{ds.BitsAllocated}; {_FIX_HEADER}")
    for keyword in NUMERIC:
        if keyword in ds:
            values = _number(ds, keyword, name)
            ds[keyword].value = values if len(values) > 1 else values[0]
    # A window needs both halves: a lone one is as good as absent. A lone rescale term gets the other's
    # identity value (slope 1, intercept 0), which is what an absent term means (PS3.3 C.11.1.1.2).
    if ("WindowCenter" in ds) != ("WindowWidth" in ds):
        del ds["WindowCenter" if "WindowCenter" in ds else "WindowWidth"]
    if "RescaleSlope" in ds and "RescaleIntercept" not in ds:
        ds.RescaleIntercept = 0.0
    if "RescaleIntercept" in ds and "RescaleSlope" not in ds:
        ds.RescaleSlope = 1.0


def ensure_transfer_syntax(ds: Any, name: str) -> str:
    """The transfer syntax UID; when (0002,0010) is missing, the one matching the encoding pydicom detected
    while reading (native pixel data only: compressed data cannot be told apart)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    syntax = meta.get("TransferSyntaxUID")
    if syntax:
        return str(syntax)
    if ds["PixelData"].is_undefined_length:
        raise MedicalImageError(f"{name}: the file meta lacks Transfer Syntax UID (0002,0010) and the pixel "
                                "data is compressed (encapsulated), so its codec is unknown; set "
                                "(0002,0010) to the codec's UID (e.g. 1.2.840.10008.1.2.4.50 for JPEG "
                                "Baseline) or re-export")
    implicit, little = ds.original_encoding
    meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                              ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian)
    return str(meta.TransferSyntaxUID)


def _check_decoder(syntax_uid: str, name: str) -> None:
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import UID

    syntax = UID(syntax_uid)
    if not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise MedicalImageError(f"{name}: pixel data uses {syntax.name} ({syntax}), which pydicom "
                                "cannot decode; convert the file to an uncompressed syntax (e.g. "
                                "`gdcmconv --raw`)") from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        raise MedicalImageError(f"{name}: pixel data is compressed with {syntax.name} ({syntax}) and no "
                                f"decoder for it is installed; install one of: {needs}")


def decode(ds: Any, name: str, frame: int) -> NDArray[Any]:
    """Stored values of one frame, (rows, cols) or (rows, cols, 3); YBR is already RGB (pydicom's default)."""
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import UID

    syntax = UID(ensure_transfer_syntax(ds, name))
    _check_decoder(syntax, name)
    frames = number_of_frames(ds, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            arr = np.asarray(ds.pixel_array)
    except _DECODE_ERRORS as exc:
        detail = " ".join(str(exc).split())[:300]
        if syntax.is_compressed:
            options = "; ".join(get_decoder(syntax).missing_dependencies)
            fix = ("the stream is damaged or "
                   "needs another decoder: "
                   "install one of: "
                   f"{options}, or convert the "
                   "file (e.g. `gdcmconv "
                   "--raw`)") if options else "the stream is damaged: re-export the image"
            raise MedicalImageError(f"{name}: {syntax.name} ({syntax}) pixel data could not be decoded "
                                    f"({detail}); {fix}") from None
        raise MedicalImageError(f"{name}: the pixel data does not match the header ({detail}); the file is "
                                "truncated or Rows, Columns, Bits Allocated or Samples per Pixel are wrong; "
                                "send the complete file") from None
    samples = int(ds.SamplesPerPixel)
    if frames > 1:
        arr = arr[frame]
    elif samples == 1 and arr.ndim == 3:  # a single frame with a frame axis anyway
        arr = arr[0]
    return arr


def _unit_range(ds: Any) -> tuple[float, float]:
    """(y_min, y_max) of pydicom's windowing output for this dataset: windowing two values far outside
    any window gives them back exactly (PS3.3 C.11.2.1.2: below the window -> y_min, above -> y_max)."""
    from pydicom.pixels.processing import apply_windowing

    with np.errstate(over="ignore"):
        ends = apply_windowing(np.array([-1e300, 1e300]), ds, index=0)
    return float(ends[0]), float(ends[1])


def _voi(values: NDArray[Any], ds: Any, name: str) -> tuple[NDArray[np.float64], tuple[float, float] | None]:
    """Modality values to [0, 1] by the dataset's VOI LUT or window (index 0), or the fallback window."""
    from pydicom.pixels.processing import apply_voi, apply_windowing

    if ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        if item.get("LUTDescriptor") is not None and item.get("LUTData") is not None:
            integral = np.issubdtype(values.dtype, np.integer) or bool(np.all(np.mod(values, 1) == 0))
            lut_in = values.astype(np.int64) if integral else values
            try:
                out = np.asarray(apply_voi(lut_in, ds, index=0), dtype=np.float64)
            except _DECODE_ERRORS as exc:
                raise MedicalImageError(f"{name}: the VOI LUT Sequence (0028,3010) cannot be "
                                        f"applied ({exc}); {_FIX_HEADER}") from None
            return np.clip(out / float(2 ** int(item.LUTDescriptor[2]) - 1), 0.0, 1.0), None
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center = float(_number(ds, "WindowCenter", name)[0])
        width = float(_number(ds, "WindowWidth", name)[0])
        try:
            with np.errstate(over="ignore"):  # SIGMOID far from the centre: exp overflows to the asymptote
                out = np.asarray(apply_windowing(values, ds, index=0), dtype=np.float64)
            y_min, y_max = _unit_range(ds)
        except ValueError as exc:  # width below the function's minimum, an unknown VOI LUT Function
            raise MedicalImageError(f"{name}: the window in (0028,1050)/(0028,1051)/(0028,1056) cannot be "
                                    f"applied ({exc}); {_FIX_HEADER}, or pass a window") from None
        return np.clip((out - y_min) / (y_max - y_min), 0.0, 1.0), (center, width)
    unit, window = fallback_window(values)
    return unit, window


def _prepare(ds: Any, name: str, frame: int, max_pixels: int | None) -> int:
    """Check and normalise the header in place for reading `frame` (empty tags dropped, the frame's
    functional groups at the top level); returns the number of frames."""
    from services.data.dicom_groups import frame_groups

    if not any(k in ds for k in PIXEL_DATA):
        raise MedicalImageError(f"{name} has no pixel data (7FE0,0010) nor float pixel data "
                                "(7FE0,0008/0009) (a structured report or presentation state, or a file "
                                "cut short?); send an image object")
    drop_empty(ds, name)
    frames = number_of_frames(ds, name)
    if not 0 <= frame < frames:
        raise MedicalImageError(f"{name} has {frames} frame(s); frame {frame} does not exist "
                                f"(0..{frames - 1})")
    frame_groups(ds, frame, name)  # Enhanced IODs: this frame's rescale, window and spacing
    check_header(ds, name)
    if max_pixels is not None and int(ds.Rows) * int(ds.Columns) * frames > max_pixels:
        raise ImageTooLarge(f"{name} declares {ds.Columns}x{ds.Rows} pixels x {frames} frame(s), more than "
                            f"the limit of {max_pixels}; downscale it first")
    return frames


def to_display(ds: Any, name: str, window: tuple[float, float] | None = None, frame: int = 0,
               max_pixels: int | None = None) -> MedicalImage:
    """A read dataset as a MedicalImage (see the module docstring for the pipeline)."""
    from pydicom.pixels.processing import apply_color_lut, apply_modality_lut

    frames = _prepare(ds, name, frame, max_pixels)
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if photometric not in (*GREY, *COLOUR, "PALETTE COLOR"):
        raise MedicalImageError(f"{name}: Photometric Interpretation (0028,0004) {photometric!r} is not "
                                f"supported (use one of {', '.join((*GREY, *COLOUR, 'PALETTE COLOR'))}); "
                                "convert the image")
    arr = decode(ds, name, frame)
    spacing, modality = _spacing(ds), (str(ds.get("Modality") or "") or None)

    def done(pixels: NDArray[np.uint8], used: tuple[float, float] | None) -> MedicalImage:
        return MedicalImage(pixels, used, spacing, modality, photometric, frames)

    if photometric == "PALETTE COLOR":
        try:
            rgb = np.asarray(apply_color_lut(arr, ds), dtype=np.float64)
            bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        except _DECODE_ERRORS as exc:
            raise MedicalImageError(f"{name}: PALETTE COLOR needs the palette tables (0028,1101-1103) and "
                                    f"(0028,1201-1203) (or segmented ones); they cannot be used ({exc}); "
                                    f"{_FIX_HEADER}") from None
        return done(to_uint8(rgb / float(2**bits - 1)), None)
    if photometric in COLOUR:
        if arr.ndim != 3:
            raise MedicalImageError(f"{name}: {photometric} needs 3 samples per pixel, the pixel data has "
                                    f"shape {arr.shape}; {_FIX_HEADER}")
        return done(to_uint8(arr.astype(np.float64) / float(2 ** int(ds.BitsStored) - 1)), None)
    if arr.ndim != 2:
        raise MedicalImageError(f"{name}: {photometric} needs 1 sample per pixel, the pixel data has shape "
                                f"{arr.shape}; {_FIX_HEADER}")
    try:
        values = np.asarray(apply_modality_lut(arr, ds))
    except _DECODE_ERRORS as exc:
        raise MedicalImageError(f"{name}: the modality LUT (0028,3000) or rescale (0028,1052-1053) cannot be "
                                f"applied ({exc}); {_FIX_HEADER}") from None
    if window is not None:  # the caller's window replaces the file's VOI transform (LINEAR, PS3.3 C.11.2.1.2)
        for keyword in ("VOILUTSequence", "VOILUTFunction"):
            if keyword in ds:
                del ds[keyword]
        ds.WindowCenter, ds.WindowWidth = float(window[0]), float(window[1])
    if "PixelData" not in ds:  # float data: pydicom's windowing reads these two only for its output range,
        ds.BitsStored, ds.PixelRepresentation = int(ds.BitsAllocated), 1  # which _voi maps onto [0, 1]
    unit, used = _voi(values, ds, name)
    pixels = to_uint8(unit)
    if photometric == "MONOCHROME1":  # high values are dark on this kind of film: invert last
        pixels = np.asarray(255 - pixels, dtype=np.uint8)
    return done(pixels, used)


def _spacing(ds: Any) -> tuple[float, float] | None:
    """(row, column) mm from PixelSpacing or ImagerPixelSpacing; None when absent, unreadable or [0, 0]
    (a placeholder, as in the NEMA WG04 radiographs): unknown, never a made-up spacing."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        raw = ds.get(keyword)
        try:
            spacing = (float(raw[0]), float(raw[1])) if raw is not None and len(raw) >= 2 else None
        except (TypeError, ValueError):
            spacing = None
        if spacing is not None and min(spacing) > 0 and all(np.isfinite(spacing)):
            return spacing
    return None


def header_size(source: Path, name: str) -> tuple[int, int]:
    """(width, height) from the header alone."""
    ds = read_dataset(source, name, stop_before_pixels=True)
    drop_empty(ds, name)
    for keyword in ("Columns", "Rows"):
        if keyword not in ds or not isinstance(ds[keyword].value, int):
            raise MedicalImageError(f"{name}: {keyword} {REQUIRED[keyword]} is missing, empty or not an "
                                    f"integer; {_FIX_HEADER}")
    return int(ds.Columns), int(ds.Rows)

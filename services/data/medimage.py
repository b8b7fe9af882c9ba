"""Reading medical images for display and training: DICOM (pydicom) to 8-bit with the standard pipeline.

DICOM order of operations (PS3.3 C.11): stored values -> modality LUT (rescale slope/intercept, e.g. to
Hounsfield units) -> VOI window (from the config, else the file's WindowCenter/Width or VOI LUT, else a
0.5-99.5 percentile window) -> 8-bit -> MONOCHROME1 inversion last, so bone is bright and air dark whatever
the file's polarity. Compressed pixel data without an installed decoder is a clear error naming the
transfer syntax and the packages that decode it. Volumes (NIfTI, NRRD) are in medvolume.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


class MedicalImageError(ValueError):
    """An image that cannot be read as asked; the message names the file, the reason and the fix."""


@dataclass(frozen=True)
class MedicalImage:
    """A display-ready image: `pixels` (H, W) uint8 grey or (H, W, 3) uint8 RGB, bright = dense."""

    pixels: NDArray[np.uint8]
    window: tuple[float, float] | None  # (center, width) applied, in modality units; None for RGB/8-bit
    pixel_spacing_mm: tuple[float, float] | None  # (row, column); None when absent or a [0, 0] placeholder
    modality: str | None
    photometric: str
    frames: int

    def to_pil(self) -> Image.Image:
        return Image.fromarray(self.pixels, mode="L" if self.pixels.ndim == 2 else "RGB")


def is_dicom(path: str | Path) -> bool:
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with path.open("rb") as fh:  # files without a suffix: the DICM marker after the 128-byte preamble
        head = fh.read(132)
    return head[128:132] == b"DICM"


def _first(value: Any) -> float:
    """A DICOM value that may be multi-valued (WindowCenter '[450, 200]'): its first element."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def linear_window(values: NDArray[np.floating[Any]], center: float, width: float) -> NDArray[np.float64]:
    """DICOM 'LINEAR' VOI function (PS3.3 C.11.2.1.2.1) mapped to [0, 1]; shapes are preserved."""
    if width < 1:
        raise MedicalImageError(f"window width {width} must be >= 1 (DICOM requires it)")
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    scaled = (values - (center - 0.5)) / max(width - 1, 1e-9) + 0.5
    return np.asarray(np.where(values <= low, 0.0, np.where(values > high, 1.0, scaled)), dtype=np.float64)


def _decode(ds: Any, path: Path, frame: int) -> NDArray[Any]:
    from pydicom.pixels.decoders.base import get_decoder

    if "PixelData" not in ds:
        raise MedicalImageError(f"{path} has no pixel data (a DICOM-SR, SEG or presentation state?)")
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            raise MedicalImageError(f"{path}: pixel data uses {syntax.name} ({syntax}), which pydicom cannot "
                                    "decode; convert the file (e.g. `gdcmconv --raw`)") from None
        if not decoder.is_available:
            needs = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
            raise MedicalImageError(f"{path}: pixel data is compressed with {syntax.name} ({syntax}) and no "
                                    f"decoder for it is installed; install one of: {needs}")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 0 <= frame < frames:
        raise MedicalImageError(f"{path} has {frames} frame(s); frame {frame} does not exist (0..{frames - 1})")
    arr = np.asarray(ds.pixel_array)
    samples = int(ds.get("SamplesPerPixel", 1))
    if frames > 1:
        arr = arr[frame]
    elif samples == 1 and arr.ndim == 3:  # single frame but a frame axis anyway
        arr = arr[0]
    return arr


def read_dicom(path: str | Path, window: tuple[float, float] | None = None, frame: int = 0) -> MedicalImage:
    """Read one frame of a DICOM file as a display-ready 8-bit image.

    `window` (center, width) in modality units (HU for CT) overrides the file's VOI window.
    """
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError as exc:
        raise MedicalImageError(f"{path} is not a DICOM file: {exc}") from None
    return dicom_to_image(ds, path, window, frame)


def dicom_to_image(ds: Any, source: str | Path, window: tuple[float, float] | None = None,
                   frame: int = 0) -> MedicalImage:
    """`read_dicom` for a dataset already read (e.g. an upload); `source` names it in error messages."""
    from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

    path = Path(source)
    arr = _decode(ds, path, frame)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    spacing_tag = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    spacing = (float(spacing_tag[0]), float(spacing_tag[1])) if spacing_tag else None
    if spacing is not None and min(spacing) <= 0:
        spacing = None  # [0, 0] placeholders (RG1) are not a spacing
    common = {"pixel_spacing_mm": spacing, "modality": ds.get("Modality"), "photometric": photometric,
              "frames": int(ds.get("NumberOfFrames", 1) or 1)}
    if arr.ndim == 3:  # colour: pydicom already converted YBR to RGB
        if arr.dtype != np.uint8:
            arr = arr.astype(np.float64) * (255.0 / max(1.0, float(arr.max())))
        return MedicalImage(np.asarray(np.clip(arr, 0, 255), dtype=np.uint8), None, **common)
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    if window is not None:
        unit, used = linear_window(values, *window), window
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        if str(ds.get("VOILUTFunction", "LINEAR")).upper() == "SIGMOID":
            unit = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        else:
            unit = linear_window(values, center, width)
        used = (center, width)
    elif "VOILUTSequence" in ds:
        lut_values = np.asarray(apply_voi_lut(arr, ds, index=0), dtype=np.float64)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        unit, used = lut_values / float(2**bits - 1), None
    else:
        low, high = (float(q) for q in np.percentile(values, [0.5, 99.5]))
        center, width = (low + high) / 2, max(high - low, 1.0)
        unit, used = linear_window(values, center, width), (center, width)
    pixels = np.asarray(np.clip(np.round(unit * 255.0), 0, 255), dtype=np.uint8)
    if photometric == "MONOCHROME1":  # high stored values are dark on this kind of film: invert last
        pixels = np.asarray(255 - pixels, dtype=np.uint8)
    return MedicalImage(pixels, used, **common)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of a PNG/JPEG/... (PIL) or DICOM (header only) without decoding pixels."""
    path = Path(path)
    if not path.is_file():
        raise MedicalImageError(f"image {path} does not exist")
    if is_dicom(path):
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return int(ds.Columns), int(ds.Rows)
    with Image.open(path) as img:
        return img.size


def load_image(path: str | Path, window: tuple[float, float] | None = None) -> Image.Image:
    """Any stored image as a PIL image in the frame its record's boxes use (DICOM via read_dicom)."""
    path = Path(path)
    if is_dicom(path):
        return read_dicom(path, window).to_pil()
    with Image.open(path) as img:
        img.load()
        return img.copy()

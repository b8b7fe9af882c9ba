"""The one image reader: every stored or uploaded image (training requests, eval overlays, the contact
sheet, Serve uploads, the hybrid phantoms, mask converters) is opened here and nowhere else.

`read_image` returns display pixels: (H, W) uint8 grey or (H, W, 3) uint8 RGB, bright = dense, in the
stored image's own pixel grid (the frame record boxes use). DICOM goes through services/data/dicom.py
(modality LUT, VOI LUT or window, palette, YBR, MONOCHROME1). Raster files (PNG, JPEG, TIFF, BMP) go
through Pillow: turned upright by their EXIF Orientation (1-8, `ImageOps.exif_transpose`), as viewers,
annotation tools and browsers show them; palettes are applied, alpha dropped, and grey images of more than
8 bits (16-bit PNG, 32-bit TIFF) get the same fallback window as a DICOM without one, so one radiograph
looks the same whatever format it was stored in (docs/images.md). `image_size` and `read_mask` follow the
same orientation rule, so pixels, sizes, masks and boxes share one frame. Everything refused is a
`MedicalImageError` that names the file, the tag or property, and the fix; `ImageTooLarge` when a pixel
limit is exceeded.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
LOSSY_SUFFIXES = (".jpg", ".jpeg")
# The fallback window's percentiles: robust to a few hot or dead pixels and to burnt-in text.
FALLBACK_PERCENTILES = (0.5, 99.5)
EXIF_ORIENTATION = 0x0112  # TIFF/EXIF tag 274: 1 upright, 2-8 mirrored and/or rotated (EXIF 2.3, 4.6.4)
SWAPS_SIDES = (5, 6, 7, 8)  # orientations whose upright image is the stored one turned by 90 degrees


class MedicalImageError(ValueError):
    """An image that cannot be read as asked; the message names the file, the reason and the fix."""


class ImageTooLarge(MedicalImageError):
    """An image whose header declares more pixels than the caller allows (checked before decoding)."""


@dataclass(frozen=True)
class MedicalImage:
    """A display-ready image: `pixels` (H, W) uint8 grey or (H, W, 3) uint8 RGB, bright = dense.

    window: (center, width) applied, in modality units (HU for CT), for grey images of more than 8 bits;
    None for 8-bit and colour images and when a VOI LUT table was applied. pixel_spacing_mm: (row, column)
    in mm, None when unknown. photometric: the DICOM Photometric Interpretation, or Pillow's mode for other
    files. frames: frames in the file (one was read).
    """

    pixels: NDArray[np.uint8]
    window: tuple[float, float] | None
    pixel_spacing_mm: tuple[float, float] | None
    modality: str | None
    photometric: str
    frames: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])

    def to_pil(self) -> Image.Image:
        return Image.fromarray(self.pixels, mode="L" if self.pixels.ndim == 2 else "RGB")


def linear_window(values: NDArray[Any], center: float, width: float) -> NDArray[np.float64]:
    """DICOM 'LINEAR' VOI function (PS3.3 C.11.2.1.2.1) mapped to [0, 1]; shapes are preserved."""
    if width < 1:
        raise MedicalImageError(f"window width {width} must be >= 1 (DICOM requires it)")
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    scaled = (values - (center - 0.5)) / max(width - 1, 1e-9) + 0.5
    return np.asarray(np.where(values <= low, 0.0, np.where(values > high, 1.0, scaled)), dtype=np.float64)


def fallback_window(values: NDArray[Any]) -> tuple[NDArray[np.float64], tuple[float, float]]:
    """The window of any grey image deeper than 8 bits that carries none (DICOM without VOI, 16-bit PNG),
    so both look alike: the 0.5-99.5 percentiles of `values` stretched linearly onto [0, 1]. Returns the
    unit image and the window as (center, width). Not DICOM's LINEAR function: its width >= 1 rule is for
    windows stored in files, and a modality range narrower than 1 (a small rescale slope) must still span
    the display; a constant image maps to 0."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]  # float data (parametric maps) may hold NaN or inf where nothing was measured
    low, high = (float(q) for q in np.percentile(finite, FALLBACK_PERCENTILES)) if finite.size else (0.0, 0.0)
    with np.errstate(invalid="ignore"):  # inf - inf: NaN, mapped to 0 below like every NaN
        unit = np.clip((v - low) / (high - low), 0.0, 1.0) if high > low else (v > high).astype(np.float64)
    return np.nan_to_num(unit, nan=0.0), ((low + high) / 2, high - low)


def to_uint8(unit: NDArray[Any]) -> NDArray[np.uint8]:
    """Values in [0, 1] to 0..255 (rounded, clipped; NaN, a value nothing measured, to 0)."""
    unit = np.nan_to_num(np.asarray(unit, dtype=np.float64), nan=0.0)
    return np.asarray(np.clip(np.round(unit * 255.0), 0, 255), dtype=np.uint8)


def is_dicom(path: str | Path) -> bool:
    """A DICOM suffix, or the 'DICM' marker after the 128-byte preamble (files without a suffix)."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with path.open("rb") as fh:
        head = fh.read(132)
    return head[128:132] == b"DICM"


def _exists(path: Path) -> None:
    if not path.is_file():
        raise MedicalImageError(f"image {path} does not exist; check the record's `image` and --image-root "
                                "(relative paths resolve against the manifest's folder)")


def read_image(source: str | Path | bytes, *, name: str | None = None,
               window: tuple[float, float] | None = None,
               frame: int = 0, max_pixels: int | None = None,
               formats: tuple[str, ...] | None = None) -> MedicalImage:
    """Read a stored image (a path) or an upload (bytes) as display pixels.

    window: (center, width) in modality units; replaces a DICOM file's own VOI transform (ignored for
    other files). frame: which frame of a multi-frame DICOM. max_pixels: refuse (ImageTooLarge) when the
    header declares more, before any pixel is decoded. formats: Pillow formats allowed for non-DICOM
    input (e.g. ("PNG",) when the caller sniffed the bytes). name: what error messages call the input.
    """
    from services.data import dicom

    if isinstance(source, bytes):
        label = name or "upload"
        if len(source) >= 132 and source[128:132] == b"DICM":
            return dicom.to_display(dicom.read_dataset(source, label), label, window, frame, max_pixels)
        return _read_raster(io.BytesIO(source), label, max_pixels, formats)
    path = Path(source)
    label = name or str(path)
    _exists(path)
    if is_dicom(path):
        return dicom.to_display(dicom.read_dataset(path, label), label, window, frame, max_pixels)
    with path.open("rb") as fh:
        return _read_raster(fh, label, max_pixels, formats)


def _open_raster(fp: Any, name: str, max_pixels: int | None,
                 formats: tuple[str, ...] | None) -> tuple[Image.Image, int]:
    """(the raster decoded and turned upright, its frame count), or MedicalImageError / ImageTooLarge. The
    EXIF orientation is read from the header before decoding, as `image_size` reads it."""
    with warnings.catch_warnings():
        # The caller's pixel limit (checked next, from the header) decides; PIL's warning is only noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(fp, formats=list(formats) if formats else None)
        except Image.DecompressionBombError:
            raise ImageTooLarge(f"{name}: the header declares more pixels than Pillow's safety "
                                "limit; downscale it first") from None
        except UnidentifiedImageError:
            raise MedicalImageError(f"{name} is not an image Pillow can read nor a DICOM Part 10 "
                                    "file; store it as PNG, JPEG, TIFF or DICOM") from None
        except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
            raise MedicalImageError(f"{name} cannot be read ({exc}); it is damaged or truncated: "
                                    "send or store the complete file") from None
    if max_pixels is not None and image.width * image.height > max_pixels:
        raise ImageTooLarge(f"{name} declares {image.width}x{image.height} pixels, more than the limit of "
                            f"{max_pixels}; downscale it first")
    orientation = exif_orientation(image)
    try:
        image.load()
    # truncated or damaged pixel data
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise MedicalImageError(f"{name}: the pixel data cannot be decoded ({exc}); the file is truncated or "
                                "damaged: send or store the complete file") from None
    return upright(image, orientation), int(getattr(image, "n_frames", 1))


def exif_orientation(image: Image.Image) -> int:
    """The EXIF Orientation (1-8) of an opened raster, read from its header without decoding pixels; 1
    when absent, out of range, or when the EXIF block cannot be parsed (viewers then show the stored pixels,
    so that is the frame annotations were drawn in). A PNG's eXIf chunk counts before the image data only:
    after it, the size could not be read from the header, and the reader and `image_size` must agree."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1  # PngImageFile.getexif() would decode the whole image to look further
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
    except (SyntaxError, ValueError, TypeError, KeyError, OSError, EOFError, struct.error):
        return 1  # a damaged EXIF block: no orientation, as viewers treat it
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright(image: Image.Image, orientation: int) -> Image.Image:
    """`image` turned as its EXIF `orientation` says (Pillow's `ImageOps.exif_transpose`), any mode."""
    return image if orientation == 1 else ImageOps.exif_transpose(image)


def _read_raster(fp: Any, name: str, max_pixels: int | None, formats: tuple[str, ...] | None) -> MedicalImage:
    image, frames = _open_raster(fp, name, max_pixels, formats)
    mode = image.mode
    window: tuple[float, float] | None = None
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        unit, window = fallback_window(np.asarray(image, dtype=np.float64))
        pixels = to_uint8(unit)
    elif mode in ("1", "L", "LA"):
        pixels = np.asarray(image.convert("L"), dtype=np.uint8)
    elif mode in ("P", "PA"):  # indices into a palette: show the palette's colours
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
        pixels = np.ascontiguousarray(rgb[..., 0]) if grey else rgb
    else:  # RGB, RGBA (alpha dropped), CMYK, YCbCr, LAB, HSV
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return MedicalImage(pixels, window, None, None, mode, frames)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of a stored image from its header alone (no pixels decoded): the upright size, as
    `read_image` returns it (EXIF orientations 5-8 swap the stored sides)."""
    from services.data import dicom

    path = Path(path)
    _exists(path)
    if is_dicom(path):
        return dicom.header_size(path, str(path))
    with path.open("rb") as fh:
        image = _open_raster_header(fh, str(path))
        width, height = image.size
        return (height, width) if exif_orientation(image) in SWAPS_SIDES else (width, height)


def _open_raster_header(fp: Any, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise MedicalImageError(f"{name}: its size cannot be read from the header ({exc}); store it as PNG, "
                                "JPEG, TIFF or DICOM") from None


def load_image(path: str | Path, window: tuple[float, float] | None = None) -> Image.Image:
    """`read_image(path, window=window)` as a PIL image ("L" or "RGB")."""
    return read_image(path, window=window).to_pil()


@dataclass(frozen=True)
class LabelMask:
    """A label image's raw values, (H, W) int64, and whether its format is lossy (JPEG)."""

    values: NDArray[np.int64]
    lossy: bool

    def foreground(self) -> NDArray[np.bool_]:
        """Lesion pixels: any non-zero label (masks store the lesion as 1, 255 or a palette index); a lossy
        mask's compression noise around 0 and 255 is cut at half range instead."""
        return np.asarray(self.values > 127 if self.lossy else self.values > 0)


def read_mask(path: str | Path) -> LabelMask:
    """A segmentation mask's label values, not display pixels: palette PNGs give their indices, grey
    masks their values, colour masks the largest channel (any colour is foreground). Upright by the
    mask's own EXIF orientation, like every raster (`read_image`)."""
    path = Path(path)
    _exists(path)
    with path.open("rb") as fh:
        image, _ = _open_raster(fh, str(path), None, None)
        if image.mode in ("P", "PA", "L", "LA", "1", "I", "I;16", "I;16B", "I;16L", "I;16N"):
            band = image.getchannel(0) if image.mode in ("P", "PA", "LA") else image
            values = np.asarray(band, dtype=np.int64)
        else:
            values = np.asarray(image.convert("RGB"), dtype=np.int64).max(axis=2)
    return LabelMask(values, path.suffix.lower() in LOSSY_SUFFIXES)

"""DICOM reading on real files shipped by pydicom and pydicom-data (the `data` extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from services.data.medimage import MedicalImageError, image_size, linear_window, load_image
from services.data.medimage import read_image as read_dicom

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _real(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} comes with pydicom-data; install the `data` extra (tools/setup_env.sh does)")
    return str(path)


def test_rg1_monochrome1_chest_has_bright_bone_and_dark_air() -> None:
    """RG1_UNCR.dcm: a real 1841 x 1955 CR chest, 15-bit MONOCHROME1 (high stored value = dark)."""
    image = read_dicom(_real("RG1_UNCR.dcm"))
    px = image.pixels
    assert px.shape == (1955, 1841) and px.dtype == np.uint8 and image.photometric == "MONOCHROME1"
    assert image.window == (15000.0, 30000.0)  # the file's own VOI window
    assert image.pixel_spacing_mm is None  # its PixelSpacing is the [0, 0] placeholder
    h, w = px.shape
    air = px[: h // 25, : w // 16].mean()  # outside the body, top-left corner
    spine = px[int(0.3 * h): int(0.6 * h), int(0.47 * w): int(0.53 * w)].mean()  # spine + mediastinum
    lung = px[int(0.25 * h): int(0.45 * h), int(0.2 * w): int(0.35 * w)].mean()  # right lung field
    assert spine > 200 and air < 110 and air < lung < spine, (air, lung, spine)
    # The stored values run the other way round (that is what MONOCHROME1 means).
    raw = pydicom.dcmread(_real("RG1_UNCR.dcm")).pixel_array
    assert raw[: h // 25, : w // 16].mean() > raw[int(0.3 * h): int(0.6 * h),
                                                  int(0.47 * w): int(0.53 * w)].mean()


def test_monochrome1_stub_is_inverted() -> None:
    path = next((TEST_FILES / "dicomdirtests" / "77654033" / "CR1").iterdir())
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    raw = ds.pixel_array.astype(float)
    px = read_dicom(path).pixels.astype(float)
    # the brightest stored pixel must be among the darkest displayed and vice versa
    assert px.flat[int(raw.argmax())] <= px.min() + 1 and px.flat[int(raw.argmin())] >= px.max() - 1


def test_ct_modality_lut_and_window_override() -> None:
    path = TEST_FILES / "CT_small.dcm"
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    # width 2: values <= 400 - 0.5 - 0.5 = 399 -> 0 and > 400 -> 255, so on integer HU a threshold at 400
    bone = read_dicom(path, window=(400.0, 2.0))
    assert bone.window == (400.0, 2.0)
    assert np.array_equal(bone.pixels > 127, hu >= 400)
    assert (hu >= 400).any() and (hu < 400).any()
    # No VOI tags in this file: the fallback window spans the 0.5-99.5 percentiles of the HU values.
    assert "WindowCenter" not in ds
    auto = read_dicom(path)
    low, high = np.percentile(hu, [0.5, 99.5])
    assert auto.window == pytest.approx(((low + high) / 2, high - low))
    assert auto.modality == "CT" and auto.pixel_spacing_mm is not None


def test_linear_window_by_hand() -> None:
    # center 50, width 11: values <= 50 - 0.5 - 5 = 44.5 -> 0, > 54.5 -> 1, 49.5 -> (49.5 - 49.5) / 10 + 0.5
    out = linear_window(np.array([44.5, 49.5, 54.5, 60.0]), 50.0, 11.0)
    assert out.tolist() == [0.0, 0.5, 1.0, 1.0]


def test_multiframe_selection() -> None:
    path = _real("emri_small.dcm")
    frames = pydicom.dcmread(path).pixel_array
    assert frames.shape[0] == 10
    first, last = read_dicom(path, frame=0), read_dicom(path, frame=9)
    assert first.frames == 10 and first.pixels.shape == frames.shape[1:]
    assert not np.array_equal(first.pixels, last.pixels)
    with pytest.raises(MedicalImageError, match="frame 10 does not exist"):
        read_dicom(path, frame=10)


def test_compressed_without_decoder_is_a_clear_error() -> None:
    from pydicom.pixels.decoders.base import get_decoder

    path = TEST_FILES / "MR_small_jpeg_ls_lossless.dcm"
    syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if get_decoder(syntax).is_available:
        pytest.skip("a JPEG-LS decoder is installed here, so this file decodes")
    with pytest.raises(MedicalImageError, match=r"compressed with JPEG-LS Lossless .* install one of"):
        read_dicom(path)


def test_rgb_size_and_load(tmp_path: Path) -> None:
    rgb = read_dicom(_real("US1_UNCR.dcm"))
    assert rgb.pixels.ndim == 3 and rgb.window is None
    assert image_size(TEST_FILES / "CT_small.dcm") == (128, 128)
    assert load_image(TEST_FILES / "CT_small.dcm").size == (128, 128)
    with pytest.raises(MedicalImageError, match="does not exist"):
        image_size(tmp_path / "none.png")

"""The one image reader on generated files: each DICOM VOI function by hand, palettes, YBR, MONOCHROME1,
empty tags, the fallback window shared with 16-bit PNG, raster modes, label masks, and every real-world
fault kind giving the image or a MedicalImageError that names the tag."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from dicom_files import dataset, palette, ramp, real_world_variants, to_bytes, voi_lut, write
from PIL import Image

from services.data.medimage import (
    ImageTooLarge,
    MedicalImageError,
    image_size,
    read_image,
    read_mask,
)


def _grey(ds: object, **kw: object) -> np.ndarray:
    return read_image(to_bytes(ds), **kw).pixels.astype(int)  # type: ignore[arg-type]


def _row(values: list[int], **kw: object) -> object:
    return dataset(np.array([values]), bits_stored=12, **kw)  # type: ignore[arg-type]


def test_linear_and_linear_exact_differ_as_the_standard_says() -> None:
    # LINEAR (PS3.3 C.11.2.1.2.1), c=100 w=10: <= 100-0.5-4.5 = 95 -> 0; > 104 -> 255;
    #   100 -> ((100-99.5)/9 + 0.5) * 255 = 141.67 -> 142.
    # LINEAR_EXACT (C.11.2.1.3.2): <= 95 -> 0; > 105 -> 255; 100 -> 0.5 * 255 = 127.5 -> 128;
    #   104 -> (4/10 + 0.5) * 255 = 229.5 -> 230.
    values = [95, 100, 104, 105, 106]
    linear = _row(values)
    linear.WindowCenter, linear.WindowWidth = 100, 10  # type: ignore[attr-defined]
    exact = _row(values)
    exact.WindowCenter, exact.WindowWidth, exact.VOILUTFunction = 100, 10, "LINEAR_EXACT"  # type: ignore[attr-defined]
    assert _grey(linear)[0].tolist() == [0, 142, 255, 255, 255]
    assert _grey(exact)[0].tolist() == [0, 128, 230, 255, 255]


def test_sigmoid_window() -> None:
    # SIGMOID (C.11.2.1.3.1): 1 / (1 + exp(-4 (x - c) / w)); c=100, w=40: x=100 -> 0.5 -> 128,
    # x=120 -> 1/(1+e^-2) = 0.8808 -> 224.6 -> 225, x=80 -> 0.1192 -> 30.4 -> 30.
    ds = _row([80, 100, 120])
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 100, 40, "SIGMOID"  # type: ignore[attr-defined]
    assert _grey(ds)[0].tolist() == [30, 128, 225]


def test_several_windows_use_the_first_and_rescale_comes_first() -> None:
    # Stored 500..1500 with slope 2, intercept -1000 -> 0..2000 modality units; window 1 is (1000, 2):
    # a threshold at 1000 units = stored 1000. The second window (a wide one) is an alternative view.
    ds = dataset(ramp(2, 11, 500, 1500), bits_stored=12)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    ds.WindowCenter, ds.WindowWidth = [1000, 500], [2, 4000]
    image = read_image(to_bytes(ds))
    assert image.window == (1000.0, 2.0)
    assert image.pixels[0].tolist() == [0] * 5 + [255] * 6  # stored 1000 -> 1000 units -> above 999.5


def test_voi_lut_sequence_maps_through_the_table() -> None:
    # First mapped value 100, 8-bit entries: 100 -> 0, 101 -> 50, 103 -> 150; below -> first entry,
    # beyond the table -> last entry (C.11.2.1.1).
    ds = _row([90, 100, 101, 103, 110])
    voi_lut(ds, 100, 8, np.array([0, 50, 100, 150, 200, 255]))  # type: ignore[arg-type]
    image = read_image(to_bytes(ds))  # type: ignore[arg-type]
    assert image.pixels[0].tolist() == [0, 0, 50, 150, 255] and image.window is None


def test_a_given_window_replaces_the_files_voi() -> None:
    ds = _row([90, 100, 101, 103, 110])
    voi_lut(ds, 100, 8, np.array([0, 50, 100, 150, 200, 255]))  # type: ignore[arg-type]
    # LINEAR (101, 2): <= 101 - 0.5 - 0.5 = 100 -> 0, 101 -> (101 - 100.5) / 1 + 0.5 = 1 -> 255.
    image = read_image(to_bytes(ds), window=(101.0, 2.0))  # type: ignore[arg-type]
    assert image.window == (101.0, 2.0) and image.pixels[0].tolist() == [0, 0, 255, 255, 255]


def test_monochrome1_is_the_exact_inverse() -> None:
    stored = ramp(4, 30, 0, 4095)
    mono2 = read_image(to_bytes(dataset(stored, bits_stored=12))).pixels
    mono1 = read_image(to_bytes(dataset(stored, bits_stored=12, photometric="MONOCHROME1"))).pixels
    assert np.array_equal(mono1, 255 - mono2) and mono2[0, 0] < mono2[0, -1]


def test_palette_colour_goes_through_the_palette() -> None:
    ds = dataset(np.arange(256, dtype=np.uint8).reshape(16, 16), photometric="PALETTE COLOR",
                 bits_allocated=8)
    palette(ds, (np.arange(256) * 257, np.zeros(256), (255 - np.arange(256)) * 257))
    rgb = read_image(to_bytes(ds)).pixels
    idx = np.arange(256).reshape(16, 16)  # 16-bit entries i * 257 -> i * 257 / 65535 * 255 = i
    assert rgb.shape == (16, 16, 3)
    assert np.array_equal(rgb[..., 0], idx) and not rgb[...,
                                                        1].any() and np.array_equal(rgb[..., 2], 255 - idx)


def test_ybr_full_becomes_rgb() -> None:
    # Pure red in YBR_FULL (PS3.3 C.7.6.3.1.2): Y = .299*255 = 76, Cb = 128 - .1687*255 = 85, Cr = 255.
    ybr = np.zeros((4, 4, 3), np.uint8)
    ybr[...] = (76, 85, 255)
    ds = dataset(ybr, photometric="YBR_FULL", bits_allocated=8)
    rgb = read_image(to_bytes(ds)).pixels.astype(int)
    assert rgb.shape == (4, 4, 3) and rgb[0, 0, 0] >= 253 and rgb[0, 0, 1:].max() <= 2


def test_empty_tags_are_absent() -> None:
    stored = ramp(4, 20, 200, 1200)
    plain = read_image(to_bytes(dataset(stored, bits_stored=12)))
    ds = dataset(stored, bits_stored=12)
    ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = (None,) * 5
    empty = read_image(to_bytes(ds))
    assert np.array_equal(empty.pixels, plain.pixels) and empty.window == plain.window


def test_sixteen_bit_png_and_dicom_without_window_look_the_same(tmp_path: Path) -> None:
    """One radiograph stored as a 16-bit PNG, a DICOM, and a rescaled DICOM (intercept -1024, as CT): the
    same fallback window (0.5-99.5 percentiles) gives the same 8-bit pixels."""
    rng = np.random.default_rng(0)
    stored = (rng.random((40, 50)) * 3000 + ramp(40, 50, 0, 1000)).astype(np.uint16)
    Image.fromarray(stored).save(tmp_path / "xray.png")
    png = read_image(tmp_path / "xray.png")
    dcm = read_image(write(tmp_path / "xray.dcm", dataset(stored, bits_stored=12)))
    rescaled_ds = dataset(stored, bits_stored=12)
    rescaled_ds.RescaleSlope, rescaled_ds.RescaleIntercept = 1, -1024
    rescaled = read_image(to_bytes(rescaled_ds))
    assert np.array_equal(png.pixels, dcm.pixels) and np.array_equal(png.pixels, rescaled.pixels)
    assert (png.window == dcm.window
            and rescaled.window == pytest.approx((dcm.window[0] - 1024, dcm.window[1])))


def test_raster_modes(tmp_path: Path) -> None:
    coloured = Image.new("P", (4, 3))
    coloured.putpalette([0, 0, 0, 200, 10, 20] + [0] * 762)
    coloured.putpixel((1, 1), 1)
    coloured.save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").pixels[1, 1].tolist() == [200, 10, 20]
    grey = Image.new("P", (4, 3))
    grey.putpalette([v for i in range(256) for v in (i, i, i)])
    grey.putpixel((2, 0), 77)
    grey.save(tmp_path / "g.png")
    assert read_image(tmp_path / "g.png").pixels.shape == (3,
                                                           4) and read_image(tmp_path / "g.png").pixels[0, 2] == 77  # noqa: E501
    Image.new("RGBA", (5, 5), (10, 20, 30, 0)).save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png").pixels[0, 0].tolist() == [10, 20, 30]
    Image.new("1", (5, 5), 1).save(tmp_path / "b.png")
    assert read_image(tmp_path / "b.png").pixels.max() == 255


def test_label_masks_keep_the_label_value(tmp_path: Path) -> None:
    ones = np.zeros((6, 8), np.uint8)
    ones[2:4, 3:6] = 1  # lesion stored as 1, not 255
    Image.fromarray(ones).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").foreground().sum() == 6
    indexed = Image.fromarray(ones * 2, mode="L").convert("P")
    indexed.putpalette([0, 0, 0, 9, 9, 9, 255, 0, 0] + [0] * 759)
    indexed.save(tmp_path / "pal.png")
    assert read_mask(tmp_path / "pal.png").foreground().sum() == 6
    speckle = np.zeros((32, 32), np.uint8)
    speckle[5:22, 7:19] = 255  # edges off the 8-pixel JPEG blocks: ringing around them
    Image.fromarray(speckle).save(tmp_path / "m.jpg", quality=30)
    mask = read_mask(tmp_path / "m.jpg")
    assert mask.lossy and (mask.values > 0).sum() > mask.foreground().sum() >= 200  # noise is not lesion


def test_sizes_and_missing_files(tmp_path: Path) -> None:
    assert image_size(write(tmp_path / "a.dcm", dataset(ramp(7, 9, 0, 10)))) == (9, 7)
    empty_rows = dataset(ramp(7, 9, 0, 10))
    empty_rows.Rows = None
    with pytest.raises(MedicalImageError, match=r"Rows \(0028,0010\)"):
        image_size(write(tmp_path / "b.dcm", empty_rows))
    with pytest.raises(MedicalImageError, match="does not exist; check the record's `image`"):
        read_image(tmp_path / "absent.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(MedicalImageError, match="not an image Pillow can read"):
        read_image(tmp_path / "text.png")
    with pytest.raises(ImageTooLarge, match="more than the limit of 50"):
        read_image(to_bytes(dataset(ramp(7, 9, 0, 10))), max_pixels=50)
    out = io.BytesIO()
    Image.new("L", (9, 7)).save(out, "PNG")
    with pytest.raises(ImageTooLarge):
        read_image(out.getvalue(), max_pixels=50)


VARIANTS = real_world_variants()


@pytest.mark.parametrize("kind", list(VARIANTS))
def test_real_world_kinds_read_or_name_the_tag(kind: str) -> None:
    data, fragment = VARIANTS[kind]
    if fragment is None:
        image = read_image(data, name=kind)
        assert image.pixels.dtype == np.uint8 and image.size == (16, 16)
        if image.pixels.ndim == 2:  # a ramp: dark on the left, bright on the right
            assert image.pixels[0, 0] < image.pixels[0, -1]
    else:
        with pytest.raises(MedicalImageError) as info:
            read_image(data, name=kind)
        assert str(info.value).startswith(kind) and fragment in str(info.value)
        assert ";" in str(info.value)  # names the fix after the problem

"""DICOM files for tests, generated with pydicom (never real patient data), and the real-world fault kinds
seen in exported datasets (empty tags, no transfer syntax, compressed streams with no decoder or broken,
bad value representations, missing pixel-module tags, short pixel data). Not collected (no test_ prefix).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def dataset(stored: NDArray[Any], *, photometric: str = "MONOCHROME2", bits_allocated: int = 16,
            bits_stored: int | None = None, signed: bool = False, modality: str = "CR",
            patient: str = "PHANTOM-0") -> Dataset:
    """A Secondary Capture dataset holding `stored` (rows, cols) or (rows, cols, 3) as native pixel data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.PatientName = modality, patient, "Anonymous^Phantom"
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.SamplesPerPixel = 3 if stored.ndim == 3 else 1
    if stored.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored or bits_allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(signed)
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}
    ds.PixelData = np.ascontiguousarray(stored.astype(dtype[(bits_allocated, signed)])).tobytes()
    return ds


def with_invalid_text(data: bytes, placeholder: str, value: str) -> bytes:
    """Part 10 bytes with a placeholder value's text replaced by `value` of the same length: how tests
    write the invalid values real files hold (pydicom refuses to write them itself)."""
    raw, new = placeholder.encode(), value.encode()
    if len(raw) != len(new) or data.count(raw) != 1:
        raise ValueError(f"placeholder {placeholder!r} must occur once and match {value!r} in length")
    return data.replace(raw, new)


def replaced_once(data: bytes, old: bytes, new: bytes) -> bytes:
    """Part 10 bytes with one byte string replaced (any length): how tests write elements pydicom refuses
    to write itself, e.g. a US value of odd length."""
    if data.count(old) != 1:
        raise ValueError(f"{old!r} must occur once in the file, found {data.count(old)}")
    return data.replace(old, new)


def enhanced(stored: NDArray[Any], shared: dict[str, dict[str, Any]] | None = None,
             per_frame: list[dict[str, dict[str, Any]]] | None = None, *, modality: str = "CT",
             bits_stored: int = 12) -> Dataset:
    """An Enhanced CT (multi-frame) dataset: `stored` (frames, rows, cols) unsigned; `shared` and each item
    of `per_frame` map a functional group macro (e.g. "PixelValueTransformationSequence") to the elements
    of its one item (PS3.3 C.7.6.16). Nothing of the pixel pipeline is at the top level."""
    from pydicom.uid import EnhancedCTImageStorage

    ds = dataset(stored[0], bits_stored=bits_stored, modality=modality)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = EnhancedCTImageStorage
    ds.NumberOfFrames = int(stored.shape[0])
    ds.PixelData = np.ascontiguousarray(stored.astype(np.uint16)).tobytes()

    def group(macros: dict[str, dict[str, Any]]) -> Dataset:
        item = Dataset()
        for macro, elements in macros.items():
            inner = Dataset()
            for keyword, value in elements.items():
                setattr(inner, keyword, value)
            setattr(item, macro, Sequence([inner]))
        return item

    ds.SharedFunctionalGroupsSequence = Sequence([group(shared or {})])
    ds.PerFrameFunctionalGroupsSequence = Sequence([group(m) for m in per_frame or [{}]
                                                    * int(stored.shape[0])])
    return ds


def float_dataset(values: NDArray[Any], *, double: bool = False) -> Dataset:
    """A Parametric Map-like dataset holding `values` (rows, cols) as Float (32-bit) or Double Float (64-bit)
    Pixel Data: MONOCHROME2, no Bits Stored, High Bit nor Pixel Representation (PS3.3 C.7.6.24)."""
    from pydicom.uid import ParametricMapStorage

    ds = dataset(np.zeros(values.shape, np.uint16), modality="MR")
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = ParametricMapStorage
    for keyword in ("PixelData", "BitsStored", "HighBit", "PixelRepresentation"):
        delattr(ds, keyword)
    ds.BitsAllocated = 64 if double else 32
    ds.NumberOfFrames = 1
    data = np.ascontiguousarray(values.astype("<f8" if double else "<f4")).tobytes()
    setattr(ds, "DoubleFloatPixelData" if double else "FloatPixelData", data)
    return ds


def voi_lut(ds: Dataset, first_map: int, bits: int, table: NDArray[Any]) -> None:
    """Add a VOI LUT Sequence with one LUT (PS3.3 C.11.2: descriptor = entries, first mapped value, bits)."""
    item = Dataset()
    item.LUTDescriptor = [len(table), first_map, bits]
    item["LUTData"] = DataElement(0x00283006, "US", [int(v) for v in table])
    ds.VOILUTSequence = Sequence([item])


def palette(ds: Dataset, tables: tuple[NDArray[Any], NDArray[Any], NDArray[Any]], bits: int = 16) -> None:
    """Red, green and blue palette tables (entries indexed from 0) with their descriptors."""
    for colour, table in zip(("Red", "Green", "Blue"), tables, strict=True):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [len(table), 0, bits])
        # OW data: one 16-bit word per entry whatever the nominal bits (PS3.3 C.7.6.3.1.6)
        setattr(ds, f"{colour}PaletteColorLookupTableData", np.asarray(table).astype("<u2").tobytes())


def to_bytes(ds: Dataset, *, without_transfer_syntax: bool = False) -> bytes:
    """Part 10 bytes (preamble + DICM); optionally with (0002,0010) left out of the file meta, as some
    exporters do (the body then stays explicit VR little endian)."""
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if without_transfer_syntax:
            del ds.file_meta.TransferSyntaxUID
            ds.preamble = b"\0" * 128
            ds.save_as(out, implicit_vr=False, little_endian=True, enforce_file_format=False)
        else:
            ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def write(path: Path, ds: Dataset, **kwargs: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_bytes(ds, **kwargs))
    return path


def ramp(rows: int, cols: int, low: int, high: int) -> NDArray[np.int64]:
    """Stored values rising from `low` (first column) to `high` (last column), the same on every row."""
    return np.tile(np.round(np.linspace(low, high, cols)).astype(np.int64), (rows, 1))


def _base(**kw: Any) -> Dataset:
    return dataset(ramp(16, 16, 200, 1200), bits_stored=12, **kw)


def real_world_variants() -> dict[str, tuple[bytes, str | None]]:
    """The kinds of real-world DICOM that broke readers, as bytes, with the fragment the reader's error
    must contain (None: the file must read). Compressed kinds use pydicom's own test files."""
    variants: dict[str, tuple[bytes, str | None]] = {}
    ds = _base()
    ds.RescaleSlope, ds.RescaleIntercept = None, None  # present but empty (PS3.5 7.4)
    variants["empty rescale tags"] = (to_bytes(ds), None)
    ds = _base()
    ds.WindowCenter, ds.WindowWidth = None, None
    variants["empty window tags"] = (to_bytes(ds), None)
    ds = _base()
    ds.WindowCenter, ds.WindowWidth = 700, None  # a lone centre: no window
    variants["window centre without width"] = (to_bytes(ds), None)
    variants["no transfer syntax UID"] = (to_bytes(_base(), without_transfer_syntax=True), None)
    ds = dataset(np.arange(256, dtype=np.uint8).reshape(16, 16), photometric="PALETTE COLOR",
                 bits_allocated=8)
    palette(ds, (np.arange(256) * 257, np.zeros(256), (255 - np.arange(256)) * 257))
    variants["palette colour"] = (to_bytes(ds), None)
    variants["JPEG Extended without a 12-bit decoder"] = ((PYDICOM_FILES / "JPEG-lossy.dcm").read_bytes(),
                                                         "JPEG Extended")
    variants["broken JPEG 2000 stream"] = (broken_j2k(), "JPEG 2000")
    ds = _base()
    ds.WindowCenter, ds.WindowWidth = 7777, 400
    variants["window centre not a number (DS)"] = (with_invalid_text(to_bytes(ds), "7777", "ab? "),
                                                   "WindowCenter (0028,1050)")
    ds = _base()
    ds.RescaleSlope, ds.RescaleIntercept = 1.25, 0  # written "1.25", then given a decimal comma
    variants["rescale slope with a decimal comma (DS)"] = (with_invalid_text(to_bytes(ds), "1.25", "1,25"),
                                                           "RescaleSlope (0028,1053)")
    ds = _base()
    ds["Rows"] = DataElement(0x00280010, "DS", "16")  # wrong value representation for Rows (US)
    variants["Rows with a DS value representation"] = (to_bytes(ds), "Rows (0028,0010)")
    ds = _base()
    del ds.BitsStored
    variants["missing Bits Stored"] = (to_bytes(ds), "BitsStored (0028,0101)")
    ds = _base()
    ds.PhotometricInterpretation = None
    variants["empty Photometric Interpretation"] = (to_bytes(ds), "PhotometricInterpretation (0028,0004)")
    ds = _base()
    ds.PixelData = ds.PixelData[:300]
    variants["pixel data shorter than the header says"] = (to_bytes(ds), "does not match the header")
    variants["no pixel data"] = (to_bytes(_without_pixels()), "has no pixel data")
    return variants


def _without_pixels() -> Dataset:
    ds = _base()
    del ds.PixelData
    return ds


def broken_j2k() -> bytes:
    """pydicom's JPEG2000.dcm with its codestream cut in half: a decoder is installed (Pillow's OpenJPEG),
    the stream is damaged."""
    ds = pydicom.dcmread(PYDICOM_FILES / "JPEG2000.dcm")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()

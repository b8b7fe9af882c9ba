"""Enhanced (multi-frame) DICOM: the Functional Groups of the frame read (PS3.3 C.7.6.16).

Enhanced CT, MR, XA, PET and parametric maps keep per-image attributes in functional group macros instead
of the top level: the Shared Functional Groups Sequence (5200,9229) holds what every frame shares, the
Per-frame Functional Groups Sequence (5200,9230) one item per frame, and a macro sits in one of the two
(C.7.6.16.1). The display pipeline reads three macros:

- Pixel Value Transformation (0028,9145): Rescale Slope / Intercept / Type (C.7.6.16.2.9), the modality LUT;
- Frame VOI LUT (0028,9132): Window Center / Width, VOI LUT Function, and a VOI LUT Sequence in the "with
  LUT" form (C.7.6.16.2.10, C.7.6.16.2.10b);
- Pixel Measures (0028,9110): Pixel Spacing (C.7.6.16.2.1).

pydicom 3.0's `apply_modality_lut` and `apply_voi_lut` read top-level elements only, so `frame_groups` puts
the frame's macro elements at the top level of the working dataset (the frame's per-frame item first, then
the shared item; they replace any top-level counterpart), where pydicom's own functions then apply them.
Without this an Enhanced CT shows stored values through the fallback window: +40 HU came out 241 of 255
instead of mid-grey in a (40, 400) window.
"""

from __future__ import annotations

from typing import Any

from services.data.dicom import NUMERIC, _number, element
from services.data.medimage import MedicalImageError

# macro sequence -> (its tag, the elements it carries, top-level elements it replaces besides those)
MACROS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "PixelValueTransformationSequence": ("(0028,9145)", ("RescaleSlope", "RescaleIntercept", "RescaleType"),
                                         ("ModalityLUTSequence",)),
    "FrameVOILUTSequence": ("(0028,9132)", ("WindowCenter", "WindowWidth", "VOILUTFunction",
                                            "WindowCenterWidthExplanation", "VOILUTSequence"), ()),
    "PixelMeasuresSequence": ("(0028,9110)", ("PixelSpacing",), ()),
}
SHARED, PER_FRAME = "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"


def _groups(ds: Any, frame: int, name: str) -> list[tuple[str, Any]]:
    """(where, functional group item) for the frame: its per-frame item, then the shared item."""
    out = []
    per_frame = ds.get(PER_FRAME) or []
    if frame < len(per_frame):
        out.append((f"Per-frame Functional Groups Sequence (5200,9230) item {frame + 1} > ",
                    per_frame[frame]))
    elif any(macro in item for item in per_frame for macro in MACROS):
        raise MedicalImageError(f"{name}: the Per-frame Functional Groups Sequence (5200,9230) has "
                                f"{len(per_frame)} item(s), none for frame {frame}, so its rescale and "
                                "window are unknown (each frame needs its own item, PS3.3 C.7.6.16); fix "
                                "the header or re-export the series")
    shared = ds.get(SHARED) or []
    if shared:
        out.append(("Shared Functional Groups Sequence (5200,9229) > ", shared[0]))
    return out


def frame_groups(ds: Any, frame: int, name: str) -> None:
    """Put frame `frame`'s rescale, window and pixel spacing from the functional groups at the top level of
    `ds` (in place; nothing happens without functional groups). A value that is not a number is refused
    naming the sequence it came from."""
    groups = _groups(ds, frame, name)
    for macro, (tag, keywords, replaces) in MACROS.items():
        found = None
        for where, group in groups:
            sequence = element(group, macro, name, where) if macro in group else None
            if sequence is not None and sequence.value:
                found = (f"{where}{macro} {tag} > ", sequence.value[0])
                break
        if found is None:
            continue
        where, item = found
        for keyword in (*keywords, *replaces):
            if keyword in ds:
                del ds[keyword]
        for keyword in keywords:
            if keyword not in item:
                continue
            elem = element(item, keyword, name, where)
            if elem.is_empty:
                continue
            ds[elem.tag] = elem
            if keyword in NUMERIC:
                _number(ds, keyword, name, where)

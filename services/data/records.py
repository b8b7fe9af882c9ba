"""The canonical record: one (image, phrase or question) pair with its ground truth.

Boxes are float `x1, y1, x2, y2` in pixels of the stored image (origin top-left, pixel i spans [i, i+1)),
the one frame every converter writes and every consumer reads (docs/architecture.md, "Coordinate frames").
Box primitives (clipping, IoU, the tight box of a mask) live in rewards/boxes.py.
Model-specific frames (smart_resize input pixels, 0..1000 units) live in rewards/frames.py, never here.
Importable without torch, pyarrow or any image library.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

Task = Literal["grounding", "classification", "grading"]
Box = tuple[float, float, float, float]
Attribute = str | int | float | bool | list[str] | list[int] | list[float]
TASKS: tuple[Task, ...] = ("grounding", "classification", "grading")

# Relative box area buckets (box area / image area) of the small-target benchmark and of `data inspect`;
# docs/algorithms.md, "Evaluation". Upper bounds are exclusive.
SIZE_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("<0.5%", 0.0, 0.005),
    ("0.5-2%", 0.005, 0.02),
    ("2-10%", 0.02, 0.10),
    (">10%", 0.10, float("inf")),
)


class RecordMeta(BaseModel):
    """Acquisition facts that travel with a record; all optional because many sources lack them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    modality: str | None = Field(None, description="Lower-case modality: cxr, ct, mr, us, derm, ... .")
    pixel_spacing_mm: tuple[float, float] | None = Field(
        None, description="(row, column) spacing of the stored image in mm; None when unknown or placeholder."
    )
    window: tuple[float, float] | None = Field(
        None,
        description="(center, width) VOI window applied when the stored image was made, in modality units."
    )
    orientation: str | None = Field(
        None,
        description="Display convention, e.g. 'radiological' (patient right on image left) or 'LPS-axial'."
    )
    orig_width: int | None = Field(None, ge=1, description="Width of the original acquisition in pixels.")
    orig_height: int | None = Field(None, ge=1, description="Height of the original acquisition in pixels.")
    attributes: dict[str, Attribute] = Field(
        default_factory=dict,
        description="Source-specific facts: side, zone, finding, rad_ids, votes, slice index, seed, ...",
    )


class Record(BaseModel):
    """One training or evaluation item.

    `image` is a path relative to the manifest's folder, or absolute. `width`/`height` describe the stored
    image; they may be None only when the source table omits them (VinDr-CXR without its DICOMs), and
    `Manifest.with_sizes` fills them from the image headers before training.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(..., min_length=1,
                    description="Unique within a manifest, e.g. 'nih:00013118_008.png:mass'.")
    image: str = Field(..., min_length=1,
                       description="Image path, relative to the manifest folder or absolute.")
    width: int | None = Field(None, ge=1,
                              description="Stored image width in pixels (None: read from the file).")
    height: int | None = Field(None, ge=1,
                               description="Stored image height in pixels (None: read from the file).")
    task: Task = Field("grounding",
                       description="grounding (boxes), classification (label) or grading (grade).")
    phrase: str = Field(
        ..., min_length=1,
        description="Grounding: the referring phrase ('small nodule in the right upper zone'); "
        "classification/grading: the question. No prompt template; rollout adds it.",
    )
    boxes: tuple[Box, ...] = Field(
        (), description="Grounding targets, x1,y1,x2,y2 float stored-image pixels; several allowed per "
        "phrase; none: a negative (the phrase's finding is absent from the image; `--negatives keep`).",
    )
    label: str | None = Field(None, description="Classification answer (one of `choices` when given).")
    choices: tuple[str, ...] = Field((), description="Classification options shown to the model, if any.")
    grade: int | None = Field(None, ge=0, description="Grading answer: an ordinal 0..max_grade.")
    max_grade: int | None = Field(None, ge=1, description="Highest grade of the scale (grading only).")
    knowledge_key: str | None = Field(
        None,
        description="Key into deploy/knowledge/*.yaml, '<modality>/<finding>' lower case, e.g. 'cxr/nodule'."
    )
    source: str = Field("unknown", min_length=1,
                        description="Dataset of origin: synthetic_cxr, nih_cxr8, ...")
    split: str = Field("train", min_length=1, description="train, val, test (patient-level for real data).")
    meta: RecordMeta = Field(default_factory=RecordMeta, description="Spacing, window, orientation, extras.")

    @field_validator("boxes")
    @classmethod
    def _boxes_in_image(cls, boxes: tuple[Box, ...], info: ValidationInfo) -> tuple[Box, ...]:
        width, height = info.data.get("width"), info.data.get("height")
        for i, (x1, y1, x2, y2) in enumerate(boxes):
            if not (x1 < x2 and y1 < y2):
                raise ValueError(f"box {i} {[x1, y1, x2, y2]} must have x1 < x2 and y1 < y2 (xyxy, not xywh)")
            if min(x1, y1) < 0:
                raise ValueError(f"box {i} {[x1, y1, x2, y2]} has a negative coordinate; clip it to the "
                                 "image")
            if (width is not None and x2 > width) or (height is not None and y2 > height):
                raise ValueError(f"box {i} {[x1, y1, x2, y2]} extends past the {width}x{height} image; "
                                 "boxes are in stored-image pixels")
        return boxes

    @field_validator("knowledge_key")
    @classmethod
    def _lower_key(cls, key: str | None) -> str | None:
        if key is not None and key != key.lower():
            raise ValueError(f"knowledge_key {key!r} must be lower case, like 'cxr/nodule'")
        return key

    @model_validator(mode="after")
    def _answer_for_task(self) -> Record:
        # Messages start with the field at fault: manifest errors report it as the field.
        match self.task:
            case "grounding":
                pass  # no box: a negative record, the finding asked about is absent (issue 31)
            case "classification":
                if self.label is None:
                    raise ValueError("label: a classification record needs a label")
                if self.choices and self.label not in self.choices:
                    raise ValueError(f"label: {self.label!r} is not one of choices {list(self.choices)}")
            case "grading":
                if self.grade is None or self.max_grade is None:
                    raise ValueError("grade: a grading record needs grade and max_grade")
                if self.grade > self.max_grade:
                    raise ValueError(f"grade: {self.grade} exceeds max_grade {self.max_grade}")
        return self

    @property
    def is_negative(self) -> bool:
        """A grounding record with no box: its phrase names a finding the image does not show."""
        return self.task == "grounding" and not self.boxes

    def relative_area(self) -> float | None:
        """Largest box area over image area, in [0, 1]; None without boxes or a known size."""
        if not self.boxes or self.width is None or self.height is None:
            return None
        return max((x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in self.boxes) / (self.width * self.height)


def size_bucket(relative_area: float) -> str:
    """Name of the SIZE_BUCKETS bucket holding `relative_area` (box area / image area, in [0, 1])."""
    for name, low, high in SIZE_BUCKETS:
        if low <= relative_area < high:
            return name
    raise ValueError(f"relative area {relative_area} is negative; it must be box area / image area >= 0")


def xywh_to_xyxy(x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
    """(x, y, w, h) top-left + size, as in COCO, NIH, RSNA and MS-CXR, to (x1, y1, x2, y2)."""
    return (float(x), float(y), float(x) + float(w), float(y) + float(h))

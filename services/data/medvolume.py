"""Volumes (NIfTI with nibabel, NRRD with pynrrd) reoriented so "left" and "right" in phrases are right.

Every volume is brought to LPS+ axis order from its header: axis 0 runs towards the patient's Left,
axis 1 towards Posterior, axis 2 towards Superior. An axial slice shown as rows = axis 1 and columns =
axis 0 is then in the radiological convention: anterior at the top, the patient's right on the image's
left, the same convention as a chest radiograph. Orientation comes from the header (NIfTI affine, NRRD
`space` + `space directions`); a header without it is an error, never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from services.data.medimage import MedicalImageError, fallback_window, linear_window

# NRRD `space` values -> sign flips that take that space's coordinates to RAS.
_NRRD_TO_RAS = {
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "right-posterior-superior": (1.0, -1.0, 1.0),
}
_NRRD_TO_RAS |= {"LPS": _NRRD_TO_RAS["left-posterior-superior"],
                 "RAS": _NRRD_TO_RAS["right-anterior-superior"]}


@dataclass(frozen=True)
class Volume:
    """`data` (X, Y, Z) in LPS+ order; `spacing` (x, y, z) in mm."""

    data: NDArray[Any]
    spacing: tuple[float, float, float]

    @property
    def slices(self) -> int:
        return int(self.data.shape[2])

    def axial(self, k: int) -> NDArray[Any]:
        """Axial slice k (inferior to superior) as (rows, cols) = (anterior->posterior, patient
        right->left)."""
        if not 0 <= k < self.slices:
            raise MedicalImageError(f"slice {k} does not exist; the volume has {self.slices} axial slices")
        return np.asarray(self.data[:, :, k].T)


def _reorient(data: NDArray[Any], ras_affine: NDArray[np.float64]) -> Volume:
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    if data.ndim != 3:
        raise MedicalImageError(f"expected a 3-D volume, got shape {data.shape}; pick one channel or time "
                                "point")
    # nibabel's orientation helpers are untyped.
    start = io_orientation(ras_affine)  # type: ignore[no-untyped-call]
    transform = ornt_transform(start, axcodes2ornt(("L", "P", "S")))  # type: ignore[no-untyped-call]
    zooms = np.sqrt((ras_affine[:3, :3] ** 2).sum(axis=0))
    spacing = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(transform):
        spacing[int(target)] = float(zooms[axis])
    data = np.asarray(apply_orientation(data, transform))  # type: ignore[no-untyped-call]
    return Volume(data, (spacing[0], spacing[1], spacing[2]))


def read_volume(path: str | Path) -> Volume:
    """A NIfTI (.nii, .nii.gz) or NRRD (.nrrd, .nhdr) volume in LPS+ order."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img: Any = nib.load(path)
        header = img.header
        if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
            # nibabel would fall back to a pixdim-only affine (NIfTI-1 "method 1"): a guess that flips left
            # and right for data stored in radiological order, so refuse it.
            raise MedicalImageError(f"{path}: qform_code and sform_code are both 0, so the header does not "
                                    "say which way is the patient's left; set the orientation from the "
                                    "source scanner data (e.g. nibabel's img.set_qform(affine, code=1), or "
                                    "`fslorient -setqformcode 1` after checking it) and convert again")
        return _reorient(np.asarray(img.dataobj), np.asarray(img.affine, dtype=np.float64))
    if name.endswith((".nrrd", ".nhdr")):
        import nrrd

        data, header = nrrd.read(str(path))
        space = header.get("space")
        directions = header.get("space directions")
        if space not in _NRRD_TO_RAS or directions is None:
            raise MedicalImageError(f"{path}: NRRD header lacks a known 'space' ({space!r}) or 'space "
                                    "directions'; without them left and right cannot be told apart")
        dirs = np.asarray(directions, dtype=np.float64)[-3:]  # rows: one direction vector per axis
        affine = np.eye(4)
        affine[:3, :3] = (np.asarray(_NRRD_TO_RAS[space])[:, None] * dirs.T)
        return _reorient(np.asarray(data), affine)
    raise MedicalImageError(f"{path}: unknown volume format; use .nii, .nii.gz, .nrrd or .nhdr")


def to_uint8(slice_: NDArray[Any],
             window: tuple[float, float] | None) -> tuple[NDArray[np.uint8], tuple[float, float]]:
    """Window a slice (the given window, else the reader's fallback window) to 8-bit; returns pixels and
    the window."""
    values = np.asarray(slice_, dtype=np.float64)
    if window is None:
        unit, window = fallback_window(values)
    else:
        unit = linear_window(values, *window)
    return np.asarray(np.round(unit * 255.0), dtype=np.uint8), window

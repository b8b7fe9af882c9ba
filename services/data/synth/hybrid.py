"""Hybrid mode: synthetic findings pasted into a real chest radiograph (pydicom-data's RG1_UNCR.dcm).

The real image replaces the phantom's anatomy; lesions are placed inside lung outlines traced by hand on
RG1 (normalised units, radiological convention: the patient's right lung on the image's left). The
1841 x 1955 radiograph is resized to a square, a 6 % vertical squash that keeps placement simple.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from services.data.synth.phantom import F32, Anatomy, Lung, Scene, rasterise

RG1 = "RG1_UNCR.dcm"
# Lung fields and heart of RG1 read off the image; see the contact sheet of the `hybrid` preset.
RG1_ANATOMY = Anatomy(
    lungs=(Lung("right", 0.29, 0.43, 0.15, 0.29), Lung("left", 0.71, 0.43, 0.15, 0.29)),
    heart=(0.6, 0.64, 0.14, 0.11),
)


def find_rg1() -> str:
    """Path of RG1_UNCR.dcm from pydicom-data; a clear error when the `data` extra is not installed."""
    from pydicom.data import get_testdata_file

    try:
        path = get_testdata_file(RG1, download=False)
    except (ValueError, OSError):
        path = None
    if path is None:
        raise FileNotFoundError(f"{RG1} not found: the hybrid preset needs the real radiograph from "
                                "pydicom-data; install it with `pip install -e .[data]`")
    return str(path)


@lru_cache(maxsize=4)
def real_chest_base(size: int) -> tuple[F32, Scene]:
    """RG1 as an attenuation map (size, size) in [0, 1] (contrast-stretched 1-99 %) and its lung scene."""
    from services.data.medimage import read_image

    grey = read_image(find_rg1()).to_pil().resize((size, size), Image.Resampling.BOX)
    a = np.asarray(grey, dtype=np.float32) / 255.0
    low, high = (float(q) for q in np.percentile(a, [1, 99]))
    a = np.clip((a - low) / max(high - low, 1e-6), 0.0, 1.0).astype(np.float32)
    # The synthetic lesion gains were tuned on a phantom whose lungs sit near 0.14; pull the real lungs
    # towards that range so a given contrast knob means about the same visibility.
    a = np.asarray(a * 0.75, dtype=np.float32)
    a.setflags(write=False)
    return a, rasterise(RG1_ANATOMY, size, size)

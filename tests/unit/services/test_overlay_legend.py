"""Held-out overlays say what they show (issue 35): a legend with 'truth' in the truth colour, 'prediction' in
the prediction colour, the IoU, and the phrase the model was asked to locate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from services.data.manifest import Manifest
from services.data.records import Record
from services.evaluation.heldout import PREDICTION_RGB, TRUTH_RGB, Prediction, legend_lines, write_overlays


def test_overlay_has_a_legend_and_the_phrase(tmp_path: Path) -> None:
    Image.fromarray(np.full((128, 128), 90, dtype=np.uint8)).save(tmp_path / "img.png")
    record = Record(id="r1", image="img.png", width=128, height=128,
                    phrase="small nodule in the left lower zone", boxes=((60, 80, 90, 110),))
    pred = Prediction(record, "", (64, 84, 94, 114), 0.6)
    lines = legend_lines(pred)
    assert lines[0][0] == ("truth", TRUTH_RGB)
    assert ("prediction", PREDICTION_RGB) in lines[0] and "IoU 0.60" in "".join(t for t, _ in lines[0])
    assert lines[1][0][0] == record.phrase
    assert legend_lines(Prediction(record, "", None, 0.0))[0][2][0] == "prediction: no box"
    (path,) = write_overlays([pred], Manifest(tmp_path / "m.jsonl", (record,)), tmp_path / "out", limit=1)
    shown = np.asarray(Image.open(path).convert("RGB")).astype(int)
    band = shown[:24]  # the legend's two lines, far above both boxes (drawn from y = 160 at 2x)
    is_colour = lambda rgb: (np.abs(band - np.array(rgb)).sum(axis=2) < 60).sum()  # noqa: E731
    assert is_colour(TRUTH_RGB) > 5 and is_colour(PREDICTION_RGB) > 5  # the words in the boxes' colours
    assert (np.abs(band[13:24] - 255).sum(axis=2) < 60).sum() > 20  # the phrase, in white, on the second line

"""The Serve endpoint's real routes with a fake engine (tests/serve_fake.py), in process, no model: photos
answered in their upright frame, and every DICOM file pydicom ships (and pydicom-data's, when installed)
answered with 200 or a 4xx naming the problem, never a 5xx."""

from __future__ import annotations

import base64
import io
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageOps
from serve_fake import ANSWER, dark_box, fake_app

from services.serve.config import Limits

CASES = Path(__file__).resolve().parents[3] / "fixtures" / "field_3"


def _post(client: TestClient, name: str, data: bytes) -> object:
    return client.post("/v1/ground", files={"image": (name, data, "application/octet-stream")},
                       data={"phrase": "lesion", "preview": "true"})


def test_photo_stored_sideways_is_answered_and_previewed_upright(monkeypatch: pytest.MonkeyPatch) -> None:
    """derm_exif6.jpg (stored 48 x 64, EXIF Orientation 6): the response's frame, the box and the preview the
    page draws are the upright 64 x 48 photo the browser shows (CSS image-orientation: from-image)."""
    path = CASES / "derm_exif6.jpg"
    upright = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    with fake_app(monkeypatch) as (api, deployment):
        response = _post(TestClient(api), "derm.jpg", path.read_bytes())
    assert response.status_code == 200, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert body["image"] == {"width": 64, "height": 48, "kind": "jpeg"} and body["text"] == ANSWER
    assert np.array_equal(np.asarray(deployment.seen[0].image.image), upright)  # what the engine saw
    assert body["box"] == list(dark_box(upright))  # in the upright frame
    preview = Image.open(io.BytesIO(base64.b64decode(body["preview_png"])))
    assert preview.size == (64, 48) and np.array_equal(np.asarray(preview.convert("RGB")), upright)


def _shipped_dicom_files() -> list[Path]:
    """pydicom's own test files, and pydicom-data's when installed (found locally: nothing is downloaded)."""
    from pydicom.data.data_manager import DataTypes, external_data_sources

    files = [p for p in (Path(pydicom.__file__).parent / "data" / "test_files").rglob("*")
             if p.is_file() and p.suffix != ".py"]
    for source in external_data_sources().values():
        files += [Path(p) for p in source.get_paths("**/*", DataTypes.DATASET)]
    return sorted(set(files))


def test_every_dicom_file_pydicom_ships_is_answered_with_200_or_a_4xx(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Measured here: 244 files (pydicom 3.0.2 and pydicom-data 1.0.0) in about 10 s; main answered pydicom's
    badVR.dcm (Number of Frames "1A") with a 500."""
    files = _shipped_dicom_files()
    assert len(files) > 100
    statuses: Counter[int] = Counter()
    start = time.perf_counter()
    with fake_app(monkeypatch, Limits(max_upload_bytes=64 * 2**20, max_image_pixels=50_000_000)) as (api, _):
        client = TestClient(api, raise_server_exceptions=False)
        for path in files:
            response = _post(client, path.name, path.read_bytes())
            status = response.status_code  # type: ignore[attr-defined]
            statuses[status] += 1
            assert status == 200 or 400 <= status < 500, (path, status, response.text)  # type: ignore[attr-defined]
            if status != 200:
                assert response.json()["detail"], path  # type: ignore[attr-defined]
            if path.name == "badVR.dcm":
                assert status == 422 and "NumberOfFrames (0028,0008)" in response.json()["detail"]  # type: ignore[attr-defined]
            if path.name in ("eCT_Supplemental.dcm", "CT_small.dcm", "MR_small.dcm"):
                assert status == 200, (path, response.text)  # type: ignore[attr-defined]
    assert statuses[200] > 100 and sum(statuses.values()) == len(files)
    assert time.perf_counter() - start < 180, "the corpus must stay a bounded unit test"

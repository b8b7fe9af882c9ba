"""The page in headless Chromium through success -> error -> success -> no box (issue 35), against the real
routes on loopback with the engine faked (tests/serve_fake.py: the box of the image's dark pixels).

Before: after an error the previous image, box and coordinates stayed below the error beside the new file's
name; a 112 px image was drawn at 112 px with its label cut at the canvas edge; "no usable box" said no why;
nothing said what the model was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from serve_fake import chromium, fake_app, served_on_loopback

pytestmark = pytest.mark.integration
PIXEL = ("const d = document.getElementById('canvas').getContext('2d')"
         ".getImageData(arguments[0], arguments[1], 1, 1).data; return [d[0], d[1], d[2]];")


def _png(path: Path, size: tuple[int, int], dark: tuple[int, int, int, int]) -> Path:
    rgb = np.full((size[1], size[0], 3), 200, dtype=np.uint8)
    x1, y1, x2, y2 = dark
    rgb[y1:y2, x1:x2] = 30
    Image.fromarray(rgb).save(path)
    return path


def _submit(driver: Any, path: Path, phrase: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.ID, "file").send_keys(str(path))
    driver.find_element(By.ID, "phrase").clear()
    driver.find_element(By.ID, "phrase").send_keys(phrase)
    driver.execute_script("document.body.dataset.state = 'sent'")
    driver.find_element(By.ID, "go").click()
    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.body.dataset.state")
                                    in ("done", "error"))
    return str(driver.execute_script("return document.body.dataset.state"))


def _page(driver: Any) -> dict[str, Any]:
    return driver.execute_script(
        "const c = document.getElementById('canvas');"
        "const t = (id) => document.getElementById(id).textContent;"
        "return {size: [c.width, c.height], box: JSON.parse(document.getElementById('coords').dataset.box),"
        "status: t('status'), coords: t('coords'), reason: t('reason'), trained: t('trained'),"
        "meta: t('meta')};")


def test_success_error_success_clears_and_scales(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    small = _png(tmp_path / "small.png", (112, 112), (0, 0, 40, 30))  # box at the top-left corner
    large = _png(tmp_path / "large.png", (2000, 1000), (1500, 600, 1700, 800))
    wrong = tmp_path / "notes.txt"
    wrong.write_text("not an image")
    with fake_app(monkeypatch) as (api, _), served_on_loopback(api) as url, chromium() as driver:
        driver.get(f"{url}/")
        assert _submit(driver, small, "nodule") == "done"
        page = _page(driver)
        assert page["size"] == [640, 640] and page["box"] == [0, 0, 40, 30]  # 112 px drawn at 640
        assert "chest x-ray" in page["trained"] and "24 grounding" in page["trained"]
        k = 640 / 112
        assert driver.execute_script(PIXEL, 20 * k, 30 * k)[0] > 200  # the bottom edge, red, at scale
        label = [driver.execute_script(PIXEL, x, y)[0] for x in range(4, 60, 2) for y in range(2, 16)]
        assert max(label) > 200  # the label sits inside the canvas (above the box there is no room)

        assert _submit(driver, wrong, "nodule") == "error"
        page = _page(driver)
        assert page["size"] == [1, 1] and page["box"] is None  # the previous image and box are gone
        assert page["coords"] == page["trained"] == page["meta"] == ""
        assert "415" in page["status"] and "notes.txt" in page["status"]

        assert _submit(driver, large, "mass") == "done"
        page = _page(driver)
        assert page["size"] == [640, 320] and page["box"] == [1500, 600, 1700, 800]  # 2000 px drawn at 640
        assert driver.execute_script(PIXEL, int(1500 * 0.32), int(700 * 0.32))[0] > 200

        assert _submit(driver, large, "outside the image") == "done"
        page = _page(driver)
        assert page["box"] is None and "no usable box" in page["status"]
        assert "outside the image" in page["reason"] and "5000" in page["reason"]
        assert json.loads(json.dumps(page["size"])) == [640, 320]  # the image is shown, with no box

"""The page in headless Chromium through success -> error -> success -> no box (issue 35), and a multi-box
model's 0, 1 and 2 boxes (issue 31), against the real routes on loopback with the engine faked
(tests/serve_fake.py: the box of the image's dark pixels, or a multi-box model's fixed answers).

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


def _shot(driver: Any, path: Path) -> None:
    """A screenshot of the result (status, coordinates, the whole canvas) for a person to look at (kept
    under pytest's --basetemp)."""
    from selenium.webdriver.common.by import By

    assert driver.find_element(By.ID, "result").screenshot(str(path)) and path.stat().st_size > 1000


def test_zero_one_and_two_boxes_of_a_multi_box_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Issue 31: a multi-box model's fixed answers (tests/serve_fake.py LISTS, read by the service's own path)
    drawn in turn: two numbered boxes, one box labelled with its coordinates as before, "not found" on the
    image for `[]` (not an error), and a broken list member named as the reason. Screenshots in tmp_path."""
    scan = tmp_path / "scan.png"
    rgb = np.full((300, 400, 3), 200, dtype=np.uint8)
    rgb[40:120, 40:120] = rgb[160:280, 240:360] = 60  # the two lesions the answers box
    Image.fromarray(rgb).save(scan)
    k = 640 / 400  # canvas pixels per image pixel
    with fake_app(monkeypatch) as (api, _), served_on_loopback(api) as url, chromium() as driver:
        driver.set_window_size(1000, 1400)  # tall enough that a screenshot holds the whole 640 x 480 canvas
        driver.get(f"{url}/")
        assert _submit(driver, scan, "two lesions") == "done"
        page = _page(driver)
        _shot(driver, tmp_path / "two.png")
        boxes = driver.execute_script("return JSON.parse(document.getElementById('coords').dataset.boxes)")
        assert boxes == [[40, 40, 120, 120], [240, 160, 360, 280]] and page["box"] == boxes[0]
        assert page["status"] == "Found 2 regions." and "1: x1=40" in page["coords"] and "2: x1=240" in page[
            "coords"]
        first = driver.execute_script(PIXEL, 40 * k, 80 * k)  # box 1's left edge: red
        second = driver.execute_script(PIXEL, 240 * k, 220 * k)  # box 2's left edge: cyan
        assert first[0] > 200 and first[2] < 80 and second[0] < 80 and second[2] > 200, (first, second)
        label = [driver.execute_script(PIXEL, x, y) for x in range(384, 396) for y in range(240, 254)]
        assert any(p[0] < 80 and p[2] > 200 for p in label)  # "2" above box 2, in its colour

        assert _submit(driver, scan, "one lesion") == "done"
        page = _page(driver)
        _shot(driver, tmp_path / "one.png")
        assert page["box"] == [40, 40, 120, 120] and page["status"] == "Found."
        assert page["coords"] == "box (original pixels): x1=40, y1=40, x2=120, y2=120"
        assert driver.execute_script(PIXEL, 240 * k, 220 * k)[0] < 100  # box 2 is gone: the lesion, dark

        assert _submit(driver, scan, "not present") == "done"
        page = _page(driver)
        _shot(driver, tmp_path / "none.png")
        assert page["box"] is None and page["size"] == [640, 480]  # the image is shown
        assert page["status"].startswith("Not found") and page["reason"] == ""
        assert driver.execute_script("return document.getElementById('status').className") != "error"
        banner = [driver.execute_script(PIXEL, x, 24) for x in range(150, 490, 4)]
        assert min(p[0] for p in banner) < 90 and max(p[0] for p in banner) > 240  # dark strip, white text

        assert _submit(driver, scan, "broken list") == "done"
        page = _page(driver)
        _shot(driver, tmp_path / "broken.png")
        assert page["box"] is None and "no usable box" in page["status"]
        assert "list member 1 is not a box" in page["reason"]

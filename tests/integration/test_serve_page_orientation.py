"""The grounding page in headless Chromium against the real routes on loopback (engine faked: no model, no
Ray): a photo stored sideways with EXIF Orientation 6 is shown upright by the browser (CSS
image-orientation: from-image) and answered upright by the server, so the page draws the box where the
browser shows the finding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from serve_fake import chromium, dark_box, fake_app, served_on_loopback

pytestmark = pytest.mark.integration
CASES = Path(__file__).resolve().parents[1] / "fixtures" / "field_3"


def test_page_and_browser_agree_on_an_exif_rotated_photo(monkeypatch: pytest.MonkeyPatch) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = CASES / "derm_exif6.jpg"
    upright = np.asarray(ImageOps.exif_transpose(Image.open(photo)).convert("RGB"))  # 48 x 64 x 3
    x1, y1, x2, y2 = (round(v) for v in dark_box(upright))
    with fake_app(monkeypatch) as (api, _), served_on_loopback(api) as url, chromium("800,800") as driver:
        driver.get(f"{url}/")
        driver.find_element(By.ID, "file").send_keys(str(photo))
        driver.find_element(By.ID, "phrase").send_keys("naevus")
        driver.find_element(By.ID, "go").click()
        WebDriverWait(driver,
                      60).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")
                                        in ("done", "error"))
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", \
            driver.find_element(By.ID, "status").text
        # The browser's own view of the chosen file: upright, 64 x 48 (createImageBitmap honours EXIF).
        shown = driver.execute_async_script(
            "const done = arguments[0];"
            "createImageBitmap(document.getElementById('file').files[0])"
            ".then((b) => done([b.width, b.height]), (e) => done(String(e)));")
        assert shown == [64, 48]
        # drawn enlarged (long side 640 canvas pixels, 10x), in the upright frame
        assert driver.execute_script("const c = document.getElementById('canvas'); return [c.width, "
                                     "c.height];") \
            == [640, 480]
        assert json.loads(driver.find_element(By.ID, "coords").get_attribute("data-box") or "null") == \
            [x1, y1, x2, y2]
        pixel = ("const d = document.getElementById('canvas').getContext('2d')"
                 ".getImageData(arguments[0], arguments[1], 1, 1).data; return [d[0], d[1], d[2]];")
        cy, k = (y1 + y2) // 2, 10  # k: canvas pixels per image pixel
        edge = driver.execute_script(pixel, x1 * k, cy * k + 5)  # the box's left edge, drawn in red
        inside = driver.execute_script(pixel, (x1 + x2) // 2 * k + 5, cy * k + 5)  # the naevus, dark
        sideways = driver.execute_script(pixel, cy * k + 5, cy * k + 5)  # the stored photo's spot: skin
        assert edge[0] > 200 and edge[1] < 80, edge
        assert abs(inside[0] - int(upright[cy, (x1 + x2) // 2, 0])) <= 8 and inside[0] < 128, inside
        assert sideways[0] > 150, sideways

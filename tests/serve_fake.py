"""The Serve app's real routes (services/serve/app.py: upload parsing, checks, response, preview, the page)
in this process, without Ray Serve or a model: the deployment object the routes run on is a stand-in whose
engine answers the box of the image's dark pixels, or for the phrases of `LISTS` a multi-box model's fixed
answer (0, 1 or 2 boxes, or a broken list) read by the service's own parsing (`read_answer`). For tests of
what the endpoint answers that need no model (status codes, frames, previews, the page in a browser). Not
collected (no test_ prefix).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from rollout.images import ImageFrame
from services.serve.config import Limits
from services.serve.core import GroundingService, GroundRequest, GroundResult, read_answer
from services.serve.trained_on import TrainedOn

# What the stand-in says it was trained on (the page shows it beside each result).
TRAINED = TrainedOn(run="fake", manifest="data/demo/manifest.jsonl", splits=("train",),
                    records={"grounding": 24}, sources=("synth-demo",), modalities=("chest x-ray",),
                    grounding_keys={"cxr/nodule": 24})

ANSWER = "<think>dark pixels</think><answer>box</answer>"
OUTSIDE = '<think>far away</think><answer>{"bbox_2d": [5000, 5000, 5100, 5100]}</answer>'
# A multi-box model's fixed answers, by phrase, in input pixels of a frame half the image's size (so the
# conversion into original pixels is exercised: x2); read by the real path (core.read_answer).
LISTS = {
    "not present": "<think>clear lungs</think><answer>[]</answer>",
    "one lesion": '<think>one</think><answer>[{"bbox_2d": [20, 20, 60, 60]}]</answer>',
    "two lesions": '<think>both sides</think><answer>[{"bbox_2d": [20, 20, 60, 60]}, '
                   '{"bbox_2d": [120, 80, 180, 140]}]</answer>',
    "broken list": '<think>oops</think><answer>[{"bbox_2d": [20, 20, 60, 60]}, {"bbox_2d": [1, 2, 3]}]'
                   "</answer>",
}


def dark_box(rgb: np.ndarray) -> tuple[float, float, float, float]:
    """The fake engine's answer in the image's pixels: the extent of pixels whose red channel is below 128
    (the whole image when there are none); pixel i spans [i, i + 1)."""
    ys, xs = np.nonzero(rgb[..., 0] < 128)
    if ys.size == 0:
        return 0.0, 0.0, float(rgb.shape[1]), float(rgb.shape[0])
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


class _Service:
    """GroundingService's request checks (the real ones) without its engine."""

    check = GroundingService.check
    _check_knowledge = GroundingService._check_knowledge

    def __init__(self, limits: Limits) -> None:
        self.args = SimpleNamespace(limits=limits)
        self.knowledge = None
        self.trained = TRAINED
        self.resolved = SimpleNamespace(rollout=SimpleNamespace(inject_knowledge=False))


class FakeDeployment:
    """What GroundingDeployment's routes read from `self`; `_ground_batch` is the fake engine."""

    def __init__(self, limits: Limits, token: str | None = None) -> None:
        self.token, self.args, self.service = token, SimpleNamespace(limits=limits), _Service(limits)
        self.seen: list[GroundRequest] = []

    async def _ground_batch(self, request: GroundRequest) -> GroundResult:
        self.seen.append(request)
        size = (request.image.width, request.image.height)
        if request.phrase in LISTS:  # a multi-box model's fixed answer
            frame = ImageFrame(*size, size[0] // 2, size[1] // 2, "input_pixels")
            return read_answer(LISTS[request.phrase], frame, 0, multi_box=True)
        if request.phrase.startswith("outside"):  # an answer whose box lies past the image: no usable box
            return read_answer(OUTSIDE, ImageFrame(*size, *size, "input_pixels"), 0, multi_box=False)
        box = dark_box(np.asarray(request.image.image))
        return GroundResult(boxes=(box,), model_boxes=(box,), parse_ok=True, text=ANSWER, format_ok=True,
                            adapter_version=0, image_size=size, input_size=size, convention="input_pixels")


@contextmanager
def fake_app(monkeypatch: pytest.MonkeyPatch,
             limits: Limits | None = None) -> Iterator[tuple[Any, FakeDeployment]]:
    """(the FastAPI app of services/serve/app.py, the stand-in its routes run on) for the test's duration.
    Ray Serve resolves a route's `self` through `serve.get_replica_context().servable_object`."""
    from ray import serve

    from services.serve.app import api

    deployment = FakeDeployment(limits or Limits())
    monkeypatch.setattr(serve, "get_replica_context", lambda: SimpleNamespace(servable_object=deployment))
    yield api, deployment


@contextmanager
def chromium(window: str = "1280,900") -> Iterator[Any]:
    """A headless Chromium (selenium) for page tests, `window` its size in px ("W,H"); fails naming the fix
    when it is not installed. Its profile lives in a temporary directory removed when the browser quits."""
    import shutil
    import tempfile

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver_path is None:
        pytest.fail("chromium/chromedriver not on PATH: run `make setup` (tools/install_browser.sh installs "
                    "them)")
    with tempfile.TemporaryDirectory(prefix="mgs-chrome-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", f"--window-size={window}", f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        try:
            yield driver
        finally:
            driver.quit()


@contextmanager
def served_on_loopback(app: Any) -> Iterator[str]:
    """`app` served by uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    import uvicorn

    from learner.distributed import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start on loopback within 30 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)

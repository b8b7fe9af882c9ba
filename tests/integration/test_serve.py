"""The Serve app for real, started as an operator starts it: `medground serve --config` (the shipped
deploy/serve/serve_config.yaml pointed at a test run, one replica) in its own process with its own local Ray,
the vLLM engine, a tiny model taught to answer one box.

One app serves the whole module (the engine starts once): boxes in original pixels for a PNG and a DICOM,
a corpus of bad requests (never a 5xx) then a good one, the page in headless Chromium, adapter reload by
the watched run directory and by the admin call; last, SIGTERM (what systemd and Kubernetes send) stops it
with nothing of its Ray left running.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from dicom_files import real_world_variants
from serve_fake import chromium
from serve_fixtures import ANSWER, dicom_bytes, jpeg_bytes, png_bytes, teach_fixed_answer

import rewards
from bench.faults.cluster import BIN, ROOT
from bench.faults.helpers import gone, kill_with_env, process_tree
from bench.faults.inputs import make_lora_adapter
from learner.distributed import free_port

pytestmark = pytest.mark.integration
requests = pytest.importorskip("requests")

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_UPLOAD = 2 * 1024 * 1024
RESIZE = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}  # the tiny model's processor budget


@dataclass(frozen=True)
class Served:
    url: str
    run_dir: Path
    model_dir: Path
    tmp: Path
    proc: subprocess.Popen[str]
    marker: str  # in the environment of every process of its Ray


def _serve_config(run_dir: Path, out: Path) -> Path:
    """The shipped Serve config on the test run: one replica (no autoscaling), small batches, a 1 s watch."""
    tree = yaml.safe_load((ROOT / "deploy" / "serve" / "serve_config.yaml").read_text())
    app = tree["applications"][0]
    app["args"] |= {"run_dir": str(run_dir), "engine": "vllm"}
    app["args"]["limits"]["max_upload_bytes"] = MAX_UPLOAD
    deployment = app["deployments"][0]
    deployment.pop("autoscaling_config")
    deployment["num_replicas"] = 1
    deployment["user_config"] = {"max_batch_size": 4, "batch_wait_timeout_s": 0.05, "watch_interval_s": 1.0}
    out.write_text(yaml.safe_dump(tree))
    return out


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path) -> Iterator[Served]:
    tmp = Path(tempfile.mkdtemp(prefix="mgs-", dir="/tmp"))  # Ray's socket paths must stay < 107 bytes
    marker = f"RAY_TMPDIR={tmp / 'ray'}"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MEDGROUND_RAY_ADDRESS")}
    env |= {"RAY_TMPDIR": str(tmp / "ray"), "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
            "MEDGROUND_SERVE_TOKEN": TOKEN}
    proc = None
    try:
        model = teach_fixed_answer(tiny_model_dir, tmp / "model")
        run_dir = tmp / "run"
        run_dir.mkdir()
        (run_dir / "resolved_config.json").write_text(json.dumps(  # a run's config: what serve reads of it
            {"model": {"path": str(model)}, "rollout": {"engine": "vllm", **RESIZE},
             "data": {"manifest": "unused.jsonl"}, "stages": [{"name": "g", "kind": "grpo", "steps": 1}]}))
        port, log = free_port(), tmp / "serve.log"
        with log.open("w") as out:
            proc = subprocess.Popen([str(BIN / "python"), "-m", "services.cli", "serve", "--config",
                                     str(_serve_config(run_dir, tmp / "serve.yaml")), "--port", str(port)],
                                    cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 300
        while "serving on" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield Served(f"http://127.0.0.1:{port}", run_dir, model, tmp, proc, marker)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        kill_with_env(marker)
        shutil.rmtree(tmp, ignore_errors=True)


def _expected_box(text: str, width: int, height: int) -> rewards.Box:
    """The frame conversion done independently: smart_resize's frame from the image size, the rewards
    parser."""
    frame = rewards.ImageFrame.for_image(width, height, "input_pixels", **RESIZE)
    parsed = rewards.parse_answer(text, "grounding", frame)
    assert parsed is not None and parsed.box is not None
    return rewards.to_original(parsed.box, frame)


def test_png_and_dicom_boxes_are_in_original_pixels(served: Served) -> None:
    png = requests.post(f"{served.url}/v1/ground", headers=AUTH, timeout=60,
                        files={"image": ("scan.png", png_bytes((300, 170)), "image/png")},
                        data={"phrase": "left upper lobe nodule"})
    dcm = requests.post(f"{served.url}/v1/ground", headers=AUTH, timeout=60,
                        json={"image": base64.b64encode(dicom_bytes(200, 150, monochrome1=True)).decode(),
                              "phrase": "right pleural effusion"})
    for response, size, kind in ((png, (300, 170), "png"), (dcm, (200, 150), "dicom")):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["text"] == ANSWER and body["parse_ok"] and body["format_ok"]
        assert (body["image"]["width"], body["image"]["height"], body["image"]["kind"]) == (*size, kind)
        assert body["box"] == pytest.approx(_expected_box(body["text"], *size), abs=0.01)
        assert body["box"] != pytest.approx(body["model_input"]["box"], abs=0.5)  # really rescaled
        assert body["adapter_version"] == 0 and body["latency_ms"] > 0
        # a single-box run (issue 31): `boxes` holds the one box, `box` (deprecated) repeats it
        assert body["boxes"] == [body["box"]] and body["model_input"]["boxes"] == [body["model_input"]["box"]]


def test_real_world_dicom_variants_are_answered_or_refused_with_4xx(served: Served) -> None:
    """The DICOM kinds that used to answer 500 (empty tags, no transfer syntax, JPEG Extended without a
    decoder, a broken JPEG 2000 stream, bad value representations, ...): a box, or a 422 naming the tag."""
    for kind, (data, fragment) in real_world_variants().items():
        r = requests.post(f"{served.url}/v1/ground", headers=AUTH, timeout=60,
                          files={"image": ("scan.dcm", data, "application/dicom")}, data={"phrase": "nodule"})
        if fragment is None:
            assert r.status_code == 200, (kind, r.text)
            assert r.json()["box"] == pytest.approx(_expected_box(ANSWER, 16, 16), abs=0.01), kind
        else:
            assert r.status_code == 422, (kind, r.status_code, r.text)
            assert fragment in r.json()["detail"], (kind, r.text)


def test_concurrent_requests_are_all_answered(served: Served) -> None:
    sizes = [(120, 90), (90, 120), (200, 60), (64, 64), (150, 150), (80, 100)]

    def one(size: tuple[int, int]) -> tuple[int, list[float] | None, tuple[int, int]]:
        r = requests.post(f"{served.url}/v1/ground", headers=AUTH, timeout=120,
                          files={"image": ("a.jpg", jpeg_bytes(size), "image/jpeg")}, data={"phrase": "mass"})
        return r.status_code, r.json().get("box"), size

    with ThreadPoolExecutor(len(sizes)) as pool:
        for status, box, size in pool.map(one, sizes):
            assert status == 200
            # each answer in its own frame
            assert box == pytest.approx(_expected_box(ANSWER, *size), abs=0.01)


def _bomb() -> bytes:
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    ihdr = (40_000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR",
                                        ihdr) + chunk(b"IDAT",
                                                      zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _bad_requests(url: str) -> list[tuple[str, dict[str, object], int]]:
    good_png = png_bytes((64, 48))
    ground = f"{url}/v1/ground"
    b64 = base64.b64encode(good_png).decode()
    return [
        ("no token", {"url": ground, "files": {"image": ("a.png", good_png)}, "data": {"phrase": "x"},
                      "auth": False}, 401),
        ("wrong token", {"url": ground, "files": {"image": ("a.png", good_png)}, "data": {"phrase": "x"},
                         "headers": {"Authorization": "Bearer nope"}}, 401),
        ("model info without token", {"url": f"{url}/v1/model", "method": "GET", "auth": False}, 401),
        ("text/plain body", {"url": ground, "data": "phrase=x",
                             "headers": {**AUTH, "Content-Type": "text/plain"}}, 415),
        ("no content type", {"url": ground, "data": b"raw", "headers": AUTH}, 415),
        ("url-encoded form", {"url": ground, "data": {"phrase": "x"}}, 415),
        ("not an image", {"url": ground, "files": {"image": ("a.png", b"this is not an image")},
                          "data": {"phrase": "x"}}, 415),
        ("truncated PNG", {"url": ground, "files": {"image": ("a.png", good_png[:60])},
                           "data": {"phrase": "x"}}, 422),
        ("decompression bomb", {"url": ground, "files": {"image": ("b.png", _bomb())},
                                "data": {"phrase": "x"}}, 413),
        ("upload over the limit", {"url": ground,
                                   "files": {"image": ("big.png", b"\x89PNG" + b"\0" * (3 * MAX_UPLOAD))},
                                   "data": {"phrase": "x"}}, 413),
        ("empty phrase", {"url": ground, "files": {"image": ("a.png", good_png)},
                          "data": {"phrase": "  "}}, 422),
        ("overlong phrase", {"url": ground, "files": {"image": ("a.png", good_png)},
                             "data": {"phrase": "x" * 501}}, 422),
        ("chat markup in phrase", {"url": ground, "json": {"image": b64, "phrase": "<|image_pad|>"}}, 422),
        ("missing phrase", {"url": ground, "files": {"image": ("a.png", good_png)}}, 422),
        ("missing image", {"url": ground, "files": {"other": ("a.png", good_png)},
                           "data": {"phrase": "x"}}, 422),
        ("image as a text field", {"url": ground, "files": {"image": (None, "abc")},
                                   "data": {"phrase": "x"}}, 422),
        ("DICOM without pixels", {"url": ground,
                                  "files": {"image": ("a.dcm", dicom_bytes(32, 32, with_pixels=False))},
                                  "data": {"phrase": "x"}}, 422),
        ("bad base64", {"url": ground, "json": {"image": "%%%not base64", "phrase": "x"}}, 400),
        ("JSON not an object", {"url": ground, "json": [1, 2]}, 422),
        ("broken JSON", {"url": ground, "data": b"{\"image\": ",
                         "headers": {**AUTH, "Content-Type": "application/json"}}, 400),
        ("JSON missing image", {"url": ground, "json": {"phrase": "x"}}, 422),
        ("JSON unknown field", {"url": ground, "json": {"image": b64, "phrase": "x",
                                                        "box": [1, 2, 3, 4]}}, 422),
        ("broken multipart", {"url": ground, "data": b"--xx\r\nnonsense",
                              "headers": {**AUTH, "Content-Type": "multipart/form-data; boundary=xx"}}, 422),
        ("reload a missing dir", {"url": f"{url}/v1/admin/reload",
                                  "json": {"path": "/nonexistent/adapter"}}, 422),
        ("reload with a bad body", {"url": f"{url}/v1/admin/reload", "json": {"paht": "x"}}, 422),
        ("wrong method", {"url": ground, "method": "GET"}, 405),
    ]


def test_bad_requests_get_4xx_then_a_good_one_succeeds(served: Served) -> None:
    statuses = {}
    for name, spec, expected in _bad_requests(served.url):
        spec = dict(spec)
        method, url = spec.pop("method", "POST"), spec.pop("url")
        if spec.pop("auth", True):
            spec.setdefault("headers", AUTH)
        response = requests.request(str(method), str(url), timeout=60, **spec)  # type: ignore[arg-type]
        statuses[name] = response.status_code
        assert response.status_code < 500, f"{name}: {response.status_code} {response.text}"
        assert response.status_code == expected, f"{name}: {response.status_code} {response.text}"
        if response.status_code != 405:
            assert response.json()["detail"], name  # a message that says what is wrong
    assert not [n for n, s in statuses.items() if s >= 500]
    assert requests.get(f"{served.url}/healthz", timeout=10).status_code == 200  # open, and still up
    good = requests.post(f"{served.url}/v1/ground", headers=AUTH, timeout=60,
                         files={"image": ("a.png", png_bytes((64, 48)))}, data={"phrase": "nodule"})
    assert good.status_code == 200 and good.json()["parse_ok"]


def test_docs_and_model_info(served: Served) -> None:
    spec = requests.get(f"{served.url}/openapi.json", timeout=10).json()
    assert {"/v1/ground", "/v1/model", "/v1/admin/reload", "/healthz"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/v1/ground"]["post"]["requestBody"]["content"]
    assert requests.get(f"{served.url}/docs", timeout=10).status_code == 200
    info = requests.get(f"{served.url}/v1/model", headers=AUTH, timeout=10).json()
    assert info["model_path"] == str(served.model_dir.resolve()) and info["engine"] == "vllm"
    assert info["adapter"]["version"] == 0 and info["auth"] is True
    assert info["multi_box"] is False  # no stage of the run has multi_box: the single-box prompt


def test_page_draws_the_box_in_chromium(served: Served, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = tmp_path / "phantom.png"
    image.write_bytes(png_bytes((320, 200), seed=3))
    api = requests.post(f"{served.url}/v1/ground", headers=AUTH, timeout=60,
                        files={"image": ("phantom.png", image.read_bytes())},
                        data={"phrase": "left nodule"}).json()
    with chromium("1000,1000") as driver:
        driver.get(f"{served.url}/")
        driver.find_element(By.ID, "file").send_keys(str(image))
        driver.find_element(By.ID, "phrase").send_keys("left nodule")
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "go").click()
        WebDriverWait(driver,
                      90).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")
                                        in ("done", "error"))
        status = driver.find_element(By.ID, "status").text
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", status
        coords = driver.find_element(By.ID, "coords")
        assert json.loads(coords.get_attribute("data-box") or "null") == api["box"]
        assert all(f"{k}={v:g}" in coords.text for k, v in zip(("x1", "y1", "x2", "y2"),
                                                               api["box"], strict=True))
        # The canvas shows the image with its long side at 640 (scale 2): the box's left edge is drawn in red.
        x1, y1, _, y2 = (round(v * 2) for v in api["box"])
        red = driver.execute_script(
            "const c = document.getElementById('canvas').getContext('2d');"
            "const d = c.getImageData(arguments[0], arguments[1], 1, 1).data; return [d[0], d[1], d[2]];",
            x1, (y1 + y2) // 2)
        assert red[0] > 200 and red[1] < 80 and red[2] < 80, red
        size = driver.execute_script("const c = document.getElementById('canvas'); return [c.width, "
                                     "c.height];")
        assert size == [640, 400]
        shot = tmp_path / "page.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 1000


def _wait_for_version(url: str, version: int, timeout_s: float = 90.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        info = requests.get(f"{url}/v1/model", headers=AUTH, timeout=10).json()
        if info["adapter"]["version"] == version or time.monotonic() > deadline:
            return dict(info["adapter"])
        time.sleep(0.5)


def test_adapter_reload_by_watch_and_admin(served: Served) -> None:
    checkpoint = served.run_dir / "checkpoints" / "step-30"
    adapter = make_lora_adapter(served.model_dir, checkpoint / "adapter", seed=1)
    (adapter / "medground_adapter.json").write_text(json.dumps({"version": 3}))
    (checkpoint / "COMPLETE").write_text("30\n")
    live = _wait_for_version(served.url, 3)
    assert (live["version"], live["step"], live["origin"]) == (3, 30, "watch")
    other = make_lora_adapter(served.model_dir, served.tmp / "pinned", seed=2)
    (other / "medground_adapter.json").write_text(json.dumps({"version": 7}))
    reloaded = requests.post(f"{served.url}/v1/admin/reload", headers=AUTH,
                             json={"path": str(other)}, timeout=60)
    assert reloaded.status_code == 200 and reloaded.json()["version"] == 7
    answer = requests.post(f"{served.url}/v1/ground", headers=AUTH, timeout=60,
                           files={"image": ("a.png", png_bytes((64, 48)))}, data={"phrase": "nodule"}).json()
    assert answer["adapter_version"] == 7
    # no path: the run's latest
    back = requests.post(f"{served.url}/v1/admin/reload", headers=AUTH, timeout=60)
    assert back.status_code == 200 and (back.json()["version"], back.json()["origin"]) == (3, "admin")


def _names(pids: list[int]) -> list[str]:
    names = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the process exited after it was listed
        names.append(cmdline.replace(b"\0", b" ").decode(errors="replace")[:120])
    return names


def test_sigterm_stops_serve_and_its_local_ray(served: Served) -> None:
    """Last in the module: SIGTERM deletes the app and shuts down the local Ray that `medground serve`
    started; no dashboard, runtime-env agent, Serve controller, proxy or replica outlives it. Before the fix,
    Ray's own SIGTERM handler exited mid-shutdown and left the agents running as orphans."""
    tree = process_tree(served.marker)  # GCS, raylet, dashboard, agents, Serve's actors
    assert sum("agent" in n.lower() for n in _names(list(tree))) >= 2, _names(list(tree))
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=120) == 0, (served.tmp / "serve.log").read_text()[-3000:]
    deadline = time.monotonic() + 30
    while (left := [p for p in tree if not gone(p, timeout=0)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"left running after SIGTERM: {_names(left)}"

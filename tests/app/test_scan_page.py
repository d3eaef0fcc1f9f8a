"""The web page's micrograph mode: `/api/scan` in process, and the page in headless Chromium (boxes drawn).

Uses conftest.py's tiny trained run (32 px, classes Adenovirus/Ebola/Nipah virus, no `_background`:
the detector's score decides, as in `virion scan`) and a synthetic micrograph made here: bright
discs (the tiny model's Adenovirus) on noisy stain, black padding on the left.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

pytest.importorskip("starlette", reason='the web page needs the app extra: pip install "virion[app]"')

PLANTED = [(140, 110), (300, 150), (220, 300)]


def micrograph_png() -> bytes:
    rng = np.random.default_rng(0)
    size = 400
    values = 110 + 12 * ndimage.gaussian_filter(rng.normal(size=(size, size)), 4) + rng.normal(0, 6, (size, size))
    yy, xx = np.mgrid[:size, :size]
    for x, y in PLANTED:
        values += 80 / (1 + np.exp((np.hypot(xx - x, yy - y) - 20) / 2))
    values[:, :60] = 0
    buffer = io.BytesIO()
    Image.fromarray(np.clip(values, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def starlette_test_client():
    """Starlette's TestClient, or skip the test when its HTTP library is missing."""
    try:
        import httpx2  # noqa: F401 - what Starlette's TestClient uses from Starlette 1.0 on
    except ImportError:
        pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx2 (in the dev extra)")
    from starlette.testclient import TestClient

    return TestClient


@pytest.fixture(scope="module")
def app(classifier, tiny_run):
    from virion.app.server import create_app

    return create_app(classifier, tiny_run, top_k=3)


def test_api_scan_answers_particles_verdict_and_counts(app):
    TestClient = starlette_test_client()

    client = TestClient(app)
    files = {"file": ("mic.png", micrograph_png(), "image/png")}
    r = client.post("/api/scan", files=files, data={"min_confidence": "0"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"], body["nm_per_px_from"]) == (400, 400, "default")
    assert body["particles"] and all(p["x"] >= 60 for p in body["particles"])  # nothing in the padding
    for x, y in PLANTED:
        assert min(np.hypot(p["x"] - x, p["y"] - y) for p in body["particles"]) <= 10
    counts = body["verdict"]["counts"]
    assert sum(counts.values()) == len(body["particles"]) == body["verdict"]["particles"]
    assert body["verdict"]["verdict"] in (*counts, "uncertain")
    assert body["image"].startswith("data:image/png;base64,")

    bad = client.post("/api/scan", files={"file": ("x.png", b"not an image", "image/png")})
    assert bad.status_code == 400 and "x.png" in bad.json()["error"]
    wrong = client.post("/api/scan", files=files, data={"min_confidence": "2"})
    assert wrong.status_code == 400 and "min_confidence" in wrong.json()["error"]


def test_api_scan_uses_the_served_runs_class_sizes(classifier, tiny_run, tmp_path):
    """A run with class_sizes.json (as `virion train` keeps from `virion crops`) scans with the size prior."""
    TestClient = starlette_test_client()

    from virion.app.server import create_app
    from virion.micrograph.sizes import CLASS_SIZES_FILE

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    sizes = {name: 1000.0 for name in classifier.class_names}  # every particle within half a size of another
    (run / CLASS_SIZES_FILE).write_text(json.dumps({"unit": "nm", "classes": sizes}))
    files = {"file": ("mic.png", micrograph_png(), "image/png")}
    plain = TestClient(create_app(classifier, tiny_run, top_k=3)).post(
        "/api/scan", files=files, data={"min_confidence": "0"}
    )
    sized = TestClient(create_app(classifier, run, top_k=3)).post(
        "/api/scan", files=files, data={"min_confidence": "0"}
    )
    assert plain.status_code == sized.status_code == 200
    n_plain, n_sized = len(plain.json()["particles"]), len(sized.json()["particles"])
    classes = {p["class"] for p in plain.json()["particles"]}
    assert n_plain >= len(PLANTED) and n_sized == len(classes) < n_plain  # one particle per class is left


def test_api_scan_uses_the_served_runs_detector(classifier, tiny_run, tmp_path):
    """A run with detector/ (as `virion train` keeps from `virion crops --detector`) scans with it."""
    TestClient = starlette_test_client()

    from virion.app.server import create_app
    from virion.micrograph.heatmap import DETECTOR_DIR, HeatmapDetector, build_network

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    HeatmapDetector(build_network()).save(run / DETECTOR_DIR)  # untrained: only which detector runs is checked
    files = {"file": ("mic.png", micrograph_png(), "image/png")}
    plain = TestClient(create_app(classifier, tiny_run, top_k=3)).post("/api/scan", files=files)
    learned = TestClient(create_app(classifier, run, top_k=3)).post("/api/scan", files=files)
    assert plain.status_code == learned.status_code == 200
    assert plain.json()["detector"].startswith("LoG blobs")
    assert learned.json()["detector"] == f"learned heat map ({run / DETECTOR_DIR})"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # git-ignored: for a person to look at


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (Debian: apt-get install chromium)")
def test_page_scans_a_micrograph_and_draws_boxes(app):
    pytest.importorskip("uvicorn", reason='the web page needs the app extra: pip install "virion[app]"')
    pytest.importorskip("playwright", reason="the browser test needs playwright (in the dev extra)")
    import uvicorn
    from playwright.sync_api import sync_playwright

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.set_default_timeout(60_000)
            page.goto(f"http://127.0.0.1:{port}/")
            page.set_input_files(
                "#scan-file", files=[{"name": "mic.png", "mimeType": "image/png", "buffer": micrograph_png()}]
            )
            page.fill("#scan-conf", "0")
            page.click("#scan-run")
            page.wait_for_selector("#scan-result:not([hidden])")
            boxes = page.locator("#scan-boxes rect.particle")
            assert boxes.count() >= len(PLANTED)
            drawn = page.evaluate(
                "() => Array.from(document.querySelectorAll('#scan-boxes rect.particle'))"
                ".map(r => { const b = r.getBoundingClientRect(); return [b.width, b.height]; })"
            )
            assert all(w > 2 and h > 2 for w, h in drawn)  # visible boxes, not zero-size
            verdict = page.inner_text("#scan-verdict")
            rows = page.locator("#scan-counts tbody tr")
            assert rows.count() >= 1 and rows.first.inner_text().split()[0] in verdict + " uncertain"
            total = sum(int(t.split()[-1]) for t in rows.all_inner_texts())
            assert total == boxes.count()
            assert page.locator("#scan-boxes .scale-bar").count() == 1
            ARTIFACTS.mkdir(exist_ok=True)
            page.locator("#scan-panel").screenshot(path=str(ARTIFACTS / "serve_scan.png"))
            browser.close()
    finally:
        srv.should_exit = True
        thread.join(timeout=10)

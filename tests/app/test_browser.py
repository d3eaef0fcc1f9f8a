"""`virion serve` in a real browser: headless Chromium (Debian's package) driven by Playwright.

The server runs in a thread of this process on 127.0.0.1 and a free port, with the tiny run of
conftest.py. The screenshot is kept in tests/artifacts/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import csv
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import BAD_UPLOADS, CLASSES, SIZE, png_bytes, tiff16_bytes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Chromium not installed (Debian: apt-get install chromium); .ci/run installs it so this test runs in CI",
    ),
]
pytest.importorskip("starlette", reason='the web page needs the app extra: pip install "virion[app]"')
pytest.importorskip("uvicorn", reason='the web page needs the app extra: pip install "virion[app]"')
pytest.importorskip("playwright", reason="the browser test needs playwright (in the dev extra)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(classifier, tiny_run):
    import uvicorn

    from virion.app.server import create_app

    port = _free_port()
    config = uvicorn.Config(
        create_app(classifier, tiny_run, top_k=3), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _upload(page, files):
    page.set_input_files("#files", files=[{"name": n, "mimeType": m, "buffer": b} for n, m, b in files])
    page.click("#classify")


def test_page_classifies_explains_and_survives_bad_files(server, browser, tmp_path):
    from virion.inference.classifier import csv_columns

    page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page.set_default_timeout(60_000)
    failed_requests = []
    page.on("requestfailed", lambda request: failed_requests.append(request.url))
    page.goto(server + "/")
    page.wait_for_selector("body[data-ready='1']")

    # the model card and the synthetic-data banner
    assert page.is_visible("#synthetic-banner") and "synthetic" in page.inner_text("#synthetic-banner").lower()
    assert page.locator("#card-models tbody tr").count() == 2
    assert "0.917" in page.inner_text("#card-models")
    assert page.locator("#card-classes li").all_inner_texts() == CLASSES
    assert page.locator("#model option").all_inner_texts()[:2] == ["tinya", "tinyb"]

    # a 16-bit TIFF: top class, probabilities, the decoded input and the Grad-CAM image
    page.select_option("#model", "tinya")
    _upload(page, [("particle16.tif", "image/tiff", tiff16_bytes(kind=0))])
    card = page.locator("article.result").first
    card.locator(".cam-wrap.ready").wait_for()
    assert card.locator(".file").inner_text() == "particle16.tif"
    assert card.locator(".verdict").inner_text().startswith("Adenovirus")
    bars = card.locator("ol.chart li")
    assert bars.count() == 3 and bars.first.locator(".name").inner_text() == "Adenovirus"
    shown = [float(t.rstrip("%")) for t in card.locator(".prob").all_inner_texts()]
    assert shown == sorted(shown, reverse=True) and 0 < shown[0] <= 100 and sum(shown) <= 100.5
    sizes = page.evaluate("""() => Array.from(document.querySelectorAll('article.result img'))
                               .map(i => [i.className, i.complete, i.naturalWidth, i.naturalHeight])""")
    assert sorted(sizes) == [["input", True, SIZE, SIZE], ["overlay", True, 256, 256]]
    assert card.locator(".gradient").evaluate("e => getComputedStyle(e).backgroundImage").startswith("linear-gradient")

    # Grad-CAM for another class, chosen from the list
    before = card.locator("img.overlay").get_attribute("src")
    card.locator("select.cam-class").select_option(str(CLASSES.index("Nipah virus")))
    page.wait_for_function(
        "(old) => { const i = document.querySelector('article.result img.overlay');"
        " return i.src !== old && i.closest('.cam-wrap').classList.contains('ready'); }",
        arg=before,
    )
    assert "Nipah virus" in card.locator(".cam-note").inner_text()

    # a batch with bad files: one message each, the good images still classified
    _upload(
        page,
        [
            ("dark.png", "image/png", png_bytes(kind=1)),
            ("particle16.tif", "image/tiff", tiff16_bytes(kind=0)),
            *[(name, "application/octet-stream", data) for name, data in BAD_UPLOADS.items()],
        ],
    )
    page.wait_for_function("() => document.querySelectorAll('article.result').length === 5")
    page.wait_for_function("() => document.querySelectorAll('.cam-wrap.ready').length === 2")
    summary = page.inner_text("#messages")
    assert all(name in summary for name in BAD_UPLOADS)
    failed = page.locator("article.result.failed")
    assert failed.locator(".file").all_inner_texts() == list(BAD_UPLOADS)
    reasons = failed.locator(".error-text").all_inner_texts()
    assert "pixels" in reasons[1] and "0 bytes" in reasons[2]
    assert "classified" in page.inner_text("#status")

    # the batch CSV has the columns of `virion predict --out`
    with page.expect_download() as download:
        page.click("#download")
    saved = tmp_path / "predictions.csv"
    download.value.save_as(saved)
    rows = list(csv.reader(saved.open(encoding="utf-8")))
    assert rows[0] == csv_columns(3) and [r[0] for r in rows[1:]] == ["dark.png", "particle16.tif", *BAD_UPLOADS]

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "serve_page.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot of the page: {shot}")

    # the server still answers afterwards
    assert page.request.get(server + "/healthz").text() == "ok"
    _upload(page, [("again.tif", "image/tiff", tiff16_bytes(kind=0))])
    page.wait_for_function(
        "() => document.querySelectorAll('article.result').length === 1"
        " && document.querySelector('.cam-wrap.ready') !== null"
    )
    assert page.locator("article.result .verdict").inner_text().startswith("Adenovirus")
    assert not [u for u in failed_requests if not u.startswith("blob:")]
    page.close()

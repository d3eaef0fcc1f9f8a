"""report.html is self-contained (only embedded images) and renders in a real browser."""

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from virion.reports.html import write_report


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def report(evaluated_run):
    path = write_report(evaluated_run)
    parser = _Collect()
    parser.feed(path.read_text(encoding="utf-8"))
    return path, parser.tags, " ".join(" ".join(parser.text).split())


def test_report_embeds_every_image_and_references_nothing_outside(report):
    path, tags, _ = report
    assert path.name == "report.html" and path.parent.name == "demo-run"
    imgs = [a for t, a in tags if t == "img"]
    # comparison chart + per model (2): curves, two matrices, mistakes
    assert len(imgs) == 1 + 2 * 4
    for attrs in imgs:
        src = attrs["src"]
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True))) as im:
            assert im.format == "PNG" and min(im.size) > 50
    assert not [t for t, _ in tags if t in ("script", "link", "iframe", "object", "embed")]
    for tag, attrs in tags:
        for key in ("src", "href", "srcset", "poster", "data"):
            value = attrs.get(key)
            if value is not None:
                assert value.startswith(("data:", "#")), f"<{tag} {key}={value[:60]}> leaves the file"
    raw = path.read_text(encoding="utf-8")
    assert not re.search(r"url\(|@import|https?://", raw)


def test_report_content(report, helpers):
    _, tags, text = report
    assert "ImageNet weights were NOT used for xception" in text and "random initialization" in text
    assert "Adeno <virus>" in text  # escaped in the file, shown verbatim by the browser
    for cls in helpers.CLASS_NAMES:
        assert cls in text
    assert "Skipped files (could not be decoded): 1" in text and "bad/broken.tif" in text
    assert "truncated file" in text and "notes.txt" in text
    assert "Model: resnet50" in text and "Model: xception" in text
    assert "macro F1" in text and "0.5455" in text  # accuracy 6/11 in the comparison and the summaries
    assert "val_fraction" in text  # the settings table
    assert "precision set to 0 for class 'Rift Valley': never predicted" in text  # evaluation warnings shown


def test_report_says_when_imagenet_was_used(tmp_path, helpers):
    from virion.reports.html import _weights_statement

    tone, sentence = _weights_statement([("resnet50", {"weights": "none"}), ("xception", {"weights": "imagenet"}),
                                         ("densenet121", {"weights": "imagenet"})])
    assert tone == "ok" and "ImageNet pre-trained weights were used for xception, densenet121" in sentence
    assert "NOT" not in sentence
    run = helpers.make_run(tmp_path / "fresh", {"densenet121": {"weights": "imagenet"}})
    text = write_report(run).read_text()  # not evaluated yet: still a report, with a clear note
    assert "Not every model is evaluated yet" in text and "ImageNet pre-trained weights were used" in text


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars"]
# Appended to a *test copy* of the report only (the report itself has no JavaScript): after the load
# event, record on <body> how many images there are and which did not decode.
PROBE = """<script>window.addEventListener("load", function () {
  var bad = [], imgs = document.images;
  for (var i = 0; i < imgs.length; i++) { if (!(imgs[i].complete && imgs[i].naturalWidth > 0)) bad.push(i); }
  document.body.setAttribute("data-images", imgs.length);
  document.body.setAttribute("data-broken", bad.length ? bad.join(",") : "none");
});</script>"""


def _chromium(page, tmp_path, *args):
    cmd = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
           *args, page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _probe(html_text, tmp_path, name):
    page = tmp_path / name
    page.write_text(html_text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = _chromium(page, tmp_path, "--dump-dom")
    found = re.search(r'<body[^>]*data-images="(\d+)"[^>]*data-broken="([^"]*)"', dom)
    assert found, f"the page-side check did not run: {dom[:300]!r}"
    return int(found.group(1)), found.group(2)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (Debian: apt-get install chromium); "
                    ".ci/run installs it so this test runs in CI")
def test_report_renders_in_headless_chromium(report, tmp_path):
    path, tags, _ = report
    html_text = path.read_text(encoding="utf-8")
    count, broken = _probe(html_text, tmp_path, "report_probe.html")
    assert count == sum(1 for t, _ in tags if t == "img") and broken == "none"

    # the check can fail: a corrupt embedded image is reported as broken
    corrupt = html_text.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAAA", 1)
    count, broken = _probe(corrupt, tmp_path, "corrupt_probe.html")
    assert broken == "0"

    # and what a person sees is not a blank page: the screenshot has dark text and coloured figures
    shot = tmp_path / "shot.png"
    _chromium(path, tmp_path, f"--screenshot={shot}", "--window-size=1200,1600")
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB")).astype(int)
    assert pixels.shape[0] >= 1000 and pixels.std() > 10
    blue = (pixels[..., 2] - pixels[..., 0] > 60).mean()  # heatmap / bar colours from embedded PNGs
    assert blue > 0.005

"""report.html is self-contained (only embedded images); test_report_browser.py shows it in Chromium."""

import base64
import io
import re
from html.parser import HTMLParser

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
    # comparison chart + per model (2): curves, two matrices, mistakes, Grad-CAM examples
    assert len(imgs) == 1 + 2 * 5
    assert {a["alt"] for a in imgs} >= {"resnet50: confusion matrix (counts)", "xception: Grad-CAM examples"}
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
    assert "Most confused pairs" in text and "top-5 accuracy 1.0000" in text
    assert "exclude none" in text and "[]" not in text  # settings as values, not Python reprs
    assert "precision set to 0 for class 'Rift Valley': never predicted" in text  # evaluation warnings shown


def test_report_says_when_imagenet_was_used(tmp_path, helpers):
    from virion.reports.html import _weights_statement

    tone, sentence = _weights_statement(
        [
            ("resnet50", {"weights": "none"}),
            ("xception", {"weights": "imagenet"}),
            ("densenet121", {"weights": "imagenet"}),
        ]
    )
    assert tone == "ok" and "ImageNet pre-trained weights were used for xception, densenet121" in sentence
    assert "NOT" not in sentence
    run = helpers.make_run(tmp_path / "fresh", {"densenet121": {"weights": "imagenet"}})
    text = write_report(run).read_text()  # not evaluated yet: still a report, with a clear note
    assert "Not every model is evaluated yet" in text and "ImageNet pre-trained weights were used" in text

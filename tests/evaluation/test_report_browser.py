"""report.html as a person sees it: headless Chromium (Debian's package) driven by Playwright at 1400 px.

Checks what the issue asks of the report: no horizontal scrolling, every image decoded, the
synthetic-data banner exactly when the data is synthetic, every figure titled with its model,
confusion-matrix numbers at least 10 px tall as displayed, table numbers rounded to 4 digits,
settings as values. The screenshot is kept in tests/artifacts/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from virion.reports.html import write_report

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
WIDTH = 1400
MIN_DIGIT_PX = 10
FOURTEEN = [
    "Adenovirus",
    "Astrovirus",
    "CCHF",
    "Cowpox",
    "Ebola",
    "Influenza",
    "Lassa",
    "Marburg",
    "Nipah virus",
    "Norovirus",
    "Orf",
    "Papilloma",
    "Rift Valley fever virus",
    "Rotavirus",
]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium not installed (Debian: apt-get install chromium); .ci/run installs it so this test runs in CI",
)
pytest.importorskip("playwright", reason="the browser test needs playwright (in the dev extra)")

# What the page shows, gathered in the browser after the load event.
INSPECT = """() => {
  const root = document.scrollingElement;
  const imgs = Array.from(document.images).map(im => ({
    alt: im.alt, complete: im.complete, naturalWidth: im.naturalWidth, naturalHeight: im.naturalHeight,
    shownWidth: im.getBoundingClientRect().width, src: im.src}));
  const tables = Array.from(document.querySelectorAll("table")).map(t => ({
    heading: (t.previousElementSibling || {}).textContent || "",
    cells: Array.from(t.querySelectorAll("td")).map(td => td.innerText)}));
  return {scrollWidth: root.scrollWidth, clientWidth: root.clientWidth, imgs: imgs, tables: tables,
          banner: !!document.getElementById("synthetic"), text: document.body.innerText};
}"""


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _show(browser, path: Path, *, extra_css: str = "", screenshot: Path | None = None) -> dict:
    page = browser.new_page(viewport={"width": WIDTH, "height": 900})
    try:
        page.goto(path.as_uri(), wait_until="load")
        if extra_css:
            page.add_style_tag(content=extra_css)
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        return page.evaluate(INSPECT)
    finally:
        page.close()


def _png(src: str) -> Image.Image:
    assert src.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))


def _synthetic_copy(evaluated_run: Path, tmp: Path) -> Path:
    """The evaluated run, its data folder now one that `virion synth` wrote (synth.json)."""
    data = tmp / "synthetic-data"
    data.mkdir()
    (data / "synth.json").write_text("{}")
    run = shutil.copytree(evaluated_run, tmp / "synthetic-run")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data": str(data)}))
    return run


def _digit_height_px(img: dict, figure) -> float:
    """Displayed height of the cell numbers: ink height in the figure x DPI x displayed scale."""
    from virion.evaluation.plots import text_size_in
    from virion.figures import DPI

    size = figure.axes[0].texts[0].get_fontsize()
    return text_size_in("0123456789", size)[1] * DPI * img["shownWidth"] / img["naturalWidth"]


def _matrix_figure(eval_dir: Path, normalized: bool):
    """The confusion figure redrawn from confusion_matrix.csv, as evaluation drew it."""
    import numpy as np

    from virion.evaluation.plots import confusion_figure

    with (eval_dir / "confusion_matrix.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    return confusion_figure(np.array([[int(v) for v in r[1:]] for r in rows[1:]]), rows[0][1:], normalize=normalized)


def _numbers_too_long(cells: list[str]) -> list[str]:
    """Numbers with a fractional part that show more than 4 decimals or 4 significant digits."""
    bad = []
    for cell in cells:
        for number in re.findall(r"\d[\d,]*\.\d+", cell):
            whole, frac = number.replace(",", "").split(".")
            if len(frac) > 4 or len((whole + frac).lstrip("0")) > 4:
                bad.append(number)
    return bad


def test_numbers_check_can_fail():
    assert _numbers_too_long(["0.5455", "100.0", "23,587,712", "run-2024", "1,234"]) == []
    assert _numbers_too_long(["0.545454", "1234.5", "12.34567"]) == ["0.545454", "1234.5", "12.34567"]


def test_report_reads_well_at_1400px(browser, evaluated_run, tmp_path):
    run = _synthetic_copy(evaluated_run, tmp_path)
    page = _show(browser, write_report(run), screenshot=ARTIFACTS / "report_1400px.png")

    assert page["scrollWidth"] <= page["clientWidth"] == WIDTH  # no horizontal scrolling
    assert page["banner"] and "SYNTHETIC TEM images" in page["text"]
    imgs = page["imgs"]
    assert len(imgs) == 1 + 2 * 5  # comparison + per model: curves, two matrices, mistakes, Grad-CAM
    for img in imgs:
        assert img["complete"] and img["naturalWidth"] > 0, f"image {img['alt']!r} did not load"
    for img in imgs:  # titled with its model: in the drawn title (PNG Title field) and the alt text
        title = _png(img["src"]).info.get("Title", "")
        models = ("resnet50", "xception") if img["alt"].startswith("model comparison") else (img["alt"].split(":")[0],)
        assert set(models) <= {"resnet50", "xception"}, img["alt"]
        for model in models:
            assert model in title and model in img["alt"], (img["alt"], title)

    matrices = [img for img in imgs if "confusion matrix" in img["alt"]]
    assert len(matrices) == 4
    for img in matrices:
        model = img["alt"].split(":")[0]
        figure = _matrix_figure(run / model / "evaluation", "normalized" in img["alt"])
        assert len(figure.axes[0].texts) == 16  # 4 x 4 numbers drawn
        assert _digit_height_px(img, figure) >= MIN_DIGIT_PX, img

    cells = [c for table in page["tables"] for c in table["cells"]]
    assert "0.5455" in cells and _numbers_too_long(cells) == []
    settings = next(t for t in page["tables"] if t["heading"] == "Settings")["cells"]
    assert "val_fraction" in settings and "0.2" in settings
    for repr_mark in ("{'", "AugmentConfig(", "[]", "None", "PosixPath("):
        assert repr_mark not in page["text"], repr_mark

    with Image.open(ARTIFACTS / "report_1400px.png") as shot:
        assert shot.size[0] == WIDTH and shot.size[1] > 3000


def test_no_banner_for_other_data(browser, evaluated_run, tmp_path):
    run = shutil.copytree(evaluated_run, tmp_path / "real-run")
    page = _show(browser, write_report(run))
    assert not page["banner"] and "SYNTHETIC" not in page["text"]


def test_fourteen_class_matrix_numbers_readable_and_check_can_fail(browser, evaluated_run, tmp_path):
    """The real TEM dataset has 14 classes: their matrix, shown full width, still has 10 px digits."""
    import numpy as np

    from virion.evaluation.plots import confusion_figure
    from virion.figures import save_figure

    run = shutil.copytree(evaluated_run, tmp_path / "fourteen")
    cm = np.random.default_rng(0).integers(0, 150, (14, 14))
    figure = confusion_figure(cm, FOURTEEN, normalize=True, title="xception: confusion matrix (row-normalized)")
    assert len(figure.axes[0].texts) == 14 * 14
    save_figure(figure, run / "xception" / "evaluation" / "confusion_matrix_normalized.png")
    report = write_report(run)

    page = _show(browser, report, screenshot=ARTIFACTS / "report_14_classes_1400px.png")
    img = next(i for i in page["imgs"] if i["alt"] == "xception: confusion matrix (row-normalized)")
    assert img["naturalWidth"] > 600
    assert page["scrollWidth"] <= page["clientWidth"]
    assert _digit_height_px(img, figure) >= MIN_DIGIT_PX

    # the check can fail: the same figure squeezed to half the page draws its numbers too small
    squeezed = _show(browser, report, extra_css="figure.wide img{max-width:600px}")
    img = next(i for i in squeezed["imgs"] if i["alt"] == "xception: confusion matrix (row-normalized)")
    assert _digit_height_px(img, figure) < MIN_DIGIT_PX


def test_broken_image_is_caught(browser, evaluated_run, tmp_path):
    """The image check can fail: a corrupt embedded PNG shows as not loaded."""
    html = write_report(shutil.copytree(evaluated_run, tmp_path / "corrupt")).read_text(encoding="utf-8")
    page_file = tmp_path / "corrupt.html"
    page_file.write_text(html.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAAA", 1))
    imgs = _show(browser, page_file)["imgs"]
    assert [i["naturalWidth"] > 0 for i in imgs].count(False) == 1

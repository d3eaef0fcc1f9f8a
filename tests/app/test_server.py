"""The web page's HTTP API (in-process, no browser): predictions, Grad-CAM, model card, bad uploads, CSV."""

from __future__ import annotations

import base64
import csv
import io
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason='the web page needs the app extra: pip install "virion[app]"')
try:
    import httpx2  # noqa: F401 - what Starlette's TestClient uses from Starlette 1.0 on
except ImportError:
    pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx2 (in the dev extra)")

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import BAD_UPLOADS, CLASSES, SIZE, png_bytes, tiff16_bytes


@pytest.fixture(scope="module")
def client(classifier, tiny_run):
    from starlette.testclient import TestClient

    from virion.app.server import create_app

    with TestClient(create_app(classifier, tiny_run, top_k=3)) as test_client:
        yield test_client


def _png_array(data_url: str) -> np.ndarray:
    from PIL import Image

    assert data_url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))) as im:
        return np.asarray(im)


def _predict(client, files, **form):
    return client.post("/api/predict", files=[("files", (name, data)) for name, data in files], data=form)


def test_page_and_assets_are_served_locally(client):
    page = client.get("/")
    assert page.status_code == 200 and "virion" in page.text
    for asset in ("/static/app.js", "/static/app.css"):
        assert client.get(asset).status_code == 200
    # offline: nothing is fetched from another host
    assert "http://" not in page.text and "https://" not in page.text
    assert "//cdn" not in client.get("/static/app.js").text


def test_model_card_reads_the_run(client):
    info = client.get("/api/info").json()
    card = info["card"]
    assert card["class_names"] == CLASSES
    assert [m["name"] for m in card["models"]] == ["tinya", "tinyb"]
    assert info["models"] == ["tinya", "tinyb", "ensemble"]
    assert card["models"][0]["test_accuracy"] == pytest.approx(0.9167)
    assert card["models"][1]["macro_f1"] == pytest.approx(0.8701)
    assert card["models"][0]["input_size"] == SIZE and card["models"][0]["weights"] == "random init"
    assert card["synthetic"] is True and "virion synth" in card["synthetic_reason"]
    assert info["chance"] == pytest.approx(1 / 3)


def test_predicts_a_16_bit_tiff_exactly_as_the_classifier(client, classifier, tmp_path):
    data = tiff16_bytes(kind=0)
    response = _predict(client, [("particle16.tif", data)], model="tinya")
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert result["ok"] and result["name"] == "particle16.tif"
    # the same numbers as the one prediction path on the same file
    path = tmp_path / "particle16.tif"
    path.write_bytes(data)
    direct = classifier.predict([path], model="tinya")
    np.testing.assert_allclose(result["probabilities"], direct.probabilities[0], atol=1e-6)
    assert sum(result["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    assert result["predicted"] == direct.predicted[0] == result["top"][0]["class"]
    assert len(result["top"]) == 3 and result["top"][0]["probability"] >= result["top"][1]["probability"]
    # the decoded image is what the model sees: its input size, grayscale, and not flat (16-bit stretched)
    seen = _png_array(result["input_png"])
    assert seen.shape == (SIZE, SIZE) and result["input_shape"] == [SIZE, SIZE]
    np.testing.assert_array_equal(seen, classifier.decode([path])[0])
    assert seen.std() > 20


def test_trained_run_tells_the_classes_apart(client):
    files = [("bright.tif", tiff16_bytes(kind=0)), ("dark.png", png_bytes(kind=1))]
    results = _predict(client, files, model="ensemble").json()["results"]
    assert [r["predicted"] for r in results] == ["Adenovirus", "Ebola"]


def test_ensemble_is_the_mean_of_the_models_and_tta_is_passed_on(client):
    files = [("a.tif", tiff16_bytes(kind=2))]
    probs = {
        m: np.array(_predict(client, files, model=m).json()["results"][0]["probabilities"])
        for m in ("tinya", "tinyb", "ensemble")
    }
    np.testing.assert_allclose(probs["ensemble"], (probs["tinya"] + probs["tinyb"]) / 2, atol=1e-5)
    tta = np.array(_predict(client, files, model="tinya", tta="1").json()["results"][0]["probabilities"])
    assert np.abs(tta - probs["tinya"]).max() > 1e-6  # the 8 views of an off-centre ring differ


def test_bad_uploads_get_a_message_each_and_the_good_one_still_counts(client):
    files = [("good.tif", tiff16_bytes()), *BAD_UPLOADS.items()]
    response = _predict(client, files, model="tinya")
    assert response.status_code == 200
    results = {r["name"]: r for r in response.json()["results"]}
    assert results["good.tif"]["ok"]
    for name in BAD_UPLOADS:
        assert results[name]["ok"] is False and results[name]["error"].startswith(name)
        assert "virion-serve-" not in results[name]["error"]  # no temporary path shown to the user
    assert "pixels" in results["huge.png"]["error"]
    assert "0 bytes" in results["empty.png"]["error"]
    assert client.get("/healthz").text == "ok"
    # and the next request is served normally
    assert _predict(client, [("again.tif", tiff16_bytes())], model="tinya").json()["results"][0]["ok"]


def test_request_mistakes_are_one_line_400s(client):
    response = _predict(client, [("a.tif", tiff16_bytes())], model="resnet9000")
    assert response.status_code == 400 and "resnet9000" in response.json()["error"]
    response = client.post("/api/predict", data={"model": "tinya"})
    assert response.status_code == 400 and "no file" in response.json()["error"]


def test_csv_is_what_virion_predict_writes(client, classifier, tmp_path):
    from virion.inference.predict import write_csv

    files = [("one.tif", tiff16_bytes(kind=0)), ("notes.tif", BAD_UPLOADS["notes.tif"])]
    body = _predict(client, files, model="tinyb").json()
    rows = list(csv.reader(io.StringIO(body["csv"])))
    # `virion predict --out` on the same files, written by its own writer
    paths = []
    for name, data in files:
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    expected = list(csv.reader(write_csv([classifier.predict(paths, model="tinyb")], tmp_path / "p.csv").open()))
    assert rows[0] == expected[0] and len(rows) == len(expected) == 3
    assert [r[0] for r in rows[1:]] == ["one.tif", "notes.tif"]  # the upload's name, not a temporary path
    assert rows[1][1:] == expected[1][1:]
    error = rows[0].index("error")
    assert rows[2][error] and not rows[1][error]


def test_gradcam_for_the_top_class_or_a_chosen_one(client, classifier, tmp_path):
    data = tiff16_bytes(kind=0)
    top = client.post("/api/explain", files={"file": ("p.tif", data)}, data={"model": "tinya"}).json()
    path = tmp_path / "p.tif"
    path.write_bytes(data)
    assert top["class_name"] == classifier.predict([path], model="tinya").predicted[0]
    chosen = client.post(
        "/api/explain", files={"file": ("p.tif", data)}, data={"model": "tinya", "class_index": "2"}
    ).json()
    assert chosen["class_index"] == 2 and chosen["class_name"] == CLASSES[2]
    overlay = _png_array(chosen["overlay_png"])
    assert overlay.shape == (256, 256, 3)  # drawn over a finer decode than the 32 px input
    assert not np.array_equal(overlay, _png_array(top["overlay_png"]))
    ensemble = client.post("/api/explain", files={"file": ("p.tif", data)}, data={"model": "ensemble"}).json()
    assert ensemble["model"] == "tinya" and "ensemble" in ensemble["note"]
    bad = client.post("/api/explain", files={"file": ("x.tif", BAD_UPLOADS["notes.tif"])}, data={"model": "tinya"})
    assert bad.status_code == 400 and bad.json()["error"].startswith("x.tif")
    bad = client.post("/api/explain", files={"file": ("p.tif", data)}, data={"model": "tinya", "class_index": "9"})
    assert bad.status_code == 400 and "class index 9" in bad.json()["error"]


def test_low_confidence_threshold_is_halfway_from_chance():
    from virion.app.server import low_confidence_threshold

    assert low_confidence_threshold(2) == pytest.approx(0.75)
    assert low_confidence_threshold(14) == pytest.approx(1 / 14 + 0.5 * 13 / 14)


def test_no_synthetic_banner_for_real_data(tmp_path, classifier, tiny_run):
    import json
    import shutil

    from virion.app.card import build_card

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    real = tmp_path / "real-data"
    real.mkdir()
    (run / "dataset.json").write_text(json.dumps({"root": str(real), "class_names": CLASSES}))
    (run / "config.json").write_text(json.dumps({"data": str(real)}))
    card = build_card(run, classifier)
    assert card.synthetic is False and card.data == str(real)
    shutil.rmtree(run / "tinya" / "evaluation")
    card = build_card(run, classifier)
    assert card.models[0].test_accuracy is None and card.models[1].test_accuracy == pytest.approx(0.875)

"""The page with a model that is not a network (the texture model's kind): it predicts, Grad-CAM says not available.

A double answers the model contract (`predict_proba` at its own 48 px decode); the run's recommended
classifier is the page's default choice.
"""

from __future__ import annotations

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
from serve_helpers import CLASSES, png_bytes


class ContractDouble:
    def __init__(self):
        self.class_names = list(CLASSES)

    def predict_proba(self, images, *, batch_size=32, tta=False):
        assert images.dtype == np.uint8 and images.shape[1:] == (48, 48)
        p = np.full((len(images), len(CLASSES)), 0.1 / (len(CLASSES) - 1))
        p[:, 1] = 0.9
        return p


@pytest.fixture(scope="module")
def client(classifier, tiny_run):
    from starlette.testclient import TestClient

    from virion.app.server import create_app
    from virion.inference.classifier import Classifier
    from virion.run.loading import LoadedModel
    from virion.run.schema import ModelMetadata

    meta = ModelMetadata(class_names=list(CLASSES), input_size=48, name="texture", kind="texture", stretch=None)
    texture = LoadedModel("texture", ContractDouble(), meta, tiny_run / "texture" / "texture_model.json")
    recommended = {"classifier": "texture", "members": ["texture"], "weights": None, "why": "validation macro-F1 1.0"}
    mixed = Classifier([classifier.get("tinya"), texture], recommended=recommended)
    with TestClient(create_app(mixed, tiny_run, top_k=3)) as test_client:
        yield test_client


def test_info_names_the_recommended_default_and_where_grad_cam_applies(client):
    info = client.get("/api/info").json()
    assert info["models"] == ["tinya", "texture", "ensemble"] and info["default_model"] == "texture"
    assert info["recommended"]["why"] == "validation macro-F1 1.0"
    assert info["gradcam"] == {"tinya": True, "texture": False, "ensemble": True}


def test_texture_predicts_and_grad_cam_is_not_available(client):
    image = png_bytes(1, 64)
    body = client.post("/api/predict", files=[("files", ("a.png", image))]).json()  # default: the recommended
    result = body["results"][0]
    assert body["model"] == "texture" and result["ok"] and result["predicted"] == CLASSES[1]
    assert result["input_shape"] == [48, 48] and abs(result["confidence"] - 0.9) < 1e-9
    cam = client.post("/api/explain", files={"file": ("a.png", image)}, data={"model": "texture"})
    assert cam.status_code == 400 and "Grad-CAM is not available for texture" in cam.json()["error"]
    mean = client.post("/api/explain", files={"file": ("a.png", image)}, data={"model": "ensemble"})
    assert mean.status_code == 200 and mean.json()["model"] == "tinya"  # the ensemble's network is shown

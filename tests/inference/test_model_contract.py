"""The one model contract through the Classifier and evaluation, with a Keras network and a test double.

The double answers `predict_proba` itself (as the texture model does) at its own decode size, so
these tests check that nothing downstream asks "which kind is it?": decoding per model, the
ensemble's mean, the recommended classifier's weights, evaluation without Grad-CAM.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from virion.errors import VirionError

DOUBLE_SIZE = 48


class BrightnessDouble:
    """Honours the contract: uint8 (N, S, S) at its own size in, (N, C) probabilities out."""

    def __init__(self, class_names):
        self.class_names = list(class_names)
        self.input_size = DOUBLE_SIZE
        self.seen: list[tuple] = []

    def predict_proba(self, images, *, batch_size=32, tta=False):
        images = np.asarray(images)
        assert images.dtype == np.uint8 and images.ndim == 3
        self.seen.append(images.shape)
        x = images.reshape(len(images), -1).mean(axis=1) / 255.0
        logits = np.stack([np.full_like(x, 0.0), 8 * x, 4 - 8 * x][: len(self.class_names)], axis=1)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def _double_loaded(class_names, tmp_path, name="texture"):
    from virion.run.loading import LoadedModel
    from virion.run.schema import ModelMetadata

    meta = ModelMetadata(class_names=list(class_names), input_size=DOUBLE_SIZE, name=name, kind="texture", stretch=None)
    return LoadedModel(name=name, model=BrightnessDouble(class_names), metadata=meta, source=tmp_path / "x.json")


@pytest.fixture()
def mixed(run_dir, class_names, tmp_path):
    """A Classifier over a Keras network (32 px) and the double (48 px)."""
    from virion.inference.classifier import Classifier
    from virion.run.loading import load_models

    keras_model = load_models(run_dir, "tiny")[0]
    return Classifier([keras_model, _double_loaded(class_names, tmp_path)])


def test_each_model_gets_its_own_decode_and_the_ensemble_is_their_mean(mixed, image_dir):
    from virion.inference.proba import predict_proba

    files = sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in (".png", ".tif", ".tiff"))
    each = mixed.predict_each(files)
    assert [p.model for p in each] == ["tiny", "texture"]
    assert mixed.get("texture").model.seen[-1][1:] == (DOUBLE_SIZE, DOUBLE_SIZE)
    # the double's rows are exactly its own predict_proba on its own decode
    decoded = mixed.decode([f for f in files if f.name != "broken.tif"], model="texture")
    np.testing.assert_allclose(each[1].probabilities, predict_proba(mixed.get("texture").model, decoded))
    default = mixed.predict(files)  # two models, no recommendation: their mean
    assert default.model == "ensemble" and mixed.default_model == "ensemble"
    np.testing.assert_allclose(default.probabilities, (each[0].probabilities + each[1].probabilities) / 2, atol=1e-6)
    assert [s for s, _ in default.failures] == [str(f) for f in files if f.name == "broken.tif"]
    rows = default.to_rows(2)
    assert len(rows) == len(files) and {r["model"] for r in rows if not r["error"]} == {"ensemble"}


def test_recommended_weights_drive_the_default_prediction(mixed, image_dir):
    files = [image_dir / "a" / "one.png", image_dir / "b" / "eight.tif"]
    each = mixed.predict_each(files)
    mixed.recommended = {
        "classifier": "ensemble-weighted",
        "members": ["tiny", "texture"],
        "weights": [0.25, 0.75],
        "why": "validation macro-F1 0.9 vs ...",
        "ensembles": {"ensemble-weighted": {"members": ["tiny", "texture"], "weights": [0.25, 0.75]}},
    }
    assert mixed.default_model == "ensemble-weighted" and "ensemble-weighted" in mixed.choices
    got = mixed.predict(files)
    assert got.model == "ensemble-weighted" and mixed.why.startswith("validation macro-F1")
    np.testing.assert_allclose(got.probabilities, 0.25 * each[0].probabilities + 0.75 * each[1].probabilities)
    mixed.recommended = {"classifier": "texture", "members": ["texture"], "weights": None, "why": "best"}
    assert mixed.predict(files).model == "texture"
    mixed.recommended = {"classifier": "resnet50", "members": ["resnet50"], "weights": None, "why": "not loaded"}
    assert mixed.default_model == "ensemble"  # the recommended model is not loaded: fall back, never fail


def test_no_grad_cam_for_a_model_that_is_not_a_network(mixed, image_dir, tmp_path):
    from virion.inference.explain import explain_files

    with pytest.raises(VirionError, match="texture: .*no Grad-CAM") as caught:
        mixed.explain(image_dir / "a" / "one.png", model="texture")
    assert "\n" not in str(caught.value)
    written, bad, layers, skipped = explain_files(mixed, [image_dir / "a" / "one.png"], tmp_path / "cam")
    assert written == 1 and "tiny" in layers and list(skipped) == ["texture"]


def test_evaluate_model_takes_any_model_with_the_contract(tmp_path, class_names):
    from virion.evaluation.evaluate import evaluate_model

    double = BrightnessDouble(class_names)
    rng = np.random.default_rng(0)
    levels = [20, 20, 128, 128, 230, 230]
    images = np.stack([np.clip(rng.normal(v, 3, (DOUBLE_SIZE, DOUBLE_SIZE)), 0, 255) for v in levels]).astype(np.uint8)
    labels = np.array([2, 2, 0, 1, 1, 1])
    with pytest.warns(RuntimeWarning, match="never predicted"):  # class 0 is never predicted
        summary = evaluate_model(double, images, labels, class_names, tmp_path / "ev", model_name="texture")
    probs = double.predict_proba(images)
    assert summary["accuracy"] == pytest.approx(float((probs.argmax(1) == labels).mean()))
    assert summary["log_loss"] == pytest.approx(-np.mean(np.log(probs[np.arange(6), labels])), rel=1e-6)
    assert 0 <= summary["expected_calibration_error"] <= 1
    assert (tmp_path / "ev" / "confusion_matrix.png").is_file()
    assert not (tmp_path / "ev" / "gradcam_examples.png").exists()  # not a network: no Grad-CAM, no note either
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["model"] == "texture"

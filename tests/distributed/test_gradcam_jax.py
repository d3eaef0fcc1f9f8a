"""Grad-CAM gives the same heatmap on JAX as on TensorFlow (issue 10: explain on either backend)."""

from __future__ import annotations

import keras
import numpy as np

from virion.inference.gradcam import gradcam_with_probabilities

from .conftest import run_jax

CHILD = """
import json, sys
import keras, numpy as np
from virion.inference.gradcam import gradcam_with_probabilities
model = keras.models.load_model(sys.argv[1], safe_mode=True)
image = np.load(sys.argv[2])
heat, k, conf, probs = gradcam_with_probabilities(model, image, class_index=int(sys.argv[3]))
print(json.dumps({"heatmap": heat.tolist(), "class": k, "probs": probs.tolist()}))
"""


def _tiny_model():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_a")(x)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv_last")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def test_gradcam_on_jax_matches_tensorflow(jax_installed, tmp_path):
    model = _tiny_model()
    path = tmp_path / "tiny.keras"
    model.save(path)
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.save(tmp_path / "image.npy", image)
    for class_index in (0, 2):
        heat_tf, _, _, probs_tf = gradcam_with_probabilities(model, image, class_index=class_index)
        child = run_jax(CHILD, devices=1, args=(path, tmp_path / "image.npy", class_index), timeout=240)
        assert child["class"] == class_index
        np.testing.assert_allclose(child["probs"], probs_tf, atol=1e-5)
        np.testing.assert_allclose(np.array(child["heatmap"]), heat_tf, atol=1e-4)
        assert heat_tf.max() > 0  # a real map, not all zeros on both sides

"""Saved models load with plain Keras in a fresh process that cannot import virion at all."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from virion.models.registry import build_model
from virion.training.saving import save_model_files

# No virion: the editable install's path entries are dropped and any import of it fails.
LOAD = """
import sys
sys.path = [p for p in sys.path if "virion" not in p and not p.endswith("/src")]

class NoVirion:
    def find_spec(self, name, path=None, target=None):
        if name == "virion" or name.startswith("virion."):
            raise ImportError("virion must not be needed to load a saved model")
        return None

sys.meta_path.insert(0, NoVirion())
import numpy as np
import keras
x = np.load(sys.argv[1])
for path in sys.argv[2:]:
    model = keras.models.load_model(path, compile=False)
    np.save(path + ".npy", model.predict(x, verbose=0))
assert not [m for m in sys.modules if m.startswith("virion")]
"""


def _small_resnet_like_model():
    """Conv + virion's fused BatchNormalization (what ResNet-50 uses) + head; seconds to save, not minutes."""
    import keras

    from virion.models.batchnorm import BatchNormalization

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, use_bias=False)(x)
    x = BatchNormalization(momentum=0.9, epsilon=1.001e-5, name="conv1_bn")(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x), name="resnet50")


def test_resnet50_uses_the_fused_layer_that_the_saved_files_replace():
    from virion.models.batchnorm import BatchNormalization

    model = build_model("resnet50", 3, 32)
    assert any(type(layer) is BatchNormalization for layer in model.layers)


def test_saved_files_load_without_virion_in_a_fresh_process(tmp_path):
    model = _small_resnet_like_model()
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    rng = np.random.default_rng(1)
    model.fit(rng.uniform(0, 255, (8, 32, 32, 3)), np.eye(3)[np.arange(8) % 3], epochs=1, verbose=0)
    files = save_model_files(model, tmp_path, "resnet50_virus_classification")
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    expected = model.predict(x, verbose=0)
    paths = [str(files["keras"]), str(files["h5"])]
    proc = subprocess.run(
        [sys.executable, "-c", LOAD, str(tmp_path / "x.npy"), *paths],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for path in paths:
        np.testing.assert_allclose(np.load(path + ".npy"), expected, rtol=1e-4, atol=1e-5)

"""Fixtures for the inference tests: tiny saved models in a run folder, and test images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

CLASSES = ["Adenovirus", "Ebola", "Nipah virus"]


def tiny_model(input_size: int, num_classes: int = 3, seed: int = 0, name: str = "tiny"):
    """A small CNN shaped like ours: raw 0..255 in, scaling in the graph, softmax out."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((input_size, input_size, 3))
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv_last")(x)
    x = keras.layers.Activation("relu", name="conv_last_relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


def save_model_folder(model, folder: Path, name: str, class_names, input_size: int, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{name}_virus_classification"
    model.save(folder / f"{stem}.keras")
    model.save(folder / f"{stem}.h5")
    meta = {
        "name": name,
        "class_names": list(class_names),
        "input_size": input_size,
        "scaling": "rescale_0_1",
        "weights": "none",
        **extra,
    }
    (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    """A run folder with two tiny models (different input sizes, same classes)."""
    root = tmp_path_factory.mktemp("runs") / "run1"
    save_model_folder(tiny_model(32, seed=1), root / "tiny", "tiny", CLASSES, 32)
    save_model_folder(tiny_model(40, seed=2), root / "tiny40", "tiny40", CLASSES, 40)
    (root / "config.json").write_text(json.dumps({"seed": 0}))
    return root


def _write_tiff(path: Path, array: np.ndarray) -> None:
    import tifffile

    tifffile.imwrite(path, array)


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> Path:
    """PNG, 8-bit and 16-bit TIFF in nested folders, plus a corrupt file, a hidden file and a note."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    (root / "a").mkdir()
    (root / "b" / "deep").mkdir(parents=True)
    yy, xx = np.mgrid[:48, :48]
    blob = np.exp(-((yy - 20) ** 2 + (xx - 28) ** 2) / 60.0)
    Image.fromarray((40 + 180 * blob + rng.normal(0, 5, blob.shape)).clip(0, 255).astype(np.uint8)).save(
        root / "a" / "one.png"
    )
    Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(root / "a" / "TWO.PNG")
    _write_tiff(root / "b" / "eight.tif", (200 - 150 * blob).astype(np.uint8))
    # 16-bit with a narrow value range: a naive 8-bit conversion would turn it all white.
    _write_tiff(root / "b" / "deep" / "sixteen.tiff", (1000 + 3000 * blob).astype(np.uint16))
    (root / "b" / "broken.tif").write_bytes(b"II*\x00 this is not really a tiff")
    (root / "a" / ".hidden.png").write_bytes((root / "a" / "one.png").read_bytes())
    (root / "a" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="session")
def make_tiny_model():
    return tiny_model


@pytest.fixture(scope="session")
def save_model():
    return save_model_folder


@pytest.fixture(scope="session")
def class_names():
    return list(CLASSES)

"""Tiny, easy, deterministic data and a tiny stand-in model so trainer tests take seconds.

The trainer's mechanics (checkpoints, resume, history, saving, feature cache) do not depend on
the architecture, so most tests swap the registry's builder for a small CNN with the same
layer names as the transfer models' head; one test trains the real ResNet-50.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

LEVELS = (40, 128, 215)  # one mean intensity per class: learnable in a few steps


def make_images(root: Path, per_class: int = 15, size: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c, level in enumerate(LEVELS):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.clip(level + rng.normal(0, 10, (size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"img{i:02d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("tiny-data"))


def tiny_model(name: str, num_classes: int, input_size: int = 32, weights="imagenet") -> keras.Model:
    """A small CNN shaped like our transfer models: frozen "base", then head_pool/dense/dropout/predictions."""
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0, name="preprocess")(inputs)
    frozen = name != "resnet50" and str(weights).lower() != "none"
    conv = keras.layers.Conv2D(16, 3, activation="relu", name="base_conv")
    conv.trainable = not frozen
    x = conv(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = keras.layers.Dense(16, activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(0.1, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


@pytest.fixture
def tiny_registry(monkeypatch):
    """Make the trainer build `tiny_model` instead of the real architectures."""
    import virion.models.catalog as catalog
    import virion.models.registry as registry

    monkeypatch.setattr(registry, "build_model", tiny_model)
    # The stand-in takes any size: let the config accept the tiny images for every model name.
    for name in catalog.MIN_INPUT_SIZE:  # the same dict object everywhere it is imported
        monkeypatch.setitem(catalog.MIN_INPUT_SIZE, name, 8)
    return tiny_model


@pytest.fixture
def make_config():
    """`make_config(data, out, **overrides)`: a TrainConfig for seconds-long runs."""
    return base_config


def base_config(data: Path, out: Path, **overrides):
    from virion.training.config import TrainConfig

    values = dict(
        data=str(data),
        models=["resnet50"],
        out=str(out),
        input_size=32,
        batch_size=4,
        epochs=3,
        learning_rate=3e-2,
        stretch="linear",
        weights="none",
        val_fraction=0.3,
        test_fraction=0.2,
        augment={"rotation": 0.0, "shift": 0.0, "horizontal_flip": False},
    )
    values.update(overrides)
    return TrainConfig.from_dict(values)

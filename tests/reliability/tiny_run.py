"""A seconds-long, deterministic virion training for the fault-injection tests.

Imported by the tests (conftest puts this folder on sys.path) and run as a script in a child
process that a crash point ends with os._exit:

    python tiny_run.py train DATA RUN [KEY=JSON ...]     # train_run(config) with the tiny model
    python tiny_run.py cli ARGS...                       # `virion ARGS...` with the tiny model

The model is a small CNN shaped like virion's transfer models (frozen "base", head_pool, dense,
dropout, predictions) so the head, fine-tune and feature-cache paths run in a second; TensorFlow's
op determinism is on, so an interrupted and resumed run can be compared with an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

LEVELS = (40, 128, 215)  # one mean intensity per class: learnable in a few steps
SIZE = 16


def make_images(root: Path, per_class: int = 8, size: int = SIZE, seed: int = 0) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, level in enumerate(LEVELS):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.clip(level + rng.normal(0, 25, (size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"img{i:02d}.png")
    return root


def tiny_model(name: str, num_classes: int, input_size: int = SIZE, weights="imagenet", dense: int = 16):
    import keras

    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0, name="preprocess")(inputs)
    conv = keras.layers.Conv2D(8, 3, activation="relu", name="base_conv")
    conv.trainable = name == "resnet50" or str(weights).lower() == "none"
    x = conv(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = keras.layers.Dense(dense, activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(0.2, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


def install(dense: int = 16) -> None:
    """Deterministic ops; the registry builds the tiny model; the config accepts tiny images."""
    import functools

    import tensorflow as tf

    import virion.models.catalog as catalog
    import virion.models.registry as registry

    tf.config.experimental.enable_op_determinism()
    registry.build_model = functools.partial(tiny_model, dense=dense)
    for name in catalog.MIN_INPUT_SIZE:
        catalog.MIN_INPUT_SIZE[name] = 8


def settings(data: Path, out: Path, **overrides) -> dict:
    """A transfer model (tiny) with 2 head epochs and 1 fine-tune epoch: both stages and the switch."""
    values = dict(
        data=str(data),
        models=["xception"],
        out=str(out),
        input_size=SIZE,
        batch_size=6,
        epochs=2,
        fine_tune_epochs=1,
        unfreeze="base_conv",
        fine_tune_lr=1e-2,
        learning_rate=3e-2,
        stretch="linear",
        weights=str(Path(data).parent / "marker.weights.h5"),
        val_fraction=0.25,
        test_fraction=0.2,
        augment={"rotation": 10.0, "shift": 0.1, "horizontal_flip": True},
        seed=3,
    )
    values.update(overrides)
    return values


def config_from(values: dict):
    from virion.training.config import TrainConfig

    Path(values["weights"]).touch()  # any existing file marks the base as frozen; the stand-in ignores it
    return TrainConfig.from_dict(values)


def main(argv: list[str]) -> int:
    command, *rest = argv
    if command == "train":
        data, out, *pairs = rest
        dense = 16
        overrides = {}
        for pair in pairs:
            key, _, value = pair.partition("=")
            overrides[key] = json.loads(value)
        dense = overrides.pop("dense", dense)
        install(dense)
        from virion.training.trainer import train_run

        train_run(config_from(settings(Path(data), Path(out), **overrides)), progress=False)
        return 0
    if command == "cli":
        dense = int(os.environ.get("TINY_DENSE", "16"))
        install(dense)
        from virion.cli.main import main as virion_main

        return virion_main(rest)
    raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Fixtures for the evaluation/report tests: a hand-wired model whose answers we know, and fake runs.

The model predicts from mean brightness only (Rescaling → global average pooling → Dense with fixed
weights), so for flat test images we know every prediction in advance: dark → class 0, mid-grey →
class 1, bright → class 2, and class 3 is never predicted. Mislabelling some images then gives a
confusion matrix we can write down by hand.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

CLASS_NAMES = ["Adeno <virus>", "CCHF", "Nipah virus", "Rift Valley"]  # "<>" checks HTML escaping
LEVELS = {0: 30, 1: 128, 2: 220}  # grey level that the model maps to each class
SIZE = 32


def brightness_model(num_classes: int = 4, size: int = SIZE):
    """Mean brightness x in 0..1 → logits [-20x+8, 0, 20x-12, -100, ...]: class 3+ never wins."""
    import keras

    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.Conv2D(1, 1, use_bias=False, name="mean_channel")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs, name="brightness")
    model.get_layer("mean_channel").set_weights([np.full((1, 1, 3, 1), 1 / 3, np.float32)])
    kernel = np.zeros((1, num_classes), np.float32)
    bias = np.full((num_classes,), -100.0, np.float32)
    kernel[0, :3] = [-20.0, 0.0, 20.0]
    bias[:3] = [8.0, 0.0, -12.0]
    model.get_layer("head").set_weights([kernel, bias])
    return model


def flat_images(levels, seed: int = 0, size: int = SIZE) -> np.ndarray:
    """uint8 (N, size, size) images of the given grey levels with a little noise and a blob."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(levels), size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i, level in enumerate(levels):
        img = level + rng.normal(0, 3, (size, size))
        img += 8 * (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 5) ** 2) - 2
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


@pytest.fixture(scope="session")
def model():
    return brightness_model()


@pytest.fixture(scope="session")
def known_set():
    """Images, labels and the predictions the model must give, with mistakes at known places.

    truth:      0 0 0 1 1 1 2 2 2 3 3
    predicted:  0 0 1 1 1 2 2 2 0 2 0
    """
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3])
    predicted = np.array([0, 0, 1, 1, 1, 2, 2, 2, 0, 2, 0])
    images = flat_images([LEVELS[int(p)] for p in predicted])
    files = [f"{CLASS_NAMES[t]}/img_{i:02d}.png" for i, t in enumerate(labels)]
    return {"images": images, "labels": labels, "predicted": predicted, "files": files}


def write_history(path: Path, epochs: int = 3) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "val_macro_f1", "lr"])
        for e in range(epochs):
            w.writerow([e, 1.5 - 0.3 * e, 0.4 + 0.1 * e, 1.6 - 0.25 * e, 0.35 + 0.1 * e, 0.3 + 0.1 * e, 0.001])
    return path


def make_run(root: Path, models: dict[str, dict], *, data: Path | None = None, skipped: list[str] = ()) -> Path:
    """A run folder as `virion train` writes it: config, dataset.json, skipped files, model folders.

    models: folder name → metadata overrides; each gets the brightness model saved as .keras.
    """
    run = root
    run.mkdir(parents=True, exist_ok=True)
    config = {
        "data": str(data or root / "no-data"),
        "input_size": SIZE,
        "batch_size": 4,
        "epochs": 3,
        "classes": None,
        "exclude": [],
        "include_subfolders": False,
        "val_fraction": 0.2,
        "test_fraction": 0.3,
        "seed": 0,
        "stretch": None,
        "models": list(models),
    }
    (run / "config.json").write_text(json.dumps(config))
    counts = {
        "train": {c: 10 + i for i, c in enumerate(CLASS_NAMES)},
        "validation": {c: 3 for c in CLASS_NAMES},
        "test": {c: 2 + (i == 0) for i, c in enumerate(CLASS_NAMES)},
    }
    (run / "dataset.json").write_text(
        json.dumps(
            {
                "root": config["data"],
                "layout": "class-folders",
                "class_names": CLASS_NAMES,
                "counts": counts,
                "ignored": [{"path": "notes.txt", "reason": "not an image"}],
                "fingerprint": "abc123",
            }
        )
    )
    (run / "skipped_files.txt").write_text("".join(f"{s}\n" for s in skipped))
    for name, overrides in models.items():
        mdir = run / name
        mdir.mkdir()
        m = brightness_model()
        m.save(mdir / f"{name}_virus_classification.keras")
        meta = {
            "class_names": CLASS_NAMES,
            "input_size": SIZE,
            "weights": "none",
            "params": m.count_params(),
            "train_seconds": 12.5,
            "images_per_second": 100.0,
            "best_epoch": 2,
            "best_val_accuracy": 0.55,
        }
        meta.update(overrides)
        (mdir / "metadata.json").write_text(json.dumps(meta))
        write_history(mdir / "history.csv")
    return run


@pytest.fixture(scope="session")
def evaluated_run(tmp_path_factory, known_set):
    """A two-model run, each model evaluated on the known set (arrays, no data layer needed)."""
    from virion.evaluation.evaluate import evaluate_model
    from virion.run.loading import find_model_file, load_keras_model

    run = make_run(
        tmp_path_factory.mktemp("runs") / "demo-run",
        {"resnet50": {"weights": "none"}, "xception": {"weights": "none", "train_seconds": 30.0}},
        skipped=["bad/broken.tif\ttruncated file"],
    )
    for name in ("resnet50", "xception"):
        mdir = run / name
        with pytest.warns(RuntimeWarning):  # class 3 is never predicted
            evaluate_model(
                load_keras_model(find_model_file(mdir)),
                known_set["images"],
                known_set["labels"],
                CLASS_NAMES,
                mdir / "evaluation",
                files=known_set["files"],
                history_csv=mdir / "history.csv",
                model_name=name,
                batch_size=4,
            )
    return run


@pytest.fixture(scope="session")
def helpers():
    """The helpers above for test modules (importlib import mode: conftest is not importable)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        CLASS_NAMES=CLASS_NAMES,
        LEVELS=LEVELS,
        SIZE=SIZE,
        brightness_model=brightness_model,
        flat_images=flat_images,
        write_history=write_history,
        make_run=make_run,
    )

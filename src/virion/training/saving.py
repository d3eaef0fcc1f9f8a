"""Atomic model files, in the order Keras 3.15 needs.

Measured in Keras 3.15: saving a model as legacy `.h5` strips its optimizer from the model's
config, so a `.keras` written afterwards reloads with the wrong optimizer and silently loses the
Adam state. We therefore always write the `.keras` first and the `.h5` last. Each file goes to a
temporary name in the same folder and is renamed into place, so a crash never leaves a truncated
model where a good one was.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import keras

from virion.atomic import atomic_write


def save_keras(model: keras.Model, path: str | Path) -> Path:
    """Native format: architecture, weights, compile config and optimizer state (resumable)."""
    return atomic_write(path, lambda tmp: model.save(tmp))


def save_h5(model: keras.Model, path: str | Path) -> Path:
    """Legacy HDF5 (the reference's format), for inference. Call after `save_keras`.

    Written without the optimizer: Keras 3 cannot continue training from an `.h5` optimizer state
    anyway (resume uses the `.keras` file), and the Adam moments would triple the file's size.
    """
    # Keep the in-memory model whole too: the legacy writer pops "optimizer" from the live
    # compile config, which would break any later `.keras` save of this model.
    compile_config = getattr(getattr(model, "_compile_config", None), "config", None)
    optimizer_entry = compile_config.get("optimizer") if isinstance(compile_config, dict) else None

    def write(tmp):
        with warnings.catch_warnings():  # Keras warns that .h5 is legacy; we write it on purpose
            warnings.simplefilter("ignore")
            model.save(tmp, include_optimizer=False)
    try:
        return atomic_write(path, write)
    finally:
        if optimizer_entry is not None and "optimizer" not in compile_config:
            compile_config["optimizer"] = optimizer_entry


def save_weights(model: keras.Model, path: str | Path) -> Path:
    """Weights only (best checkpoint); path must end in `.weights.h5`."""
    path = Path(path)
    name = path.name
    if not name.endswith(".weights.h5"):
        raise ValueError(f"{path}: weights file names must end in .weights.h5")
    return atomic_write(path, model.save_weights)


def save_model_files(model: keras.Model, folder: str | Path, stem: str) -> dict[str, Path]:
    """`<stem>.keras` first, then `<stem>.h5`; returns both paths."""
    folder = Path(folder)
    keras_path = save_keras(model, folder / f"{stem}.keras")
    h5_path = save_h5(model, folder / f"{stem}.h5")
    return {"keras": keras_path, "h5": h5_path}


def load_model(path: str | Path, *, compile: bool = True) -> keras.Model:
    """Load a model we wrote ourselves (our files, so Lambda-style layers are trusted)."""
    import virion.models.batchnorm  # noqa: F401 - registers virion>BatchNormalization for the loader
    import virion.data.augment  # noqa: F401 - registers virion>TEMAugment

    return keras.saving.load_model(str(path), compile=compile, safe_mode=False)

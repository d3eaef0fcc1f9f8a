"""Model files: the resume state (model + optimizer) and the final files a user deploys.

Every file goes to a temporary name in its folder and is renamed into place once complete
(`virion.atomic`), so a crash, a full disk or a file-size limit never leaves a truncated model
where a good one was, and never one that looks complete.

The final `.keras`/`.h5` hold the inference model only: stock Keras layers (virion's fused
BatchNormalization is a training-time detail, swapped for `keras.layers.BatchNormalization` with
the same weights) and no optimizer, so plain `keras.models.load_model` reads them in a process
that never imported virion, and a ResNet-50 file is a third of the size with Adam's moments.
The resume state under `state/` keeps the optimizer.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import keras

from virion.atomic import atomic_write
from virion.errors import VirionError
from virion.training.faults import crash_point


def save_state_model(model: keras.Model, path: str | Path) -> Path:
    """Native format with the compile config and optimizer state (what resume continues from)."""

    def write(tmp):
        model.save(tmp)
        crash_point("state_save")

    return atomic_write(path, write)


def save_weights(model: keras.Model, path: str | Path) -> Path:
    """Weights only (best checkpoint); path must end in `.weights.h5`."""
    path = Path(path)
    if not path.name.endswith(".weights.h5"):
        raise ValueError(f"{path}: weights file names must end in .weights.h5")

    def write(tmp):
        model.save_weights(tmp)
        crash_point("best_save")

    return atomic_write(path, write)


def inference_model(model: keras.Model) -> keras.Model:
    """An uncompiled copy of `model` built from stock Keras layers, with the same weights."""
    from virion.models.batchnorm import BatchNormalization as FusedBatchNormalization

    def stock(layer):
        if isinstance(layer, FusedBatchNormalization):
            return keras.layers.BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    clone = keras.models.clone_model(model, clone_function=stock, recursive=True)
    # clone_model compiles the clone like the original; a new Model on the same graph is uncompiled.
    inputs = clone.inputs[0] if len(clone.inputs) == 1 else clone.inputs  # keep single tensors single
    outputs = clone.outputs[0] if len(clone.outputs) == 1 else clone.outputs
    copy = keras.Model(inputs, outputs, name=model.name)
    copy.set_weights(model.get_weights())
    return copy


def save_model_files(model: keras.Model, folder: str | Path, stem: str) -> dict[str, Path]:
    """`<stem>.keras` and `<stem>.h5` of the inference model (stock layers, no optimizer)."""
    folder = Path(folder)
    plain = inference_model(model)

    def write_keras(tmp):
        plain.save(tmp)
        crash_point("final_save")

    def write_h5(tmp):
        with warnings.catch_warnings():  # Keras warns that .h5 is legacy; we write it on purpose
            warnings.simplefilter("ignore")
            plain.save(tmp, include_optimizer=False)

    keras_path = atomic_write(folder / f"{stem}.keras", write_keras)
    h5_path = atomic_write(folder / f"{stem}.h5", write_h5)
    return {"keras": keras_path, "h5": h5_path}


def load_state_model(path: str | Path, model_name: str) -> keras.Model:
    """The resume checkpoint, in safe mode; a damaged or unsafe file is one line saying how to go on."""
    from virion.run.loading import load_keras_model

    path = Path(path)
    try:
        return load_keras_model(path, compile=True)
    except VirionError as exc:
        reason = str(exc)
        reason = reason.split("(", 1)[1].rsplit(")", 1)[0] if "(" in reason else "missing or unreadable"
        raise VirionError(
            f"{path}: the resume checkpoint of {model_name} cannot be loaded ({reason}); delete "
            f"{path.parent} to train {model_name} again from its first epoch, then --resume"
        ) from None

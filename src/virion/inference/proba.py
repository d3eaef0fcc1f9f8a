"""The one model contract: every model virion loads answers `predict_proba`.

    predict_proba(images: uint8 (N, S, S) decoded at the model's own DecodeSettings,
                  *, batch_size=32, tta=False) -> float (N, C), rows summing to 1

A non-network model (the texture model, `virion.models.texture`) answers it natively; a Keras
network gets it from `KerasProba`, an adapter over `predict_arrays` (fixed-shape batches, 8-view
TTA). Evaluation, ensembles, `predict`, `serve` and `scan` call only this, never "which kind is it?".
"""

from __future__ import annotations

import numpy as np

from virion.inference.batching import predict_arrays


class KerasProba:
    """A Keras classifier (softmax out, raw 0..255 (H, W, 3) in) behind `predict_proba`."""

    def __init__(self, model):
        self.model = model

    @property
    def num_classes(self) -> int:
        return int(self.model.outputs[0].shape[-1])

    def predict_proba(self, images: np.ndarray, *, batch_size: int = 32, tta: bool = False) -> np.ndarray:
        return predict_arrays(self.model, images, batch_size=batch_size, tta=tta)

    def count_params(self) -> int:
        return int(self.model.count_params())


def is_network(model) -> bool:
    """A Keras network (Grad-CAM applies), as opposed to a model that answers predict_proba itself."""
    return not callable(getattr(model, "predict_proba", None)) and hasattr(model, "outputs")


def as_predictor(model):
    """The model itself when it answers `predict_proba` (texture, an adapter), else the Keras adapter."""
    return model if callable(getattr(model, "predict_proba", None)) else KerasProba(model)


def num_classes_of(model) -> int:
    """How many probabilities the model gives per image."""
    if is_network(model):
        return int(model.outputs[0].shape[-1])
    names = getattr(model, "class_names", None)
    if names is not None:
        return len(names)
    return int(as_predictor(model).num_classes)


def predict_proba(model, images: np.ndarray, *, batch_size: int = 32, tta: bool = False) -> np.ndarray:
    """(N, C) probabilities of any model virion loads (Keras network or native predict_proba)."""
    images = np.asarray(images)
    probs = as_predictor(model).predict_proba(images, batch_size=int(batch_size), tta=bool(tta))
    probs = np.asarray(probs)
    if probs.ndim != 2 or len(probs) != len(images):
        raise ValueError(f"predict_proba gave shape {probs.shape} for {len(images)} images; expected (N, C)")
    return probs

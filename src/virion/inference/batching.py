"""The one way to feed arrays to a model: fixed-shape batches, optional 8-view TTA, softmax out.

Used by the Classifier (predict, the web page), evaluation and training's macro-F1 callback, so
every path pads, widens and averages the same way.
"""

from __future__ import annotations

import numpy as np


def as_model_input(batch: np.ndarray) -> np.ndarray:
    """uint8 grayscale (B, H, W) or (B, H, W, 1) -> float32 (B, H, W, 3) raw 0..255, as models expect.

    Other shapes (e.g. cached (B, D) features) pass through as float32.
    """
    batch = np.asarray(batch)
    if batch.ndim == 3:
        batch = batch[..., None]
    if batch.ndim == 4 and batch.shape[-1] == 1:
        batch = np.repeat(batch, 3, axis=-1)
    return batch.astype(np.float32, copy=False)


TTA_VIEWS = 8  # len(dihedral_views(x)): what "8-way TTA" in evaluation outputs counts


def dihedral_views(batch: np.ndarray) -> list[np.ndarray]:
    """The 8 flips x 90-degree turns of a (B, H, W, C) batch (TEM has no preferred orientation)."""
    views = []
    for flipped in (batch, batch[:, :, ::-1]):
        for k in range(4):
            views.append(np.ascontiguousarray(np.rot90(flipped, k=k, axes=(1, 2))))
    return views


def as_probabilities(scores: np.ndarray) -> np.ndarray:
    """Model outputs as a distribution; models end in softmax, but guard against logits."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return scores
    if scores.min() >= 0 and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):
        return scores / scores.sum(axis=1, keepdims=True)
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _device_multiple(size: int) -> int:
    """Round up to a multiple of the devices when data parallel (virion.training.distribute) is on."""
    import sys

    keras = sys.modules.get("keras")
    distribution = keras.distribution.distribution() if keras is not None else None
    devices = int(distribution.device_mesh.devices.size) if distribution is not None else 1
    return -(-size // devices) * devices


def predict_arrays(model, images: np.ndarray, *, batch_size: int = 32, tta: bool = False) -> np.ndarray:
    """Probabilities (N, C) float32 for `images` in order.

    Every batch has the same shape (a short last batch is padded by repeating its last image and
    the padding's outputs dropped), so the compiled predict function is traced once.
    """
    n = len(images)
    if n == 0:
        return np.zeros((0, int(model.outputs[0].shape[-1])), dtype=np.float32)
    size = _device_multiple(max(1, min(int(batch_size), n)))
    out = []
    for start in range(0, n, size):
        x = as_model_input(images[start : start + size])
        count = len(x)
        if count < size:
            x = np.concatenate([x, np.repeat(x[-1:], size - count, axis=0)])
        views = dihedral_views(x) if tta and x.ndim == 4 else [x]
        probs = [as_probabilities(np.asarray(model.predict_on_batch(v))[:count]) for v in views]
        out.append(np.mean(probs, axis=0))
    return np.concatenate(out).astype(np.float32)

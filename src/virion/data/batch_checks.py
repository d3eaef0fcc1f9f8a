"""Checks on decoded arrays before batching, shared by both input pipelines (tf.data and NumPy).

Here rather than in either pipeline so the NumPy one (the JAX path) imports no TensorFlow.
"""

from __future__ import annotations

import numpy as np

from virion.errors import VirionError


def check_images(images, what: str, allow_channels: bool = False) -> np.ndarray:
    images = np.asarray(images)  # a read-only memmap stays zero-copy here
    ok = images.ndim == 3 or (allow_channels and images.ndim == 4 and images.shape[-1] in (1, 3))
    if images.dtype != np.uint8 or not ok:
        shapes = "(N, H, W), (N, H, W, 1) or (N, H, W, 3)" if allow_channels else "grayscale (N, H, W)"
        raise VirionError(
            f"{what} must be uint8 {shapes}, got {images.dtype} {images.shape}: "
            "decode with virion.data.decode / virion.data.cache.load_split_arrays"
        )
    return images


def check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise VirionError(f"batch size {batch_size!r} is invalid: use a positive integer such as 64")
    return int(batch_size)


def check_split(arrays, num_classes, batch_size) -> tuple[np.ndarray, np.ndarray, int]:
    """(images, labels, batch_size) of a decoded split, or a one-line VirionError saying what is wrong."""
    images = check_images(arrays.images, "images of the split")
    labels = np.asarray(arrays.labels)
    batch_size = check_batch_size(batch_size)
    if len(images) == 0:
        raise VirionError(
            "cannot build an input pipeline from a split with no images: "
            "check the dataset folder (see the dataset summary) and its split options"
        )
    if labels.shape != (len(images),):
        raise VirionError(
            f"labels shape {labels.shape} does not match {len(images)} images: "
            "rebuild the split with virion.data.cache.load_split_arrays"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise VirionError(f"num_classes={num_classes!r} is invalid: a classifier needs at least 2 classes")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise VirionError(
            f"labels must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}: "
            "pass the dataset's number of classes"
        )
    return images, labels, batch_size

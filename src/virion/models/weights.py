"""Where the transfer models' base weights come from: ImageNet (Keras cache), none, or a local file.

Nothing here may hang or print a traceback offline: the cache is checked first, downloads run
under a short socket timeout, and any failure becomes one `VirionError` line naming the three
ways out (put the file in the Keras cache, `--weights PATH`, `--weights none`).
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import keras

from virion.errors import VirionError

_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications"
# Seconds without a byte from the server before a download gives up (socket-level timeout).
DOWNLOAD_TIMEOUT = 30.0
# Suffixes `keras.Model.load_weights` reads in Keras 3 (legacy .h5 is the ImageNet file format).
WEIGHT_SUFFIXES = (".h5", ".hdf5", ".keras", ".weights.json")


@dataclass(frozen=True)
class WeightsFile:
    """The ImageNet "notop" weights file that `keras.applications` downloads for one base."""

    file_name: str
    url: str
    file_hash: str  # md5 (32 hex digits) or sha256 (64), as keras.applications gives it


# The same names, URLs and hashes `keras.applications` uses (include_top=False), so a file put in
# the Keras cache by hand, or downloaded by Keras itself, is found by both.
IMAGENET_WEIGHTS = {
    "xception": WeightsFile(
        "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        f"{_BASE_URL}/xception/xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "b0042744bf5b25fce3cb969f33bebb97",
    ),
    "densenet121": WeightsFile(
        "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        f"{_BASE_URL}/densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "30ee3e1110167f948a6b9946edeeb738",
    ),
    "densenet201": WeightsFile(
        "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5",
        f"{_BASE_URL}/densenet/densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "c13680b51ded0fb44dff2d8f86ac8bb1",
    ),
    "efficientnetv2b0": WeightsFile(
        "efficientnetv2-b0_notop.h5",
        f"{_BASE_URL}/efficientnet_v2/efficientnetv2-b0_notop.h5",
        "893217f2bb855e2983157299931e43ff",
    ),
    "efficientnetv2s": WeightsFile(
        "efficientnetv2-s_notop.h5",
        f"{_BASE_URL}/efficientnet_v2/efficientnetv2-s_notop.h5",
        "af0682fb74e8c54910f2d4393339c070",
    ),
    "convnext_tiny": WeightsFile(
        "convnext_tiny_notop.h5",
        f"{_BASE_URL}/convnext/convnext_tiny_notop.h5",
        "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1",
    ),
}


def _weights_file(arch: str) -> WeightsFile:
    try:
        return IMAGENET_WEIGHTS[arch]
    except KeyError:
        valid = ", ".join(IMAGENET_WEIGHTS)
        raise VirionError(f"no ImageNet weights for model {arch!r}; choose one of: {valid}") from None


def keras_home() -> Path:
    """The Keras cache root as Keras resolves it, read now (not at import) so KERAS_HOME can change."""
    if "KERAS_HOME" in os.environ:
        return Path(os.environ["KERAS_HOME"]).expanduser()
    home = Path("~").expanduser()
    return (home if os.access(home, os.W_OK) else Path("/tmp")) / ".keras"


def cached_weights_path(arch: str) -> Path:
    """Where the ImageNet notop file for `arch` lives in the Keras cache (it may not exist)."""
    return keras_home() / "models" / _weights_file(arch).file_name


def _file_hash(path: Path, like: str) -> str:
    """The file's md5 or sha256 hex digest, whichever `like` (a known hash) is (as Keras decides)."""
    digest = hashlib.sha256() if len(like) == 64 else hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def imagenet_available(arch: str) -> bool:
    """True when the ImageNet weights for `arch` are already cached and intact (no network used).

    Lets the demo choose `weights="none"` offline without trying a download.
    """
    path, spec = cached_weights_path(arch), _weights_file(arch)
    return path.is_file() and _file_hash(path, spec.file_hash) == spec.file_hash


def offline_message(arch: str, reason: str = "") -> str:
    """The one-line error naming the three ways out when ImageNet weights cannot be had."""
    spec = _weights_file(arch)
    because = f" ({reason})" if reason else ""
    return (
        f"--weights imagenet: could not get the ImageNet weights for {arch}{because}; either put "
        f"{spec.file_name} in the Keras cache folder {cached_weights_path(arch).parent}, or pass "
        f"--weights PATH to a local copy of that file, or pass --weights none to train from "
        f"random initialization (base unfrozen, the whole network trains)"
    )


def _download_imagenet(arch: str) -> Path:
    spec = _weights_file(arch)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)  # urlretrieve has no timeout argument of its own
    try:
        path = keras.utils.get_file(
            spec.file_name,
            spec.url,
            cache_subdir="models",
            file_hash=spec.file_hash,
            cache_dir=str(keras_home()),
        )
    except Exception as exc:  # URL errors, socket timeouts, hash mismatch, unwritable cache
        # Keras puts the full URL in its message; the host is enough beside the file name.
        text = str(exc).replace(spec.url, spec.url.split("/")[2])
        reason = " ".join(text.split())[:200] or type(exc).__name__
        raise VirionError(offline_message(arch, reason)) from None
    finally:
        socket.setdefaulttimeout(previous)
    return Path(path)


def resolve_weights(arch: str, weights: str | os.PathLike | None) -> str | None:
    """Turn `--weights` into what `keras.applications` should load: a local file path, or None.

    Args:
        arch: a transfer model name (a key of `IMAGENET_WEIGHTS`).
        weights: "imagenet" (Keras cache, downloaded if missing), "none"/None (random init),
            a folder holding `arch`'s file under its Keras name, or a path to a local weights
            file (the ImageNet notop `.h5` format, or a Keras 3 `.weights.h5` / `.keras` file of
            the same base).

    Returns:
        None for random initialization, otherwise the path of an existing weights file.
    """
    spec = _weights_file(arch)
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return None
    if isinstance(weights, str) and weights.lower() == "imagenet":
        cached = cached_weights_path(arch)
        if cached.is_file() and _file_hash(cached, spec.file_hash) == spec.file_hash:
            return str(cached)
        return str(_download_imagenet(arch))

    path = Path(weights).expanduser()
    if path.is_dir():  # a folder of weight files under Keras' own names (one folder serves every model)
        if not (path / spec.file_name).is_file():
            raise VirionError(
                f"--weights {weights}: the folder has no {spec.file_name} for {arch}; put that file there, "
                f"or give per-model weights ({arch}=PATH|imagenet|none)"
            )
        path = path / spec.file_name
    if not path.is_file():
        raise VirionError(
            f"--weights {weights}: no such file; pass imagenet, none, or the path of an existing "
            f"weights file such as {spec.file_name}"
        )
    if not str(path).lower().endswith(WEIGHT_SUFFIXES):
        raise VirionError(
            f"--weights {weights}: not a Keras weights file (expected one of "
            f"{', '.join(WEIGHT_SUFFIXES)}); pass a file such as {spec.file_name}"
        )
    return str(path)

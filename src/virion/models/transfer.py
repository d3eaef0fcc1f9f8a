"""Xception and DenseNet121 by transfer learning, each as one flat functional graph.

The ImageNet base is created on the model's own scaled input tensor (not wrapped as a nested
sub-model), so every inner layer, the last convolutional feature map included, is reachable with
`model.get_layer(name)` for Grad-CAM and fine-tuning. The input is raw 0..255 pixels; each base's
`preprocess_input` is done in-graph with a serializable `Rescaling` layer (no Lambda), so `.h5`
and `.keras` files reload without custom objects. The head is the reference's:
GlobalAveragePooling2D -> Dense(256, ReLU) -> Dropout(0.5) -> Dense(num_classes, softmax).
"""

from __future__ import annotations

import math

import keras

from virion.errors import VirionError
from virion.models.weights import resolve_weights

# torchvision's ImageNet statistics, which `keras.applications.densenet.preprocess_input` uses.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

INPUT_LAYER = "image"
SCALING_LAYER = "preprocess"
HEAD_LAYERS = ("head_pool", "head_dense", "head_dropout", "predictions")
# Layers of a transfer model that are not part of the pretrained base.
NON_BASE_LAYERS = frozenset((INPUT_LAYER, SCALING_LAYER) + HEAD_LAYERS)
# Fraction of the base's layers `unfreeze_top` opens when given neither a fraction nor a layer.
DEFAULT_UNFREEZE_FRACTION = 0.2

ARCHS = {
    # arch: (keras.applications constructor name, last conv feature map layer, min input size)
    "xception": ("Xception", "block14_sepconv2_act", 71),
    "densenet121": ("DenseNet121", "relu", 32),
}


SCRATCH_BN_MOMENTUM = 0.9


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise VirionError(
            f"unknown transfer model {arch!r}; choose one of: {', '.join(ARCHS)}"
        )


def scaling_layer(arch: str) -> keras.layers.Rescaling:
    """The in-graph equivalent of `keras.applications.<arch>.preprocess_input` on 0..255 input.

    Xception: x / 127.5 - 1 ("tf" mode). DenseNet121: x / 255, then (x - mean) / std per channel
    ("torch" mode), folded into one per-channel scale and offset.
    """
    _check_arch(arch)
    if arch == "xception":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=SCALING_LAYER)
    scale = [1.0 / (255.0 * s) for s in IMAGENET_STD]
    offset = [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    return keras.layers.Rescaling(scale, offset=offset, name=SCALING_LAYER)


def base_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The pretrained base's layers of a transfer model, in graph order (input to last conv)."""
    return [layer for layer in model.layers if layer.name not in NON_BASE_LAYERS]


def base_is_frozen(model: keras.Model) -> bool:
    """True when no base layer has trainable weights (pretrained base, before fine-tuning)."""
    return not any(layer.trainable_weights for layer in base_layers(model))


def build_transfer_model(
    arch: str, num_classes: int, input_shape=(128, 128, 3), weights="imagenet"
) -> keras.Model:
    """Xception or DenseNet121 base + the reference head, as one flat functional model.

    Args:
        arch: "xception" or "densenet121".
        num_classes: size of the softmax.
        input_shape: (H, W, 3) of raw 0..255 pixels; Xception needs H, W >= 71, DenseNet >= 32.
        weights: "imagenet" (Keras cache / download), "none" (random initialization) or a path
            to a local weights file. With pretrained weights the base is frozen and its batch
            normalization runs in inference mode (a Keras 3 BatchNormalization with
            trainable=False uses its moving statistics even when training=True). With "none"
            the whole network trains, base included.
    """
    _check_arch(arch)
    app_name, _, min_size = ARCHS[arch]
    input_shape = tuple(input_shape)
    if min(input_shape[:2]) < min_size:
        raise VirionError(
            f"--input-size {input_shape[0]} is too small for {arch}; use {min_size} or more"
        )
    weights_path = resolve_weights(arch, weights)

    # --- functional model ---
    inputs = keras.Input(shape=input_shape, name=INPUT_LAYER)
    scaled = scaling_layer(arch)(inputs)
    constructor = getattr(keras.applications, app_name)
    try:
        base = constructor(include_top=False, weights=weights_path, input_tensor=scaled)
    except Exception as exc:
        if weights_path is None:
            raise
        reason = " ".join(str(exc).split())[:200]
        raise VirionError(
            f"--weights {weights_path}: cannot load it into {app_name} without its top "
            f"(include_top=False) ({reason}); pass that model's notop weights file, imagenet "
            f"or none"
        ) from None

    frozen = weights_path is not None
    for layer in base.layers:
        if layer.name not in NON_BASE_LAYERS:
            layer.trainable = not frozen
            if not frozen and isinstance(layer, keras.layers.BatchNormalization):
                # Trained from random initialization on a small dataset: let the inference-time
                # statistics settle in tens of steps, not hundreds (see resnet50.BN_MOMENTUM).
                layer.momentum = SCRATCH_BN_MOMENTUM

    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(base.output)
    x = keras.layers.Dense(256, activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(0.5, name="head_dropout")(x)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="predictions"
    )(x)
    return keras.Model(inputs, outputs, name=arch)


def unfreeze_top(
    model: keras.Model, fraction: float | None = None, from_layer: str | None = None
) -> int:
    """Open the top of the base for fine-tuning; batch normalization stays frozen.

    Frozen BN keeps the pretrained statistics and runs in inference mode, which is what keeps
    fine-tuning on a small dataset from wrecking the base. Recompile the model afterwards so
    the change takes effect.

    Args:
        model: a model from `build_transfer_model`.
        fraction: share of the base's layers to open, counted from the top (0 < fraction <= 1).
        from_layer: name of the first base layer to open; everything above it opens too.
            Give at most one of `fraction` and `from_layer`; neither means
            `DEFAULT_UNFREEZE_FRACTION`.

    Returns:
        The number of layers with weights that are now trainable in the opened part.
    """
    layers = base_layers(model)
    if not layers:
        raise VirionError(f"--unfreeze: model {model.name!r} has no pretrained base to unfreeze")
    if fraction is not None and from_layer is not None:
        raise VirionError("--unfreeze: give either a fraction or a layer name, not both")
    if from_layer is not None:
        names = [layer.name for layer in layers]
        if from_layer not in names:
            raise VirionError(
                f"--unfreeze {from_layer}: no such layer in the {model.name} base; "
                f"give a layer name such as {names[-1]!r} or a fraction like 0.2"
            )
        start = names.index(from_layer)
    else:
        fraction = DEFAULT_UNFREEZE_FRACTION if fraction is None else float(fraction)
        if not 0.0 < fraction <= 1.0:
            raise VirionError(f"--unfreeze {fraction}: a fraction must be in (0, 1]")
        start = len(layers) - math.ceil(fraction * len(layers))

    opened = 0
    for layer in layers[start:]:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
            continue
        layer.trainable = True
        opened += bool(layer.weights)
    return opened

"""Transfer models on `keras.applications` bases, each as one functional graph with our head.

The backbones: Xception and DenseNet121 (the reference's), DenseNet201, EfficientNetV2 B0/S and
ConvNeXt Tiny. The base is created on the model's own scaled input tensor (not wrapped as a
nested sub-model), so every inner layer, the last feature map included, is reachable with
`model.get_layer(name)` for Grad-CAM and fine-tuning (ConvNeXt's graph is re-laid flat from
copies of its layers, see `_flat_convnext`). The input is raw 0..255 pixels;
each family's ImageNet preprocessing is done in-graph by one serializable `Rescaling` layer named
"preprocess" (no Lambda; EfficientNetV2's and ConvNeXt's own `include_preprocessing` layers are
replaced by it, same arithmetic), so `.h5` and `.keras` files reload without custom code. The
head is the reference's: GlobalAveragePooling2D -> Dense(256, ReLU) -> Dropout(0.5) ->
Dense(num_classes, softmax in float32).
"""

from __future__ import annotations

import inspect
import math
from typing import NamedTuple

import keras

from virion.errors import VirionError
from virion.models import application_layers  # noqa: F401 - ConvNeXt's LayerScale loads from .h5
from virion.models.catalog import MIN_INPUT_SIZE
from virion.models.weights import resolve_weights

# torchvision's ImageNet statistics, used by DenseNet's `preprocess_input` ("torch" mode) and by
# the in-model preprocessing of EfficientNetV2-B* and ConvNeXt.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

INPUT_LAYER = "image"
SCALING_LAYER = "preprocess"
HEAD_LAYERS = ("head_pool", "head_dense", "head_dropout", "predictions")
# Layers of a transfer model that are not part of the pretrained base.
NON_BASE_LAYERS = frozenset((INPUT_LAYER, SCALING_LAYER) + HEAD_LAYERS)
# Fraction of the base's layers `unfreeze_top` opens when given neither a fraction nor a layer.
DEFAULT_UNFREEZE_FRACTION = 0.2


class Arch(NamedTuple):
    """One backbone: its keras.applications constructor, last feature-map layer, smallest input."""

    application: str
    last_conv: str  # output = the last 4-D feature map: the head's input and Grad-CAM's layer
    min_size: int


ARCHS = {
    "xception": Arch("Xception", "block14_sepconv2_act", MIN_INPUT_SIZE["xception"]),
    "densenet121": Arch("DenseNet121", "relu", MIN_INPUT_SIZE["densenet121"]),
    "densenet201": Arch("DenseNet201", "relu", MIN_INPUT_SIZE["densenet201"]),
    "efficientnetv2b0": Arch("EfficientNetV2B0", "top_activation", MIN_INPUT_SIZE["efficientnetv2b0"]),
    "efficientnetv2s": Arch("EfficientNetV2S", "top_activation", MIN_INPUT_SIZE["efficientnetv2s"]),
    # Keras leaves ConvNeXt's last LayerNormalization unnamed ("layer_normalization_<n>" varies by
    # process); `build_transfer_model` re-creates it under this fixed name with the same weights.
    "convnext_tiny": Arch("ConvNeXtTiny", "top_layernorm", MIN_INPUT_SIZE["convnext_tiny"]),
}

# What each base expects on raw 0..255 input, as keras.applications does it:
# "tf" = x/127.5 - 1 (Xception's preprocess_input); "torch" = x/255 then ImageNet mean/std
# (DenseNet's preprocess_input; EfficientNetV2-B0's and ConvNeXt's include_preprocessing layers);
# "v2" = x/128 - 1 (include_preprocessing of EfficientNetV2-S/M/L).
PREPROCESSING = {
    "xception": "tf",
    "densenet121": "torch",
    "densenet201": "torch",
    "efficientnetv2b0": "torch",
    "efficientnetv2s": "v2",
    "convnext_tiny": "torch",
}
SCALING_TEXT = {
    "tf": "x/127.5-1 (Xception preprocess_input)",
    "torch": "x/255 then ImageNet mean/std (torch-mode preprocess_input)",
    "v2": "x/128-1 (EfficientNetV2-S include_preprocessing)",
}

SCRATCH_BN_MOMENTUM = 0.9


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise VirionError(f"unknown transfer model {arch!r}; choose one of: {', '.join(ARCHS)}")


def scaling_layer(arch: str) -> keras.layers.Rescaling:
    """The in-graph equivalent of `arch`'s keras.applications preprocessing on 0..255 input.

    "torch" mode, x/255 then (x - mean) / std per channel, is folded into one per-channel scale
    and offset.
    """
    _check_arch(arch)
    mode = PREPROCESSING[arch]
    if mode == "tf":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=SCALING_LAYER)
    if mode == "v2":
        return keras.layers.Rescaling(1.0 / 128.0, offset=-1.0, name=SCALING_LAYER)
    scale = [1.0 / (255.0 * s) for s in IMAGENET_STD]
    offset = [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    return keras.layers.Rescaling(scale, offset=offset, name=SCALING_LAYER)


def base_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The pretrained base's layers of a transfer model, in graph order (input to last conv)."""
    return [layer for layer in model.layers if layer.name not in NON_BASE_LAYERS]


def _leaves(layer: keras.layers.Layer):
    """`layer` itself, or the layers inside it when it is a nested block (ConvNeXt's Sequentials)."""
    if isinstance(layer, keras.Model):
        for inner in layer.layers:
            yield from _leaves(inner)
    else:
        yield layer


def base_is_frozen(model: keras.Model) -> bool:
    """True when no base layer has trainable weights (pretrained base, before fine-tuning)."""
    return not any(layer.trainable_weights for layer in base_layers(model))


def _copy(layer: keras.layers.Layer, tensor, name: str | None = None):
    """Apply a fresh copy of `layer` (same config and weights, optionally a new name) to `tensor`."""
    config = layer.get_config() | ({"name": name} if name else {})
    copy = layer.__class__.from_config(config)
    output = copy(tensor)
    copy.set_weights(layer.get_weights())
    return output


def _flat_convnext(base: keras.Model, x, top_name: str):
    """ConvNeXt's graph again, from copies of its layers, in the form the other bases have.

    Keras builds ConvNeXt with its stem and downsampling steps as nested Sequential models, each
    residual sum as a bare `+` (an operation the legacy `.h5` format cannot reload), and its last
    LayerNormalization named by a per-process counter. The copy is flat, sums with `Add` layers
    named "<block>_add", and names the last normalization `top_name`, so `.keras` and `.h5` files
    reload, and Grad-CAM, `--unfreeze LAYER` and metadata can name every layer. Weights (already
    loaded into `base` by keras.applications) come along; the order of weighted layers is kept.
    """
    layers = [layer for layer in base.layers if layer.name not in NON_BASE_LAYERS]
    block_input = None
    for index, layer in enumerate(layers):
        if isinstance(layer, keras.Model):  # stem / downsampling block: its layers, in order
            for inner in layer.layers:
                x = _copy(inner, x)
        elif index == len(layers) - 1:
            if not isinstance(layer, keras.layers.LayerNormalization):  # pragma: no cover - Keras changed
                raise TypeError(f"{base.name}: expected a LayerNormalization last, got {layer.name!r}")
            x = _copy(layer, x, name=top_name)
        else:
            if layer.name.endswith("_depthwise_conv"):  # a block starts: keep its input for the sum
                block_input = x
            x = _copy(layer, x)
            for last in ("_identity", "_stochastic_depth"):  # a block ends: the residual sum
                if layer.name.endswith(last):
                    x = keras.layers.Add(name=layer.name.removesuffix(last) + "_add")([block_input, x])
    return x


def build_transfer_model(arch: str, num_classes: int, input_shape=(128, 128, 3), weights="imagenet") -> keras.Model:
    """A keras.applications base + the reference head, as one functional model.

    Args:
        arch: a key of `ARCHS` ("xception", "densenet121", "densenet201", "efficientnetv2b0",
            "efficientnetv2s", "convnext_tiny").
        num_classes: size of the softmax.
        input_shape: (H, W, 3) of raw 0..255 pixels; H, W >= `ARCHS[arch].min_size`.
        weights: "imagenet" (Keras cache / download), "none" (random initialization) or a path
            to a local weights file. With pretrained weights the base is frozen and its batch
            normalization runs in inference mode (a Keras 3 BatchNormalization with
            trainable=False uses its moving statistics even when training=True; EfficientNetV2's
            stochastic-depth Dropout layers stay active in training passes, as in Keras). With
            "none" the whole network trains, base included, with batch-norm momentum 0.9.
    """
    _check_arch(arch)
    spec = ARCHS[arch]
    input_shape = tuple(input_shape)
    if min(input_shape[:2]) < spec.min_size:
        raise VirionError(f"--input-size {input_shape[0]} is too small for {arch}; use {spec.min_size} or more")
    weights_path = resolve_weights(arch, weights)

    # --- functional model ---
    inputs = keras.Input(shape=input_shape, name=INPUT_LAYER)
    scaled = scaling_layer(arch)(inputs)
    constructor = getattr(keras.applications, spec.application)
    options = {}
    if "include_preprocessing" in inspect.signature(constructor).parameters:
        options["include_preprocessing"] = False  # done by our "preprocess" layer above
    try:
        base = constructor(include_top=False, weights=weights_path, input_tensor=scaled, **options)
    except Exception as exc:
        if weights_path is None:
            raise
        reason = " ".join(str(exc).split())[:200]
        raise VirionError(
            f"--weights {weights_path}: cannot load it into {spec.application} without its top "
            f"(include_top=False) ({reason}); pass that model's notop weights file, imagenet "
            f"or none"
        ) from None
    if arch.startswith("convnext"):
        features = _flat_convnext(base, scaled, spec.last_conv)
    else:
        features = base.output

    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(features)
    x = keras.layers.Dense(256, activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(0.5, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    model = keras.Model(inputs, outputs, name=arch)

    frozen = weights_path is not None
    for layer in base_layers(model):
        layer.trainable = not frozen
        if not frozen:
            for leaf in _leaves(layer):
                if isinstance(leaf, keras.layers.BatchNormalization):
                    # Trained from random initialization on a small dataset: let the inference-time
                    # statistics settle in tens of steps, not hundreds (see resnet50.BN_MOMENTUM).
                    leaf.momentum = SCRATCH_BN_MOMENTUM
    return model


def unfreeze_top(model: keras.Model, fraction: float | None = None, from_layer: str | None = None) -> int:
    """Open the top of the base for fine-tuning; batch normalization stays frozen.

    Frozen BN keeps the pretrained statistics and runs in inference mode, which is what keeps
    fine-tuning on a small dataset from wrecking the base. (ConvNeXt has layer normalization
    instead, which has no running statistics and trains with the layers around it.) Recompile
    the model afterwards so the change takes effect.

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
        for leaf in _leaves(layer):
            if isinstance(leaf, keras.layers.BatchNormalization):
                leaf.trainable = False
        opened += bool(layer.trainable_weights)
    return opened

"""The one place that maps a model name to its builder and facts; the CLI and trainer ask here."""

from __future__ import annotations

from dataclasses import dataclass

import keras

from virion.errors import VirionError
from virion.models import resnet50, tem_cnn, transfer
from virion.models.catalog import CLASSICAL_MODELS, DEFAULT_MODELS, MIN_INPUT_SIZE, MODEL_NAMES  # noqa: F401


@dataclass(frozen=True)
class ModelInfo:
    """What downstream code (metadata, Grad-CAM, reports) needs to know about a model family.

    `base_frozen` answers for the weights asked about in `model_info(name, weights)`: a transfer
    model trained from `weights="none"` has its base unfrozen, and metadata/reports must say so.
    """

    name: str
    display_name: str
    kind: str  # "scratch" | "transfer" | "texture" (not a network)
    scaling: str
    last_conv_layer: str
    default_weights: str  # "none" for the scratch model, "imagenet" for the transfer models
    weights: str  # the weights this info describes: "none", "imagenet" or a path
    base_frozen: bool  # False for the scratch model and for transfer models with weights "none"


_DISPLAY = {
    "xception": "Xception",
    "densenet121": "DenseNet121",
    "densenet201": "DenseNet201",
    "efficientnetv2b0": "EfficientNetV2-B0",
    "efficientnetv2s": "EfficientNetV2-S",
    "convnext_tiny": "ConvNeXt-Tiny",
}

_FACTS = {
    "resnet50": ("ResNet-50 (from scratch)", "scratch", "x/255", resnet50.LAST_CONV_LAYER, "none"),
    "tem_cnn": ("compact TEM CNN (from scratch)", "scratch", "x/127.5 - 1", tem_cnn.LAST_CONV_LAYER, "none"),
    "texture": ("texture features + classifier (no network)", "texture", "percentile stretch", "", "none"),
    **{
        arch: (
            f"{_DISPLAY[arch]} (transfer)",
            "transfer",
            transfer.SCALING_TEXT[transfer.PREPROCESSING[arch]],
            transfer.ARCHS[arch].last_conv,
            "imagenet",
        )
        for arch in transfer.ARCHS
    },
}


def _check_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise VirionError(f"unknown model {name!r}; choose from: {', '.join(MODEL_NAMES)}")


def _normalize_weights(weights) -> str:
    if weights is None:
        return "none"
    text = str(weights)
    return text.lower() if text.lower() in ("none", "imagenet") else text


_DEFAULT = object()


def model_info(name: str, weights=_DEFAULT) -> ModelInfo:
    """Facts about model `name` trained with `weights` (default: the model's default weights).

    `weights` is read as `build_model` reads it ("imagenet", "none"/None, or a path), so
    `base_frozen` tells the metadata whether the base trained or stayed frozen.
    """
    _check_name(name)
    display, kind, scaling, last_conv, default = _FACTS[name]
    if kind in ("scratch", "texture"):
        used = "none"  # ResNet-50 and the compact CNN always start from random initialization
    else:
        used = default if weights is _DEFAULT else _normalize_weights(weights)
    return ModelInfo(
        name=name,
        display_name=display,
        kind=kind,
        scaling=scaling,
        last_conv_layer=last_conv,
        default_weights=default,
        weights=used,
        base_frozen=kind == "transfer" and used != "none",
    )


def model_file_stem(name: str) -> str:
    """The reference's file name stem, e.g. "resnet50_virus_classification"."""
    _check_name(name)
    return f"{name}_virus_classification"


def build_model(name: str, num_classes: int, input_size: int = 128, weights="imagenet") -> keras.Model:
    """Build model `name` for `num_classes` on (input_size, input_size, 3) raw 0..255 input.

    `weights` ("imagenet" | "none" | a path) applies to the transfer models; the from-scratch
    ResNet-50 and tem_cnn ignore it.
    """
    _check_name(name)
    if name in CLASSICAL_MODELS:
        raise VirionError(f"{name} is not a Keras network; train it with `virion train --models {name}`")
    if int(num_classes) < 2:
        raise VirionError(f"num_classes={num_classes}: a classifier needs at least 2 classes")
    shape = (int(input_size), int(input_size), 3)
    if name == "resnet50":
        if input_size < 32:
            raise VirionError(f"--input-size {input_size} is too small for resnet50; use 32 or more")
        return resnet50.build_resnet50(int(num_classes), shape)
    if name == "tem_cnn":
        if input_size < 32:
            raise VirionError(f"--input-size {input_size} is too small for tem_cnn; use 32 or more")
        return tem_cnn.build_tem_cnn(int(num_classes), shape)
    weights = "none" if weights is None else weights
    return transfer.build_transfer_model(name, int(num_classes), shape, weights)

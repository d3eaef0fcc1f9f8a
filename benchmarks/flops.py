"""Analytic FLOP counts of a built Keras model, for "fraction of peak" figures.

One multiply-add counts as 2 FLOPs. Only convolutions and dense layers are counted (they are
>99% of the arithmetic of ResNet-50, Xception and DenseNet121); batch norm, activations and
pooling are left out, so the fraction of peak is slightly understated, never overstated.
"""

from __future__ import annotations

import math

import keras


def _out_hw(layer) -> int:
    shape = layer.output.shape  # (B, H, W, C)
    return int(shape[1]) * int(shape[2])


def layer_forward_flops(layer) -> int:
    """Forward FLOPs per image of one layer (0 for layers that are not conv/dense)."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        cin = int(layer.input.shape[-1])
        return 2 * _out_hw(layer) * cin * layer.depth_multiplier * kh * kw
    if isinstance(layer, keras.layers.SeparableConv2D):
        kh, kw = layer.kernel_size
        cin = int(layer.input.shape[-1])
        depthwise = 2 * _out_hw(layer) * cin * layer.depth_multiplier * kh * kw
        pointwise = 2 * _out_hw(layer) * cin * layer.depth_multiplier * layer.filters
        return depthwise + pointwise
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        cin = int(layer.input.shape[-1])
        return 2 * _out_hw(layer) * cin * layer.filters * kh * kw // layer.groups
    if isinstance(layer, keras.layers.Dense):
        return 2 * int(layer.input.shape[-1]) * layer.units
    return 0


def forward_flops(model: keras.Model) -> int:
    """Forward FLOPs per image (convolutions and dense layers of a flat functional model)."""
    return sum(layer_forward_flops(layer) for layer in model.layers)


def training_flops(model: keras.Model) -> int:
    """FLOPs per image of one training step.

    Trainable layers cost 3x their forward pass (forward, input gradient, weight gradient); frozen
    layers cost 1x, plus 1x more for the input gradient when a trainable layer lies before them
    (never the case for a frozen base at the input, which is how our transfer models are built).
    """
    total = 0
    for layer in model.layers:
        flops = layer_forward_flops(layer)
        total += flops * (3 if layer.trainable and layer.weights else 1)
    return total


def gflops(value: int) -> float:
    return value / 1e9 if value else math.nan

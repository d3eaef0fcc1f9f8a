"""A compact CNN for TEM virus crops, trained from scratch on a few thousand images in minutes on a CPU.

Why not ResNet-50: 23.5 M parameters and ~1.3 G multiply-adds per 128-px image learn nothing from
~1k real crops without ImageNet weights (grouped CV, benchmarks/results/bench_real_r64e12.json), and
one 128-px run cost 25 min on 2 cores. The public dataset's paper found the same: its hand-made CNN,
10x smaller than DenseNet201, trained from scratch to within 3 points of the fine-tuned DenseNet201
(Matuszewski & Sintorn 2021, Computer Methods and Programs in Biomedicine 209:106318).

Built for crops at a fixed ~1 nm per pixel (the dataset's 256-px crops): the stem's stride is
chosen from the input size so that the first stage always sees a 64x64 map, i.e. 4 nm per cell at
256 px input, 2 nm at 128 px. A 30-nm norovirus is then ~8 cells wide at stage 1 and the
receptive field at the last stage covers the whole crop. No ImageNet assumption: one scaling
inside the graph, x/127.5 - 1 (the decoder has already stretched each image's 0.5-99.5 percentiles
to 0..255), no pretrained weights.

Layout (a VGG-style plain network, the issue 16 reference design): a 5x5 convolution of 24 filters
with stride s = input/64 (2 at 128 px, 4 at 256 px); four stages of two 3x3 convolutions + batch
norm (momentum 0.9) + ReLU, 32/64/128/192 filters, 2x2 max-pooling between stages (64 -> 32 -> 16
-> 8); global average pooling; dropout 0.3; a float32 softmax.

Compute (benchmarks/flops.py, multiply-adds per image, forward pass): 222 M at 128 px and the
same at 256 px (the stride grows with the input, so every stage sees the same map sizes); 0.85 M
parameters with a 14-class head. ResNet-50 at 128 px: 1.26 G MACs, 23.6 M parameters.
"""

from __future__ import annotations

import keras

from virion.models.batchnorm import BatchNormalization

BN_MOMENTUM = 0.9  # settles within ~20 steps: a few hundred crops give only tens of steps per epoch
BN_EPSILON = 1e-3
STEM_FILTERS = 24
STEM_KERNEL = 5
STAGE_FILTERS = (32, 64, 128, 192)
DROPOUT = 0.3
# Side of the first stage's feature map: the stem's stride is input_size // STAGE1_SIZE.
STAGE1_SIZE = 64
# Layer whose output is the last convolutional feature map (Grad-CAM reads it by this name).
LAST_CONV_LAYER = "stage4_out"


def stem_stride(input_size: int) -> int:
    """The stem's stride for a square input: 64x64 at stage 1 (at least 1, at most 8)."""
    return max(1, min(8, int(input_size) // STAGE1_SIZE))


def conv_bn_relu(x, filters: int, *, name: str, kernel: int = 3, stride: int = 1, out_name: str | None = None):
    """Convolution (no bias: batch norm follows), batch norm, ReLU."""
    x = keras.layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    x = BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=out_name or f"{name}_relu")(x)


def build_tem_cnn(
    num_classes: int,
    input_shape=(128, 128, 3),
    *,
    stem_filters: int = STEM_FILTERS,
    stage_filters: tuple[int, ...] = STAGE_FILTERS,
    dropout: float = DROPOUT,
) -> keras.Model:
    """The compact TEM CNN for `num_classes`, taking raw 0..255 pixels (H, W, 3), scaling in-graph.

    Args:
        num_classes: softmax outputs.
        input_shape: (H, W, 3); the stem's stride is H // 64 (see `stem_stride`).
        stem_filters: filters of the 5x5 strided stem.
        stage_filters: filters of each stage (two 3x3 conv+BN+ReLU each; max-pool between stages).
        dropout: before the softmax.
    """
    stride = stem_stride(input_shape[0])
    # --- functional model ---
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(inputs)
    x = conv_bn_relu(x, stem_filters, kernel=STEM_KERNEL, stride=stride, name="stem")
    for stage, filters in enumerate(stage_filters, start=1):
        if stage > 1:
            x = keras.layers.MaxPooling2D(2, name=f"stage{stage}_pool")(x)
        last = stage == len(stage_filters)
        x = conv_bn_relu(x, filters, name=f"stage{stage}_1")
        x = conv_bn_relu(x, filters, name=f"stage{stage}_2", out_name=LAST_CONV_LAYER if last else None)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name="tem_cnn")

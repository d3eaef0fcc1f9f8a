"""ResNet-50 built from scratch (He et al., 2016, "Deep Residual Learning for Image Recognition").

Written here from the paper rather than taken from `keras.applications.ResNet50`, so the
reference's "ResNet-50 from scratch" is ours to read and change. It follows the conventions of
the common Keras implementation where the paper leaves a choice open (convolution bias, batch
normalization epsilon 1.001e-5, explicit zero padding, stride on the first 1x1 convolution of a
stage), so its parameter count matches `keras.applications.ResNet50` and speed comparisons
against the reference stack compare like with like.
"""

from __future__ import annotations

import keras

from virion.models.batchnorm import BatchNormalization

# The Keras ResNet convention; the paper does not state one.
BN_EPSILON = 1.001e-5
# Keras' default 0.99 needs several hundred steps before the moving statistics used at inference
# describe the trained network; a from-scratch model on a few hundred TEM crops gets tens of steps
# per epoch and then validates at chance for many epochs. 0.9 settles within ~20 steps (the
# momentum of the original Torch/Caffe ResNets); it changes no weight, so parameter counts match.
BN_MOMENTUM = 0.9
# Layer whose output is the last convolutional feature map (Grad-CAM reads it by this name).
LAST_CONV_LAYER = "conv5_block3_out"
# (blocks, bottleneck filters) per stage, conv2_x .. conv5_x in the paper's Table 1.
STAGES = ((3, 64), (4, 128), (6, 256), (3, 512))


def _bn(name: str) -> keras.layers.BatchNormalization:
    # Our BatchNormalization: the stock layer's semantics and weights, but TensorFlow's fused kernel
    # on the CPU, which brings Keras 3's ResNet-50 step back to Keras 2 speed (bench_resnet_cpu.py).
    return BatchNormalization(axis=-1, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def bottleneck_block(x, filters: int, stride: int = 1, *, name: str):
    """One bottleneck residual block: 1x1 reduce, 3x3, 1x1 expand (4 * `filters` channels).

    The shortcut is the identity when the shape is unchanged, otherwise a strided 1x1 projection
    with batch normalization (the paper's option B).

    Args:
        x: input tensor (B, H, W, C).
        filters: bottleneck width; the block outputs `4 * filters` channels.
        stride: 2 at the first block of stages conv3_x .. conv5_x to halve H and W.
        name: prefix for the block's layer names, e.g. "conv3_block1".
    """
    expanded = 4 * filters
    if stride != 1 or x.shape[-1] != expanded:
        shortcut = keras.layers.Conv2D(expanded, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = _bn(f"{name}_0_bn")(shortcut)
    else:
        shortcut = x

    y = keras.layers.Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    y = _bn(f"{name}_1_bn")(y)
    y = keras.layers.Activation("relu", name=f"{name}_1_relu")(y)

    y = keras.layers.Conv2D(filters, 3, padding="same", name=f"{name}_2_conv")(y)
    y = _bn(f"{name}_2_bn")(y)
    y = keras.layers.Activation("relu", name=f"{name}_2_relu")(y)

    y = keras.layers.Conv2D(expanded, 1, name=f"{name}_3_conv")(y)
    y = _bn(f"{name}_3_bn")(y)

    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.Activation("relu", name=f"{name}_out")(y)


def build_resnet50(num_classes: int, input_shape=(128, 128, 3)) -> keras.Model:
    """ResNet-50 for `num_classes`, taking raw 0..255 pixels and scaling them to 0..1 in-graph.

    Stem: 7x7/2 convolution, BN, ReLU, 3x3/2 max-pool; then 3, 4, 6, 3 bottleneck blocks
    (64/256, 128/512, 256/1024, 512/2048 filters, stride 2 at the start of stages 2-4);
    global average pooling; a float32 softmax (so mixed precision keeps the probabilities exact).
    """
    # --- functional model ---
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="preprocess")(inputs)

    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = keras.layers.Conv2D(64, 7, strides=2, name="conv1_conv")(x)
    x = _bn("conv1_bn")(x)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)

    for stage, (blocks, filters) in enumerate(STAGES, start=2):
        for block in range(1, blocks + 1):
            stride = 2 if block == 1 and stage > 2 else 1
            x = bottleneck_block(x, filters, stride, name=f"conv{stage}_block{block}")

    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name="resnet50")

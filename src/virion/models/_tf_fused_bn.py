"""TensorFlow fused batch normalization for `virion.models.batchnorm.BatchNormalization`.

Keras 3 normalizes on TensorFlow with `tf.nn.moments` + `tf.nn.batch_normalization`: a dozen
element-wise kernels forward and more backward, each a full pass over the activation. The single
`FusedBatchNormV3` kernel (oneDNN on the CPU, cuDNN on the GPU) does the same work in one pass
forward and one backward, which is what tf_keras (Keras 2) used and why it trained ResNet-50 faster.
Imported only on the TensorFlow backend, so model code stays backend-agnostic.
"""

from __future__ import annotations

import tensorflow as tf

# Input dtypes the fused kernel accepts (it normalizes in float32 internally).
_FUSED_DTYPES = (tf.float32, tf.float16, tf.bfloat16)
# cuDNN rejects smaller epsilons (tf.nn.fused_batch_norm silently raises them to this); below it we
# keep the stock path so results never change behind the user's back.
MIN_EPSILON = 1.001e-5


def can_fuse(layer, inputs) -> bool:
    """Whether the fused kernel computes exactly what the stock layer would for these inputs."""
    rank = len(inputs.shape)
    axis = layer.axis % rank if rank else layer.axis
    return (
        rank == 4
        and axis in (1, 3)
        and not layer.renorm
        and not layer.synchronized
        and layer.epsilon >= MIN_EPSILON
        and tf.as_dtype(inputs.dtype) in _FUSED_DTYPES
    )


def fused_batch_norm(layer, inputs, training: bool):
    """Normalize `inputs` with FusedBatchNormV3, updating the moving statistics when training.

    Keeps Keras 3's conventions: `moving = moving * momentum + batch * (1 - momentum)`, and the
    moving variance tracks the biased batch variance (the kernel returns the Bessel-corrected one,
    which we undo, as tf_keras did).
    """
    x = tf.convert_to_tensor(inputs)
    data_format = "NHWC" if layer.axis % 4 == 3 else "NCHW"
    channels = x.shape[layer.axis]
    param_dtype = tf.float32
    gamma = tf.cast(layer.gamma, param_dtype) if layer.scale else tf.ones([channels], param_dtype)
    beta = tf.cast(layer.beta, param_dtype) if layer.center else tf.zeros([channels], param_dtype)

    if training:
        empty = tf.constant([], dtype=param_dtype)
        y, batch_mean, batch_var, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x,
            scale=gamma,
            offset=beta,
            mean=empty,
            variance=empty,
            epsilon=layer.epsilon,
            exponential_avg_factor=1.0,
            data_format=data_format,
            is_training=True,
        )
        count = tf.cast(tf.size(x, out_type=tf.int64) // channels, param_dtype)
        batch_var = batch_var * ((count - 1.0) / tf.maximum(count, 1.0))
        momentum = layer.momentum
        moving_mean = tf.cast(layer.moving_mean, param_dtype)
        moving_var = tf.cast(layer.moving_variance, param_dtype)
        layer.moving_mean.assign(moving_mean * momentum + batch_mean * (1.0 - momentum))
        layer.moving_variance.assign(moving_var * momentum + batch_var * (1.0 - momentum))
    else:
        y, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x,
            scale=gamma,
            offset=beta,
            mean=tf.cast(layer.moving_mean, param_dtype),
            variance=tf.cast(layer.moving_variance, param_dtype),
            epsilon=layer.epsilon,
            exponential_avg_factor=1.0,
            data_format=data_format,
            is_training=False,
        )
    return tf.cast(y, layer.compute_dtype)

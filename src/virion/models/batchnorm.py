"""A BatchNormalization that is fast on the CPU, with the stock Keras layer's exact semantics.

Keras 3's TensorFlow backend computes batch normalization from unfused element-wise ops, which
costs about a quarter of a ResNet-50 training step on a 2-core CPU (measured with
benchmarks/bench_resnet_cpu.py: 31 -> 40 images/s, level with tf_keras). This subclass dispatches to the
backend's fused kernel where one exists (TensorFlow: FusedBatchNormV3) and otherwise runs the
stock Keras code, so models written with it stay backend-agnostic. Variables (names, shapes,
order), the momentum and variance conventions, inference when `training=False` or
`trainable=False`, and `get_config()` are those of `keras.layers.BatchNormalization`, so weight
files and parameter counts match the stock layer.

It is a training-time detail: the final `.keras`/`.h5` files hold the stock
`keras.layers.BatchNormalization` with the same weights (`virion.training.saving.inference_model`),
so they load with plain Keras without virion. Only the resume state under `state/` records it, as
`virion>BatchNormalization` (registered here; `virion.run.loading` imports this module).
"""

from __future__ import annotations

import keras

if keras.backend.backend() == "tensorflow":
    from virion.models import _tf_fused_bn as _fused
else:  # JAX / PyTorch / NumPy: the stock Keras implementation.
    _fused = None


@keras.saving.register_keras_serializable(package="virion")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that uses the backend's fused kernel when it can.

    Falls back to the stock implementation for masks, batch renormalization, synchronized
    statistics, inputs that are not 4-D with channels first or last, and epsilons below 1.001e-5.
    Takes exactly the arguments of `keras.layers.BatchNormalization`.
    """

    def call(self, inputs, training=None, mask=None):
        if _fused is not None and mask is None and _fused.can_fuse(self, inputs):
            return _fused.fused_batch_norm(self, inputs, training=bool(training and self.trainable))
        return super().call(inputs, training=training, mask=mask)

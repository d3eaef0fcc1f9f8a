"""The fast BatchNormalization must be a drop-in for keras.layers.BatchNormalization.

Every test runs the stock layer and ours from identical weights on identical inputs and compares
them, so a wrong variance convention, momentum, epsilon or inference rule fails here.
"""

import os

import keras
import numpy as np
import pytest

from virion.models import batchnorm
from virion.models.batchnorm import BatchNormalization

EPS = 1.001e-5  # the ResNet-50 epsilon


def _pair(shape, **kwargs):
    """A stock and a fast layer, built for `shape`, with the same non-trivial weights."""
    stock = keras.layers.BatchNormalization(**kwargs)
    fast = BatchNormalization(**kwargs)
    stock.build(shape)
    fast.build(shape)
    rng = np.random.default_rng(1)
    weights = [rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in stock.weights]
    weights[1] -= 1.0  # beta around 0
    stock.set_weights(weights)
    fast.set_weights(weights)
    return stock, fast


def _inputs(shape, seed=0):
    return np.random.default_rng(seed).normal(3.0, 2.0, shape).astype("float32")


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts calls of the fused TensorFlow path, to prove the tests exercise it."""
    if batchnorm._fused is None:
        pytest.skip("no fused implementation on this backend")
    calls = []
    original = batchnorm._fused.fused_batch_norm

    def spy(layer, inputs, training):
        calls.append(training)
        return original(layer, inputs, training=training)

    monkeypatch.setattr(batchnorm._fused, "fused_batch_norm", spy)
    return calls


@pytest.mark.parametrize("axis", [-1, 1])
def test_training_forward_gradients_and_moving_statistics_match_stock(axis, fused_calls):
    import tensorflow as tf

    shape = (4, 6, 5, 8) if axis == -1 else (4, 8, 6, 5)
    stock, fast = _pair(shape, axis=axis, momentum=0.8, epsilon=EPS)
    for step in range(3):
        x = tf.constant(_inputs(shape, seed=step))
        dy = tf.constant(_inputs(shape, seed=10 + step))
        results = []
        for layer in (stock, fast):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True)
                loss = tf.reduce_sum(y * dy)
            grads = tape.gradient(loss, [x, layer.gamma.value, layer.beta.value])
            results.append([y] + grads)
        for a, b in zip(*results):
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fast.moving_mean.numpy(), stock.moving_mean.numpy(), rtol=1e-5)
    # Keras 3 tracks the biased batch variance; the fused kernel's is Bessel-corrected.
    np.testing.assert_allclose(fast.moving_variance.numpy(), stock.moving_variance.numpy(), rtol=1e-5)
    assert not np.allclose(fast.moving_mean.numpy(), 0.0)  # statistics did move
    assert fused_calls == [True, True, True]


def test_inference_mode_uses_moving_statistics(fused_calls):
    shape = (3, 4, 4, 6)
    stock, fast = _pair(shape, epsilon=1e-3)
    x = _inputs(shape)
    before = [w.numpy().copy() for w in fast.weights]
    for training in (False, None):
        np.testing.assert_allclose(
            np.asarray(fast(x, training=training)),
            np.asarray(stock(x, training=training)),
            rtol=1e-5,
            atol=1e-5,
        )
    for w, old in zip(fast.weights, before):
        np.testing.assert_array_equal(w.numpy(), old)
    assert fused_calls == [False, False]


def test_frozen_layer_runs_in_inference_mode_even_when_training(fused_calls):
    shape = (3, 4, 4, 6)
    stock, fast = _pair(shape, epsilon=EPS)
    stock.trainable = fast.trainable = False
    x = _inputs(shape)
    moving = fast.moving_mean.numpy().copy()
    np.testing.assert_allclose(np.asarray(fast(x, training=True)), np.asarray(stock(x, training=True)), rtol=1e-5)
    np.testing.assert_array_equal(fast.moving_mean.numpy(), moving)
    assert fused_calls == [False]


def test_same_variables_and_config_as_stock():
    stock, fast = _pair((2, 4, 4, 16), epsilon=EPS, momentum=0.95)
    assert [w.name for w in fast.weights] == [w.name for w in stock.weights]
    assert [w.shape for w in fast.weights] == [w.shape for w in stock.weights]
    assert [w.trainable for w in fast.weights] == [w.trainable for w in stock.weights]
    config, stock_config = fast.get_config(), stock.get_config()
    config.pop("name"), stock_config.pop("name")
    assert config == stock_config


@pytest.mark.parametrize(
    "kwargs, shape, mask",
    [
        ({}, (5, 7), None),  # dense features: not 4-D
        ({"renorm": True}, (2, 4, 4, 3), None),
        ({"epsilon": 1e-6}, (2, 4, 4, 3), None),  # below what the fused kernel allows
        ({}, (2, 5, 3), np.array([[1, 1, 0, 1, 0], [1, 0, 1, 1, 1]], bool)),
    ],
)
def test_falls_back_to_stock_where_fusing_would_change_results(kwargs, shape, mask, fused_calls):
    stock, fast = _pair(shape, **kwargs)
    x = _inputs(shape)
    for training in (True, False):
        np.testing.assert_allclose(
            np.asarray(fast(x, training=training, mask=mask)),
            np.asarray(stock(x, training=training, mask=mask)),
            rtol=1e-5,
            atol=1e-5,
        )
    np.testing.assert_allclose(fast.moving_variance.numpy(), stock.moving_variance.numpy())
    assert fused_calls == []


def test_other_backends_get_the_stock_implementation(monkeypatch):
    monkeypatch.setattr(batchnorm, "_fused", None)
    shape = (3, 4, 4, 6)
    stock, fast = _pair(shape, epsilon=EPS)
    x = _inputs(shape)
    np.testing.assert_allclose(np.asarray(fast(x, training=True)), np.asarray(stock(x, training=True)), rtol=1e-6)
    np.testing.assert_allclose(fast.moving_variance.numpy(), stock.moving_variance.numpy())


# oneDNN ISA caps below AVX-512: TensorFlow picks oneDNN's bfloat16 kernels from the CPU's own flags,
# which such a cap then forbids ("could not create a primitive descriptor"); no real CPU is in that state
# (an AVX2-only CPU gets TensorFlow's own bfloat16 kernels).
_BF16_CAPPED = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2"}


@pytest.mark.skipif(_BF16_CAPPED, reason="ONEDNN_MAX_CPU_ISA forbids the bfloat16 kernels TensorFlow picks here")
def test_mixed_bfloat16_keeps_float32_statistics(fused_calls):
    shape = (4, 6, 6, 8)
    stock, fast = _pair(shape, epsilon=EPS, dtype="mixed_bfloat16")
    x = keras.ops.cast(_inputs(shape), "bfloat16")
    y_fast, y_stock = fast(x, training=True), stock(x, training=True)
    assert keras.backend.standardize_dtype(y_fast.dtype) == "bfloat16"
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(keras.ops.cast(y_fast, "float32")),
        keras.ops.convert_to_numpy(keras.ops.cast(y_stock, "float32")),
        atol=0.05,
    )
    assert fast.moving_variance.dtype == "float32"
    np.testing.assert_allclose(fast.moving_variance.numpy(), stock.moving_variance.numpy(), rtol=1e-3)
    assert fused_calls == [True]


def _tiny_convnet(bn_class, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = bn_class(epsilon=EPS, name="bn")(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def _tiny_data():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (16, 12, 12, 3)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, 16)]
    return x, y


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_matches_stock_layer(jit_compile, fused_calls):
    """A compiled train step (tf.function with grappler and oneDNN, or XLA as the trainer uses on
    a GPU) updates weights and moving statistics like the stock BN."""
    x, y = _tiny_data()
    models = [_tiny_convnet(keras.layers.BatchNormalization), _tiny_convnet(BatchNormalization)]
    models[1].set_weights(models[0].get_weights())
    for model in models:
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss="categorical_crossentropy",
            jit_compile=jit_compile,
        )
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    assert fused_calls  # traced through the fused path
    for a, b in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_save_and_reload_round_trip(tmp_path, suffix):
    x, y = _tiny_data()
    model = _tiny_convnet(BatchNormalization)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = tmp_path / f"model{suffix}"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert type(loaded.get_layer("bn")) is BatchNormalization
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    for a, b in zip(model.get_layer("bn").get_weights(), loaded.get_layer("bn").get_weights()):
        np.testing.assert_array_equal(b, a)


def test_weight_files_are_interchangeable_with_the_stock_layer(tmp_path):
    x, _ = _tiny_data()
    stock_model = _tiny_convnet(keras.layers.BatchNormalization, seed=3)
    stock_model.get_layer("bn").moving_mean.assign(np.linspace(0, 1, 8).astype("float32"))
    path = tmp_path / "stock.weights.h5"
    stock_model.save_weights(path)
    fast_model = _tiny_convnet(BatchNormalization, seed=4)
    assert fast_model.count_params() == stock_model.count_params()
    fast_model.load_weights(path)
    np.testing.assert_allclose(
        fast_model.predict(x, verbose=0), stock_model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )

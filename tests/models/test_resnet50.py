"""ResNet-50 from scratch: it is ResNet-50 (parameter count, layer census), scales in-graph, round-trips."""

import keras
import numpy as np
import pytest

from virion.models.resnet50 import LAST_CONV_LAYER, bottleneck_block, build_resnet50

N_CLASSES = 5
SHAPE = (64, 64, 3)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return build_resnet50(N_CLASSES, SHAPE)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(0, 255, size=(3,) + SHAPE).astype("float32")


def test_parameter_count_equals_keras_resnet50(model):
    reference = keras.applications.ResNet50(weights=None, classes=N_CLASSES, input_shape=SHAPE)
    assert model.count_params() == reference.count_params()
    assert len(model.trainable_weights) == len(reference.trainable_weights)


def test_layer_census_53_convolutions_one_dense(model):
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    denses = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    projections = [layer for layer in convs if layer.name.endswith("_0_conv")]
    assert len(convs) == 53
    assert len(projections) == 4  # one per stage, where the shape changes
    assert len(denses) == 1
    assert sum(isinstance(layer, keras.layers.Add) for layer in model.layers) == 3 + 4 + 6 + 3
    assert model.name == "resnet50"


def test_stem_and_stage_shapes(model):
    assert model.get_layer("conv1_conv").kernel_size == (7, 7)
    assert model.get_layer("conv1_conv").strides == (2, 2)
    assert model.get_layer("pool1_pool").output.shape[1:] == (16, 16, 64)
    expected = {
        "conv2_block3_out": (16, 16, 256),
        "conv3_block4_out": (8, 8, 512),
        "conv4_block6_out": (4, 4, 1024),
        LAST_CONV_LAYER: (2, 2, 2048),
    }
    for name, shape in expected.items():
        assert model.get_layer(name).output.shape[1:] == shape


def test_output_is_float32_softmax(model, images):
    head = model.layers[-1]
    assert isinstance(head, keras.layers.Dense) and head.get_config()["activation"] == "softmax"
    probs = keras.ops.convert_to_numpy(model(images, training=False))
    assert probs.shape == (3, N_CLASSES)
    assert probs.dtype == np.float32
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_input_is_scaled_to_unit_range_in_graph(model, images):
    scaler = keras.Model(model.input, model.get_layer("preprocess").output)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(scaler(images)), images / 255.0, rtol=1e-6)


def test_bottleneck_identity_and_projection_shortcuts():
    x = keras.Input((8, 8, 256))
    same = bottleneck_block(x, 64, name="same")
    down = bottleneck_block(x, 128, stride=2, name="down")
    block_model = keras.Model(x, [same, down])
    names = {layer.name for layer in block_model.layers}
    assert "same_0_conv" not in names  # identity shortcut: no projection
    assert {"down_0_conv", "down_0_bn"} <= names
    assert same.shape[1:] == (8, 8, 256)
    assert down.shape[1:] == (4, 4, 512)
    assert block_model.get_layer("down_2_conv").kernel_size == (3, 3)
    bn = block_model.get_layer("same_1_bn")
    assert bn.epsilon == pytest.approx(1.001e-5)


def test_mixed_precision_keeps_softmax_float32():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed = build_resnet50(3, (32, 32, 3))
    finally:
        keras.config.set_dtype_policy(previous)
    assert mixed.get_layer("conv1_conv").compute_dtype == "float16"
    assert mixed.layers[-1].compute_dtype == "float32"
    # The graph's own output (symbolic): running float16 convolutions needs CPU kernels that not every
    # CPU (or oneDNN ISA cap) has, and the dtypes are decided by the policy, not by the kernels.
    assert keras.backend.standardize_dtype(mixed.outputs[0].dtype) == "float32"


def test_save_reload_same_outputs(model, images, tmp_path):
    path = tmp_path / "resnet50.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, compile=False)
    before = keras.ops.convert_to_numpy(model(images, training=False))
    after = keras.ops.convert_to_numpy(reloaded(images, training=False))
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)
    assert reloaded.get_layer(LAST_CONV_LAYER).output.shape[1:] == (2, 2, 2048)

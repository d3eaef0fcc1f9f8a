"""The compact TEM CNN: its shapes and stride rule, in-graph scaling, registry entry, save -> reload."""

import keras
import numpy as np
import pytest

from virion.models import catalog
from virion.models.registry import build_model, model_info
from virion.models.tem_cnn import LAST_CONV_LAYER, STAGE_FILTERS, build_tem_cnn, stem_stride
from virion.run.loading import load_keras_model
from virion.training.saving import save_model_files

N_CLASSES = 4


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return build_tem_cnn(N_CLASSES, (64, 64, 3))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(0, 255, size=(3, 64, 64, 3)).astype("float32")


@pytest.mark.parametrize("size, stride", [(32, 1), (64, 1), (128, 2), (256, 4), (512, 8), (1024, 8)])
def test_stem_stride_keeps_stage_one_at_64(size, stride):
    assert stem_stride(size) == stride


def test_shapes_of_stem_stages_and_head(model):
    assert model.get_layer("stem_conv").kernel_size == (5, 5)
    assert model.get_layer("stem_conv").strides == (1, 1)  # 64 px: stage 1 already at 64x64
    expected = {"stage1_2_relu": 64, "stage2_2_relu": 32, "stage3_2_relu": 16, LAST_CONV_LAYER: 8}
    for (name, side), filters in zip(expected.items(), STAGE_FILTERS):
        assert model.get_layer(name).output.shape[1:] == (side, side, filters)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 1 + 2 * len(STAGE_FILTERS)
    assert not any(conv.use_bias for conv in convs)  # batch norm follows every convolution


def test_strided_stem_at_256_px_gives_the_same_stage_sizes():
    big = build_tem_cnn(N_CLASSES, (256, 256, 3))
    assert big.get_layer("stem_conv").strides == (4, 4)
    assert big.get_layer(LAST_CONV_LAYER).output.shape[1:] == (8, 8, STAGE_FILTERS[-1])
    # same weights whatever the input size: the stride, not the parameters, follows the pixel size
    assert big.count_params() == build_tem_cnn(N_CLASSES, (128, 128, 3)).count_params()


def test_parameter_count_of_the_14_class_network():
    # 24*5*5*3 stem + 9*(24*32 + 32*32 + 32*64 + 64*64 + 64*128 + 128*128 + 128*192 + 192*192)
    # + batch norm (4 per channel) + the 192x14 head
    convs = 24 * 25 * 3 + 9 * (24 * 32 + 32 * 32 + 32 * 64 + 64 * 64 + 64 * 128 + 128 * 128 + 128 * 192 + 192 * 192)
    norms = 4 * (24 + 2 * (32 + 64 + 128 + 192))
    assert build_tem_cnn(14, (128, 128, 3)).count_params() == convs + norms + 192 * 14 + 14


def test_output_is_a_float32_softmax(model, images):
    probs = keras.ops.convert_to_numpy(model(images, training=False))
    assert probs.shape == (3, N_CLASSES) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_raw_pixels_are_scaled_to_minus_one_one_in_graph(model, images):
    scaler = keras.Model(model.input, model.get_layer("preprocess").output)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(scaler(images)), images / 127.5 - 1, rtol=1e-5, atol=1e-6)


def test_registry_builds_it_as_a_from_scratch_model():
    assert "tem_cnn" in catalog.MODEL_NAMES and "tem_cnn" in catalog.SCRATCH_MODELS
    assert "tem_cnn" not in catalog.DEFAULT_MODELS  # the reference three stay the default
    info = model_info("tem_cnn", "imagenet")
    assert (info.kind, info.weights, info.base_frozen) == ("scratch", "none", False)
    assert info.last_conv_layer == LAST_CONV_LAYER
    built = build_model("tem_cnn", 3, 64, weights="imagenet")  # weights do not apply: nothing is downloaded
    assert built.name == "tem_cnn" and built.output.shape[-1] == 3


def test_save_and_reload_give_the_same_predictions(tmp_path, images):
    keras.utils.set_random_seed(1)
    trained = build_tem_cnn(N_CLASSES, (64, 64, 3))
    # every weight away from its initial value (moving statistics included), without a slow fit
    rng = np.random.default_rng(1)
    for v in trained.weights:
        values = rng.normal(0.0, 0.2, tuple(v.shape))
        v.assign((np.abs(values) + 0.5 if "variance" in v.path else values).astype("float32"))
    expected = keras.ops.convert_to_numpy(trained(images, training=False))
    files = save_model_files(trained, tmp_path, "tem_cnn_virus_classification")
    for path in files.values():
        loaded = load_keras_model(path)  # safe mode, as every virion load
        got = keras.ops.convert_to_numpy(loaded(images, training=False))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        assert [w.shape for w in loaded.weights] == [w.shape for w in trained.weights]

"""The extra keras.applications backbones (DenseNet201, EfficientNetV2 B0/S, ConvNeXt Tiny): each
builds with the reference head, takes raw 0..255 pixels like Keras' own preprocessing, loads a
weights file under its Keras name, freezes / unfreezes like the reference's transfer models, and
survives the trainer's save -> safe-mode reload. Tiny: 32 px (each family's minimum), 3 classes,
random weights; one module-scope set of models per family."""

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from virion.inference.gradcam import find_last_conv_layer
from virion.models.catalog import EXTRA_MODELS, MIN_INPUT_SIZE
from virion.models.registry import build_model, model_file_stem, model_info
from virion.models.transfer import (
    ARCHS,
    SCRATCH_BN_MOMENTUM,
    base_is_frozen,
    base_layers,
    unfreeze_top,
)
from virion.models.weights import IMAGENET_WEIGHTS
from virion.run.loading import load_keras_model
from virion.training.saving import save_model_files

N_CLASSES = 3


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _leaves(layers):
    for layer in layers:
        if isinstance(layer, keras.Model):
            yield from _leaves(layer.layers)
        else:
            yield layer


@pytest.fixture(scope="module", params=EXTRA_MODELS)
def family(request, tmp_path_factory):
    """A base's weights written as a notop .h5 under Keras' file name, our model built from that
    file (frozen), and ours from random initialization (weights none); outputs computed once.

    The file comes from Keras' own model, built as for the ImageNet files (EfficientNetV2 and
    ConvNeXt with their own preprocessing layers), so matching its features checks our in-graph
    preprocessing too. DenseNet has no preprocessing inside Keras' model (and 700 layers are slow
    to build), so its file is written from our random-init base, and its scaling is compared with
    `keras.applications.densenet.preprocess_input` directly.
    """
    arch = request.param
    size = MIN_INPUT_SIZE[arch]
    images = np.random.default_rng(4).uniform(0, 255, size=(4, size, size, 3)).astype("float32")
    images[0] = 200.0  # a constant image as well as noise
    keras.utils.set_random_seed(1)
    scratch = build_model(arch, N_CLASSES, size, weights="none")
    if arch.startswith("densenet"):
        reference = keras.Model(scratch.input, scratch.get_layer(ARCHS[arch].last_conv).output)
    else:
        keras.utils.set_random_seed(3)
        reference = getattr(keras.applications, ARCHS[arch].application)(
            include_top=False, weights=None, input_shape=(size, size, 3)
        )
    expected = _numpy(reference(images, training=False))
    path = tmp_path_factory.mktemp(arch) / IMAGENET_WEIGHTS[arch].file_name
    with h5py.File(path, "w") as f:  # the format of the ImageNet files Keras downloads
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    keras.utils.set_random_seed(2)  # other random weights: only loading the file can match `expected`
    pretrained = build_model(arch, N_CLASSES, size, weights=str(path))
    last_conv = ARCHS[arch].last_conv
    features = keras.Model(pretrained.input, pretrained.get_layer(last_conv).output)
    both = keras.Model(pretrained.input, [features.output, pretrained.output])
    got_features, probs = (_numpy(t) for t in both(images, training=False))
    return {
        "arch": arch,
        "reference": reference,
        "path": path,
        "pretrained": pretrained,
        "scratch": scratch,
        "images": images,
        "last_conv": last_conv,
        "expected_features": expected,
        "features": features,
        "got_features": got_features,
        "probs": probs,
    }


def test_head_feature_map_and_grad_cam_layer(family):
    model, last_conv = family["pretrained"], family["last_conv"]
    assert model.name == family["arch"]
    assert model.input.shape[1:] == (MIN_INPUT_SIZE[family["arch"]],) * 2 + (3,)
    pool, dense, dropout, out = model.layers[-4:]
    assert isinstance(pool, keras.layers.GlobalAveragePooling2D)
    assert isinstance(dense, keras.layers.Dense) and dense.units == 256
    assert dense.get_config()["activation"] == "relu"
    assert isinstance(dropout, keras.layers.Dropout) and dropout.rate == 0.5
    assert isinstance(out, keras.layers.Dense) and out.units == N_CLASSES
    assert out.get_config()["activation"] == "softmax" and out.compute_dtype == "float32"
    # the head sits on the base's last feature map, which has a fixed name in every process ...
    assert pool.input is model.get_layer(last_conv).output and len(pool.input.shape) == 4
    assert model_info(family["arch"]).last_conv_layer == last_conv
    # ... and Grad-CAM's automatic search (no hint) finds the same layer in both models
    assert find_last_conv_layer(model) == find_last_conv_layer(family["scratch"]) == last_conv
    assert family["probs"].shape == (4, N_CLASSES)
    np.testing.assert_allclose(family["probs"].sum(axis=1), 1.0, rtol=1e-5)


def test_weights_file_and_preprocessing_reproduce_keras_own_base(family):
    """Ours on raw 0..255 pixels == the file's source model on the same pixels, with the file's weights."""
    model, arch = family["pretrained"], family["arch"]
    scalers = [
        layer
        for layer in _leaves(model.layers)
        if isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization))
    ]
    assert [layer.name for layer in scalers] == ["preprocess"]  # one in-graph step, never two
    expected, got = family["expected_features"], family["got_features"]
    assert got.shape == expected.shape and np.ptp(expected) > 0  # not a constant map
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * float(np.abs(expected).max()))
    if arch.startswith("densenet"):  # Keras' DenseNet takes preprocess_input's output
        x = family["images"]
        scaled = _numpy(keras.Model(model.input, model.get_layer("preprocess").output)(x))
        np.testing.assert_allclose(scaled, keras.applications.densenet.preprocess_input(x.copy()), rtol=1e-5, atol=1e-5)


def test_frozen_base_then_fine_tuning_top_with_batch_norm_frozen(family):
    model = family["pretrained"]
    assert base_is_frozen(model) and model_info(family["arch"], str(family["path"])).base_frozen
    assert {w.path.split("/")[0] for w in model.trainable_weights} == {"head_dense", "predictions"}
    features, x = family["features"], family["images"]
    try:
        opened = unfreeze_top(model, fraction=0.25)
        layers = base_layers(model)
        weighted = [layer for layer in layers if layer.weights]
        assert opened > 0 and not base_is_frozen(model)
        assert not weighted[0].trainable_weights  # the bottom of the base stays frozen
        top = [layer for layer in weighted if not isinstance(layer, keras.layers.BatchNormalization)][-1]
        assert top.trainable_weights  # the top of the base now trains
        assert opened == len([layer for layer in layers[-len(layers) // 4 :] if layer.trainable_weights])
        assert not any(
            layer.trainable_weights for layer in _leaves(layers) if isinstance(layer, keras.layers.BatchNormalization)
        )
        # BN stays in inference mode (frozen statistics): a training pass gives the same features
        # (EfficientNetV2 excepted: its stochastic-depth Dropout layers are active in any training pass)
        if not any(isinstance(layer, keras.layers.Dropout) for layer in layers):
            np.testing.assert_allclose(
                _numpy(features(x, training=True)),
                family["expected_features"],
                rtol=1e-3,
                atol=1e-3 * float(np.abs(family["expected_features"]).max()),
            )
    finally:  # the module's other tests expect the frozen model
        for layer in base_layers(model):
            layer.trainable = False
    assert base_is_frozen(model)


def test_weights_none_trains_everything_with_fast_batch_norm(family):
    model, reference = family["scratch"], family["reference"]
    assert not base_is_frozen(model) and not model_info(family["arch"], "none").base_frozen
    # every weight of Keras' base trains, plus the head's two Dense layers
    assert len(model.trainable_weights) == len(reference.trainable_weights) + 4
    bns = [layer for layer in _leaves(base_layers(model)) if isinstance(layer, keras.layers.BatchNormalization)]
    if family["arch"] == "convnext_tiny":
        assert not bns  # layer normalization only: nothing to adjust
    else:
        assert bns and all(layer.trainable and layer.momentum == SCRATCH_BN_MOMENTUM for layer in bns)


def test_saved_model_reloads_in_safe_mode_with_the_same_outputs(family, tmp_path):
    """ConvNeXt (a Keras-internal LayerScale layer, nested blocks) goes the trainer's whole way: the
    stock-layer copy saved as .keras and .h5; the stock-layer families save .keras directly."""
    model, arch = family["pretrained"], family["arch"]
    if arch == "convnext_tiny":
        files = save_model_files(model, tmp_path, model_file_stem(arch))
    else:
        files = {"keras": tmp_path / f"{model_file_stem(arch)}.keras"}
        model.save(files["keras"])
    for kind, path in files.items():
        reloaded = load_keras_model(path)  # safe_mode=True
        np.testing.assert_allclose(
            _numpy(reloaded(family["images"], training=False)), family["probs"], rtol=1e-5, atol=1e-6, err_msg=kind
        )
        assert base_is_frozen(reloaded), kind
        assert find_last_conv_layer(reloaded, preferred=family["last_conv"]) == family["last_conv"]

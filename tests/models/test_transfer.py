"""Xception / DenseNet121 (the reference's) transfer models: flat graph, in-graph preprocess_input, frozen base in
inference mode, the reference head, local weights files, fine-tuning, save/reload."""

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from virion.errors import VirionError
from virion.models.transfer import (
    ARCHS,
    base_is_frozen,
    base_layers,
    build_transfer_model,
    unfreeze_top,
)

N_CLASSES = 4
SIZES = {"xception": 71, "densenet121": 32}  # the smallest input each base accepts
PREPROCESS = {
    "xception": keras.applications.xception.preprocess_input,
    "densenet121": keras.applications.densenet.preprocess_input,
}


def write_notop_h5(model, path):
    """Write weights in the legacy format of the ImageNet `*_notop.h5` files Keras downloads."""
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path


@pytest.fixture(scope="module", params=sorted(SIZES))  # the reference's two; others: test_backbones.py
def arch_case(request, tmp_path_factory):
    """One randomly initialized reference base written to a notop .h5, and models built from it."""
    arch = request.param
    size = SIZES[arch]
    keras.utils.set_random_seed(1)
    constructor = getattr(keras.applications, ARCHS[arch][0])
    reference = constructor(include_top=False, weights=None, input_shape=(size, size, 3))
    path = write_notop_h5(reference, tmp_path_factory.mktemp(arch) / f"{arch}_notop.h5")
    pretrained = build_transfer_model(arch, N_CLASSES, (size, size, 3), str(path))
    scratch = build_transfer_model(arch, N_CLASSES, (size, size, 3), "none")
    images = np.random.default_rng(2).uniform(0, 255, size=(4, size, size, 3)).astype("float32")
    return dict(
        arch=arch,
        size=size,
        reference=reference,
        path=path,
        pretrained=pretrained,
        scratch=scratch,
        images=images,
        last_conv=ARCHS[arch][1],
    )


def test_head_layout(arch_case):
    model = arch_case["pretrained"]
    pool, dense, dropout, out = model.layers[-4:]
    assert isinstance(pool, keras.layers.GlobalAveragePooling2D)
    assert isinstance(dense, keras.layers.Dense) and dense.units == 256
    assert dense.get_config()["activation"] == "relu"
    assert isinstance(dropout, keras.layers.Dropout) and dropout.rate == 0.5
    assert isinstance(out, keras.layers.Dense) and out.units == N_CLASSES
    assert out.get_config()["activation"] == "softmax" and out.compute_dtype == "float32"
    # the head sits directly on the base's last convolutional feature map
    assert pool.input is model.get_layer(arch_case["last_conv"]).output
    assert model.name == arch_case["arch"]
    probs = keras.ops.convert_to_numpy(model(arch_case["images"], training=False))
    assert probs.shape == (4, N_CLASSES)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_one_flat_graph(arch_case):
    model = arch_case["pretrained"]
    assert not [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    # every weighted layer of the application is a layer of our model, in the same order
    ours = [type(layer) for layer in base_layers(model) if layer.weights]
    assert ours == [type(layer) for layer in arch_case["reference"].layers if layer.weights]
    feature_map = model.get_layer(arch_case["last_conv"]).output
    assert len(feature_map.shape) == 4 and feature_map.shape[-1] in (1024, 2048)


def test_in_graph_scaling_matches_preprocess_input(arch_case):
    model = arch_case["pretrained"]
    first = model.layers[1]
    assert first.name == "preprocess" and isinstance(first, keras.layers.Rescaling)
    scaler = keras.Model(model.input, first.output)
    images = arch_case["images"].copy()
    images[0] = 200.0  # a constant image, as well as random ones
    expected = PREPROCESS[arch_case["arch"]](images.copy())
    got = keras.ops.convert_to_numpy(scaler(images))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_pretrained_base_is_frozen_and_runs_in_inference_mode(arch_case):
    model = arch_case["pretrained"]
    assert base_is_frozen(model)
    trainable = {w.path.split("/")[0] for w in model.trainable_weights}
    assert trainable == {"head_dense", "predictions"}
    # Frozen BN uses its moving statistics even in a training step: same features either way.
    features = keras.Model(model.input, model.get_layer(arch_case["last_conv"]).output)
    x = arch_case["images"]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(features(x, training=True)),
        keras.ops.convert_to_numpy(features(x, training=False)),
        rtol=1e-4,
        atol=1e-4,
    )


def test_training_step_leaves_the_frozen_base_untouched(arch_case):
    """A real fit step: head weights move; base kernels and BN moving statistics do not."""
    if arch_case["arch"] != "xception":
        pytest.skip("the freezing mechanism is the same for both bases; one fit step is enough")
    model = arch_case["pretrained"]
    base = [w for layer in base_layers(model) for w in layer.weights]
    head = model.get_layer("head_dense").kernel
    before = [keras.ops.convert_to_numpy(w).copy() for w in base]
    head_before = keras.ops.convert_to_numpy(head).copy()
    assert any("moving_mean" in w.path for w in base)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="categorical_crossentropy")
    y = keras.utils.to_categorical(np.arange(4) % N_CLASSES, N_CLASSES)
    model.fit(arch_case["images"], y, batch_size=4, epochs=1, verbose=0)
    for w, old in zip(base, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), old, err_msg=w.path)
    assert not np.array_equal(keras.ops.convert_to_numpy(head), head_before)


def test_weights_none_trains_the_whole_network(arch_case):
    model = arch_case["scratch"]
    assert not base_is_frozen(model)
    assert len(model.trainable_weights) > len(arch_case["pretrained"].trainable_weights) + 100
    features = keras.Model(model.input, model.get_layer(arch_case["last_conv"]).output)
    x = arch_case["images"]
    # trainable BN normalizes with batch statistics in training: different features
    assert not np.allclose(
        keras.ops.convert_to_numpy(features(x, training=True)),
        keras.ops.convert_to_numpy(features(x, training=False)),
        atol=1e-4,
    )


def test_weights_path_loads_the_files_weights(arch_case):
    model, reference, scratch = arch_case["pretrained"], arch_case["reference"], arch_case["scratch"]
    # Layers pair up by order (Keras auto-names some of Xception's layers per process).
    weighted = [
        [layer for layer in layers if layer.weights]
        for layers in (reference.layers, base_layers(model), base_layers(scratch))
    ]
    assert len(weighted[0]) == len(weighted[1]) == len(weighted[2])
    compared = 0
    for ref_layer, layer, other_layer in zip(*weighted):
        for expected, got, other in zip(ref_layer.get_weights(), layer.get_weights(), other_layer.get_weights()):
            np.testing.assert_array_equal(got, expected)
            compared += int(not np.array_equal(other, expected))
    assert compared > 0  # the random-init model differs, so equality above is not a coincidence


def test_keras3_weight_files_load_too(arch_case, tmp_path):
    if arch_case["arch"] != "xception":
        pytest.skip("one architecture is enough for the format check")
    path = tmp_path / "base.weights.h5"
    arch_case["reference"].save_weights(path)
    size = arch_case["size"]
    model = build_transfer_model(arch_case["arch"], N_CLASSES, (size, size, 3), str(path))
    for ref_layer in ("block1_conv1", "block14_sepconv2"):
        np.testing.assert_array_equal(
            model.get_layer(ref_layer).get_weights()[0], arch_case["reference"].get_layer(ref_layer).get_weights()[0]
        )


def test_bad_weights_files_raise_one_line_errors(arch_case, tmp_path):
    size = arch_case["size"]
    shape = (size, size, 3)
    with pytest.raises(VirionError, match="no such file") as missing:
        build_transfer_model(arch_case["arch"], N_CLASSES, shape, str(tmp_path / "nope.h5"))
    wrong_kind = tmp_path / "weights.txt"
    wrong_kind.write_text("not weights")
    with pytest.raises(VirionError, match="not a Keras weights file"):
        build_transfer_model(arch_case["arch"], N_CLASSES, shape, str(wrong_kind))
    tiny = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
    mismatched = write_notop_h5(tiny, tmp_path / "other_notop.h5")
    with pytest.raises(VirionError, match="cannot load it") as mismatch:
        build_transfer_model(arch_case["arch"], N_CLASSES, shape, str(mismatched))
    for error in (missing, mismatch):
        assert "\n" not in str(error.value) and "--weights" in str(error.value)


def test_too_small_input_is_a_user_error():
    with pytest.raises(VirionError, match="input-size 40 .*xception.*71"):
        build_transfer_model("xception", N_CLASSES, (40, 40, 3), "none")
    with pytest.raises(VirionError, match="unknown transfer model"):
        build_transfer_model("vgg16", N_CLASSES, (64, 64, 3), "none")


def test_unfreeze_top_keeps_batch_norm_frozen(arch_case):
    size = arch_case["size"]
    model = build_transfer_model(arch_case["arch"], N_CLASSES, (size, size, 3), str(arch_case["path"]))
    head_only = len(model.trainable_weights)
    layers = base_layers(model)
    opened = unfreeze_top(model, fraction=0.25)
    assert opened > 0
    assert not base_is_frozen(model)
    assert len(model.trainable_weights) > head_only
    bns = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and not any(layer.trainable_weights for layer in bns)
    with_weights = [layer for layer in layers if layer.weights]
    assert not with_weights[0].trainable_weights  # the bottom of the base stays frozen
    assert with_weights[-1].trainable_weights or isinstance(with_weights[-1], keras.layers.BatchNormalization)
    top_trainable = [layer for layer in layers[-len(layers) // 4 :] if layer.trainable_weights]
    assert len(top_trainable) == opened

    # From a named layer: exactly the layers from it upwards open (BN excepted).
    model2 = model
    layers2 = base_layers(model2)
    for layer in layers2:
        layer.trainable = False
    start = [layer for layer in layers2 if isinstance(layer, (keras.layers.Conv2D,))][-2]
    index = layers2.index(start)
    opened2 = unfreeze_top(model2, from_layer=start.name)
    expected = [lay for lay in layers2[index:] if lay.weights and not isinstance(lay, keras.layers.BatchNormalization)]
    assert opened2 == len(expected) > 0
    assert all(not layer.trainable_weights for layer in layers2[:index])

    # Features still come from moving statistics after unfreezing (BN in inference mode).
    features = keras.Model(model.input, model.get_layer(arch_case["last_conv"]).output)
    x = arch_case["images"]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(features(x, training=True)),
        keras.ops.convert_to_numpy(features(x, training=False)),
        rtol=1e-4,
        atol=1e-4,
    )


def test_unfreeze_top_rejects_bad_arguments(arch_case):
    model = arch_case["pretrained"]
    with pytest.raises(VirionError, match="either a fraction or a layer"):
        unfreeze_top(model, fraction=0.1, from_layer="x")
    with pytest.raises(VirionError, match="no such layer"):
        unfreeze_top(model, from_layer="not_a_layer")
    with pytest.raises(VirionError, match=r"\(0, 1\]"):
        unfreeze_top(model, fraction=1.5)
    assert base_is_frozen(model)  # nothing changed on errors


def test_save_reload_same_outputs_and_frozen_base(arch_case, tmp_path):
    model = arch_case["pretrained"]
    path = tmp_path / f"{arch_case['arch']}.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, compile=False)
    x = arch_case["images"]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reloaded(x, training=False)),
        keras.ops.convert_to_numpy(model(x, training=False)),
        rtol=1e-5,
        atol=1e-6,
    )
    assert base_is_frozen(reloaded)
    assert not [layer for layer in reloaded.layers if isinstance(layer, keras.Model)]
    reloaded.get_layer(arch_case["last_conv"])

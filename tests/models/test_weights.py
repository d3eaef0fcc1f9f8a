"""Weights resolution: ImageNet from the Keras cache, offline failure as one line naming the three
ways out, never a long hang, and the real keras.applications loading path with a cached file."""

import hashlib
import socket

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from virion.errors import VirionError
from virion.models import weights as wmod
from virion.models.registry import build_model
from virion.models.transfer import base_layers
from virion.models.weights import (
    IMAGENET_WEIGHTS,
    WeightsFile,
    cached_weights_path,
    imagenet_available,
    resolve_weights,
)


@pytest.fixture
def empty_keras_home(tmp_path, monkeypatch):
    home = tmp_path / "keras-home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


def _fail_download(calls):
    def fake_get_file(fname, origin, **kwargs):
        calls.append(dict(fname=fname, origin=origin, timeout=socket.getdefaulttimeout(), **kwargs))
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution")

    return fake_get_file


@pytest.mark.parametrize("arch", sorted(IMAGENET_WEIGHTS))
def test_offline_imagenet_names_the_three_ways_out(arch, empty_keras_home, monkeypatch):
    calls = []
    monkeypatch.setattr(keras.utils, "get_file", _fail_download(calls))
    before = socket.getdefaulttimeout()
    with pytest.raises(VirionError) as err:
        resolve_weights(arch, "imagenet")
    message = str(err.value)
    assert "\n" not in message
    assert IMAGENET_WEIGHTS[arch].file_name in message  # 1: the exact file name ...
    assert str(empty_keras_home / "models") in message  # ... and the cache folder to put it in
    assert "--weights PATH" in message  # 2
    assert "--weights none" in message and "unfrozen" in message  # 3
    assert "name resolution" in message  # the cause, for the user
    # the download used the Keras cache under KERAS_HOME, the known hash and a short timeout
    (call,) = calls
    assert call["fname"] == IMAGENET_WEIGHTS[arch].file_name
    assert call["cache_dir"] == str(empty_keras_home) and call["cache_subdir"] == "models"
    assert call["file_hash"] == IMAGENET_WEIGHTS[arch].file_hash
    assert call["timeout"] is not None and call["timeout"] <= 60
    assert socket.getdefaulttimeout() == before


def test_socket_timeouts_become_the_same_error(empty_keras_home, monkeypatch):
    def hang(*args, **kwargs):
        raise TimeoutError("timed out")

    monkeypatch.setattr(keras.utils, "get_file", hang)
    with pytest.raises(VirionError, match="--weights none"):
        build_model("xception", 3, 71, weights="imagenet")


def test_imagenet_available_is_false_on_an_empty_cache(empty_keras_home, monkeypatch):
    monkeypatch.setattr(keras.utils, "get_file", _fail_download([]))
    assert not imagenet_available("xception")
    assert not imagenet_available("densenet121")


def test_none_and_paths(tmp_path):
    assert resolve_weights("xception", "none") is None
    assert resolve_weights("xception", "NONE") is None
    assert resolve_weights("densenet121", None) is None
    with pytest.raises(VirionError, match="no such file"):
        resolve_weights("xception", "imagnet")  # a typo is not silently a path
    path = tmp_path / "w.h5"
    path.write_bytes(b"")
    assert resolve_weights("densenet121", path) == str(path)
    with pytest.raises(VirionError, match="no ImageNet weights for model 'vgg16'"):
        resolve_weights("vgg16", "imagenet")


def test_cached_imagenet_file_goes_through_keras_applications(empty_keras_home, monkeypatch):
    """A notop file placed in the Keras cache is used without any download and really loaded."""
    keras.utils.set_random_seed(3)
    reference = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(32, 32, 3))
    target = cached_weights_path("densenet121")
    assert target == empty_keras_home / "models" / "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"
    target.parent.mkdir(parents=True)
    with h5py.File(target, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    md5 = hashlib.md5(target.read_bytes()).hexdigest()

    # With the real hash the test file is "corrupt": not available, and offline it cannot be replaced.
    assert not imagenet_available("densenet121")
    monkeypatch.setattr(keras.utils, "get_file", _fail_download([]))
    with pytest.raises(VirionError, match="Keras cache folder"):
        resolve_weights("densenet121", "imagenet")

    # Pretend the test file is the genuine one: no network call at all.
    spec = IMAGENET_WEIGHTS["densenet121"]
    monkeypatch.setitem(wmod.IMAGENET_WEIGHTS, "densenet121", WeightsFile(spec.file_name, spec.url, md5))

    def no_network(*args, **kwargs):
        raise AssertionError("a cached file must not trigger a download")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    assert imagenet_available("densenet121")
    assert resolve_weights("densenet121", "imagenet") == str(target)

    model = build_model("densenet121", 3, 32, weights="imagenet")
    loaded = [layer for layer in base_layers(model) if layer.weights]
    expected = [layer for layer in reference.layers if layer.weights]
    assert len(loaded) == len(expected)
    for ours, theirs in zip(loaded, expected):
        for got, want in zip(ours.get_weights(), theirs.get_weights()):
            np.testing.assert_array_equal(got, want)
    assert not any(layer.trainable_weights for layer in loaded)  # pretrained: frozen


def test_file_names_urls_and_hashes_are_keras_own():
    """The Keras cache names: a file Keras downloaded (or one put there by hand) is found by both."""
    import inspect

    from keras.src.applications import convnext, densenet, efficientnet_v2

    assert IMAGENET_WEIGHTS["densenet201"].url == densenet.DENSENET201_WEIGHT_PATH_NO_TOP
    assert IMAGENET_WEIGHTS["densenet201"].file_name == densenet.DENSENET201_WEIGHT_PATH_NO_TOP.rsplit("/", 1)[1]
    for arch, constructor, module, key in [
        ("efficientnetv2b0", keras.applications.EfficientNetV2B0, efficientnet_v2, "b0"),
        ("efficientnetv2s", keras.applications.EfficientNetV2S, efficientnet_v2, "-s"),
        ("convnext_tiny", keras.applications.ConvNeXtTiny, convnext, "convnext_tiny"),
    ]:
        spec = IMAGENET_WEIGHTS[arch]
        name = inspect.signature(constructor).parameters["name"].default
        assert spec.file_name == f"{name}_notop.h5"
        assert spec.url == module.BASE_WEIGHTS_PATH + spec.file_name
        assert spec.file_hash == module.WEIGHTS_HASHES[key][1]


def test_sha256_hashes_are_checked_too(empty_keras_home, monkeypatch):
    """ConvNeXt's files carry a sha256 (not md5): a cached copy is verified with the right one."""
    target = cached_weights_path("convnext_tiny")
    assert target.name == "convnext_tiny_notop.h5"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"pretend weights")
    monkeypatch.setattr(keras.utils, "get_file", _fail_download([]))
    assert not imagenet_available("convnext_tiny")  # the real hash does not match
    with pytest.raises(VirionError, match="convnext_tiny_notop.h5"):
        resolve_weights("convnext_tiny", "imagenet")
    spec = IMAGENET_WEIGHTS["convnext_tiny"]
    sha256 = hashlib.sha256(target.read_bytes()).hexdigest()
    monkeypatch.setitem(wmod.IMAGENET_WEIGHTS, "convnext_tiny", WeightsFile(spec.file_name, spec.url, sha256))
    assert imagenet_available("convnext_tiny")
    assert resolve_weights("convnext_tiny", "imagenet") == str(target)
    # an md5 entry is checked as an md5 (Keras' rule: the hash's length says which)
    md5 = hashlib.md5(target.read_bytes()).hexdigest()
    monkeypatch.setitem(wmod.IMAGENET_WEIGHTS, "convnext_tiny", WeightsFile(spec.file_name, spec.url, md5))
    assert imagenet_available("convnext_tiny")
    monkeypatch.setitem(wmod.IMAGENET_WEIGHTS, "convnext_tiny", WeightsFile(spec.file_name, spec.url, md5[::-1]))
    assert not imagenet_available("convnext_tiny")


@pytest.mark.parametrize("arch", ["densenet201", "efficientnetv2b0", "efficientnetv2s", "convnext_tiny"])
def test_a_folder_of_keras_named_files_serves_the_new_backbones(arch, tmp_path):
    name = IMAGENET_WEIGHTS[arch].file_name
    with pytest.raises(VirionError, match=name):
        resolve_weights(arch, str(tmp_path))
    (tmp_path / name).write_bytes(b"")
    assert resolve_weights(arch, str(tmp_path)) == str(tmp_path / name)

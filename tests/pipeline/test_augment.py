"""TEMAugment: the composed-matrix convention, exact flips/turns, range, identity, config."""

import json

import keras
import numpy as np
import pytest

from virion.data.augment import NOISE_DIM, AugmentConfig, TEMAugment, affine_matrices
from virion.errors import VirionError


def _asymmetric(batch=1, size=8):
    """A batch of distinct images with no rotational or mirror symmetry."""
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (batch, size, size + 2, 1)).astype(np.uint8)


def _noise(batch, **columns):
    """Noise rows with chosen columns; 0.5 is 'no change' for the spread-type draws."""
    names = ["angle", "shift_x", "shift_y", "zoom", "hflip", "vflip", "rot90", "bright", "contrast"]
    noise = np.full((batch, NOISE_DIM), 0.5, np.float32)
    for name, value in columns.items():
        noise[:, names.index(name)] = value
    return noise


def test_quarter_turn_matrix_matches_numpy_rot90():
    """Positive angles turn counter-clockwise as displayed, like np.rot90 and Keras RandomRotation."""
    img = _asymmetric(size=9)[:, :, :9]  # square, so a quarter turn keeps the frame
    ops = keras.ops
    one, zero = ops.ones(1), ops.zeros(1)
    for k in range(4):
        by_angle = affine_matrices(
            ops.convert_to_tensor([k * np.pi / 2], "float32"), zero, zero, one, one, one, zero, 9, 9
        )
        by_turns = affine_matrices(zero, zero, zero, one, one, one, ops.convert_to_tensor([float(k)]), 9, 9)
        expected = np.rot90(img[0, :, :, 0], k)
        exact = ops.image.affine_transform(img.astype("float32"), by_turns, interpolation="bilinear")
        np.testing.assert_array_equal(np.asarray(exact)[0, :, :, 0], expected)
        rounded = ops.image.affine_transform(img.astype("float32"), by_angle, interpolation="nearest")
        np.testing.assert_array_equal(np.asarray(rounded)[0, :, :, 0], expected)


def test_rot90_config_gives_exact_quarter_turns():
    img = _asymmetric(batch=4, size=6)[:, :, :6]
    layer = TEMAugment(AugmentConfig(rotation=0, shift=0, horizontal_flip=False, rot90=True))
    turns = np.array([0.1, 0.3, 0.6, 0.9], np.float32)  # floor(4u) = 0, 1, 2, 3
    out = np.asarray(layer(img, training=True, noise=_noise(4, rot90=turns)))
    for k in range(4):
        np.testing.assert_array_equal(out[k, :, :, 0], np.rot90(img[k, :, :, 0], k))


def test_flip_only_config_flips_exactly():
    img = _asymmetric(batch=2)
    layer = TEMAugment(AugmentConfig(rotation=0, shift=0, horizontal_flip=True, vertical_flip=True))
    flip = np.array([0.2, 0.8], np.float32)  # < 0.5 flips
    out = np.asarray(layer(img, training=True, noise=_noise(2, hflip=flip, vflip=flip[::-1])))
    np.testing.assert_array_equal(out[0], img[0, :, ::-1])  # horizontal only
    np.testing.assert_array_equal(out[1], img[1, ::-1, :])  # vertical only


def test_shift_moves_content_right_and_down():
    img = np.zeros((1, 10, 10, 1), np.uint8)
    img[0, 4, 4, 0] = 200
    layer = TEMAugment(AugmentConfig(rotation=0, shift=0.2, horizontal_flip=False, fill_mode="constant"))
    # u = 0.75 → +0.5·shift·size = +1 pixel; u = 1.0 → +2 pixels
    out = np.asarray(layer(img, training=True, noise=_noise(1, shift_x=0.75, shift_y=1.0)))
    assert out[0, 6, 5, 0] == 200
    assert out.sum() == 200


def test_identity_when_not_training_and_when_disabled():
    img = _asymmetric(batch=3)
    layer = TEMAugment(AugmentConfig(rotation=45, zoom=0.3, brightness=0.5), seed=1)
    for training in (False, None):
        out = layer(img, training=training)
        assert out.dtype == "float32"
        np.testing.assert_array_equal(np.asarray(out), img.astype(np.float32))
    off = TEMAugment(AugmentConfig.none(), seed=1)
    np.testing.assert_array_equal(np.asarray(off(img, training=True)), img.astype(np.float32))


def test_training_output_changes_and_stays_in_range():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 32, 32, 1)).astype(np.uint8)
    cfg = AugmentConfig(
        rotation=30,
        shift=0.2,
        zoom=0.2,
        rot90=True,
        vertical_flip=True,
        brightness=0.4,
        contrast=0.5,
        fill_mode="reflect",
    )
    out = np.asarray(TEMAugment(cfg, seed=3)(img, training=True))
    assert out.shape == img.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0
    changed = [not np.array_equal(out[i], img[i]) for i in range(len(img))]
    assert all(changed)


def test_seeded_layer_is_reproducible_and_advances():
    img = _asymmetric(batch=4, size=16)
    a, b = TEMAugment(seed=5), TEMAugment(seed=5)
    first_a, first_b = np.asarray(a(img, training=True)), np.asarray(b(img, training=True))
    np.testing.assert_array_equal(first_a, first_b)
    assert not np.array_equal(np.asarray(a(img, training=True)), first_a)


def test_brightness_contrast_only_keeps_geometry():
    img = np.zeros((1, 8, 8, 1), np.uint8)
    img[0, :, :4] = 100
    img[0, :, 4:] = 140
    layer = TEMAugment(AugmentConfig(rotation=0, shift=0, horizontal_flip=False, brightness=0.2, contrast=0.5))
    # brightness u=1 → +0.2·255 = +51; contrast u=1 → factor 1.5 about the mean 120
    out = np.asarray(layer(img, training=True, noise=_noise(1, bright=1.0, contrast=1.0)))
    np.testing.assert_allclose(out[0, 0, 0, 0], (100 - 120) * 1.5 + 120 + 51, atol=1e-3)
    np.testing.assert_allclose(out[0, 0, 7, 0], (140 - 120) * 1.5 + 120 + 51, atol=1e-3)


def test_get_config_round_trip_and_inside_a_saved_model(tmp_path):
    cfg = AugmentConfig(rotation=10, shift=0.1, rot90=True, zoom=0.1, fill_mode="reflect")
    layer = TEMAugment(cfg, seed=9, name="aug")
    config = layer.get_config()
    json.dumps(config)  # must be plain JSON for .keras files
    clone = TEMAugment.from_config(config)
    assert clone.config == cfg and clone.seed == 9 and clone.name == "aug"

    inputs = keras.Input((16, 16, 1))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(TEMAugment(cfg, seed=1)(inputs)))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = _asymmetric(batch=2, size=16)[:, :, :16].astype("float32")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=1e-6)
    assert loaded.layers[1].config == cfg


def test_augment_config_dict_round_trip_and_errors():
    cfg = AugmentConfig(rotation=5, vertical_flip=True, brightness=0.1)
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
    assert AugmentConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert not AugmentConfig.none().enabled and AugmentConfig().enabled
    with pytest.raises(VirionError, match="rotaton"):
        AugmentConfig.from_dict({"rotaton": 10})
    with pytest.raises(VirionError, match="shift"):
        AugmentConfig(shift=1.5)
    with pytest.raises(VirionError, match="fill_mode"):
        AugmentConfig(fill_mode="mirror")
    with pytest.raises(VirionError, match="horizontal_flip"):
        AugmentConfig(horizontal_flip="yes")

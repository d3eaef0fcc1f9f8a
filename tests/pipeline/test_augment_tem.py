"""The TEM augmentation options (gamma, blur, noise, fill mode, full turns) and mixup/cutmix."""

from pathlib import Path

import keras
import numpy as np
import pytest

from virion.data.augment import (
    BASE_NOISE_DIM,
    MIX_DIM,
    NOISE_DIM,
    AugmentConfig,
    MixConfig,
    TEMAugment,
    gaussian_blur,
    mix_batch,
    random_mix_batch,
)
from virion.data.cache import SplitArrays
from virion.data.pipeline import make_dataset
from virion.errors import VirionError

OFF = {"rotation": 0.0, "shift": 0.0, "horizontal_flip": False}  # no warp: isolates the intensity ops


def _noise(batch, **columns):
    """Noise rows with chosen columns (0.5 = no change for the spread draws, 0 = off for blur/noise)."""
    names = [
        "angle",
        "shift_x",
        "shift_y",
        "zoom",
        "hflip",
        "vflip",
        "rot90",
        "bright",
        "contrast",
        "gamma",
        "blur",
        "noise",
    ]
    assert len(names) == NOISE_DIM
    noise = np.full((batch, NOISE_DIM), 0.5, np.float32)
    noise[:, names.index("blur")] = 0.0
    noise[:, names.index("noise")] = 0.0
    for name, value in columns.items():
        noise[:, names.index(name)] = value
    return noise


def _images(batch=3, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 1)).astype(np.uint8)


def _run(cfg, x, **kw):
    return np.asarray(TEMAugment(cfg)(x, training=True, **kw))


def test_each_option_is_the_identity_at_its_neutral_draw():
    x = _images()
    cfg = AugmentConfig(**OFF, gamma=0.5, blur_sigma=2.0, noise_std=0.1)
    z = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    out = _run(cfg, x, noise=_noise(3), pixel_noise=z)  # gamma u=0.5, blur u=0, noise u=0
    np.testing.assert_allclose(out, x.astype(np.float32), atol=1e-3)


def test_gamma_follows_the_drawn_exponent():
    x = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))[None, ..., None]
    cfg = AugmentConfig(**OFF, gamma=0.5)
    for u, exponent in ((1.0, 1.5), (0.0, 1 / 1.5)):
        out = _run(cfg, x, noise=_noise(1, gamma=u))
        expected = 255.0 * (x.astype(np.float64) / 255.0) ** exponent
        np.testing.assert_allclose(out, expected, atol=1e-2)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 255


def test_blur_matches_a_gaussian_kernel_and_keeps_flat_images_flat():
    x = np.zeros((2, 21, 21, 1), np.float32)
    x[:, 10, 10, 0] = 1000.0
    out = np.asarray(gaussian_blur(x, np.array([1.0, 2.0], np.float32), 2.0))
    for b, sigma in enumerate((1.0, 2.0)):
        k = np.exp(-0.5 * (np.arange(-6, 7) / sigma) ** 2)
        k /= k.sum()
        np.testing.assert_allclose(out[b, 4:17, 4:17, 0], 1000.0 * np.outer(k, k), atol=1e-3)
        assert out[b].sum() == pytest.approx(1000.0, rel=1e-4)
    assert out[1, 10, 10, 0] < out[0, 10, 10, 0]  # larger sigma: wider, lower peak
    rgb = np.random.default_rng(3).random((2, 12, 12, 3)).astype(np.float32)  # channels blurred apart
    sig = np.array([0.7, 1.6], np.float32)
    together = np.asarray(gaussian_blur(rgb, sig, 2.0))
    for ch in range(3):
        np.testing.assert_allclose(
            together[..., ch : ch + 1], np.asarray(gaussian_blur(rgb[..., ch : ch + 1], sig, 2.0)), atol=1e-5
        )
    flat = np.full((1, 8, 8, 1), 90.0, np.float32)  # reflect padding: borders keep their level
    np.testing.assert_allclose(np.asarray(gaussian_blur(flat, np.array([5.0], np.float32), 5.0)), flat, atol=1e-3)


def test_noise_has_the_drawn_standard_deviation():
    x = np.full((1, 64, 64, 1), 128, np.uint8)
    z = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    cfg = AugmentConfig(**OFF, noise_std=0.1)
    out = _run(cfg, x, noise=_noise(1, noise=0.5), pixel_noise=z)
    np.testing.assert_allclose(out - 128.0, np.clip(0.05 * 255.0 * z, -128, 127), atol=1e-3)
    with pytest.raises(ValueError, match="pixel_noise"):
        TEMAugment(cfg)(x, training=True, noise=_noise(1))


def test_all_options_seeded_in_range_and_deterministic():
    x = _images(batch=4, size=24)
    cfg = AugmentConfig(
        rotation=180,
        shift=0.1,
        zoom=0.1,
        rot90=True,
        vertical_flip=True,
        brightness=0.1,
        contrast=0.2,
        fill_mode="reflect",
        gamma=0.3,
        blur_sigma=1.5,
        noise_std=0.05,
    )
    a = np.asarray(TEMAugment(cfg, seed=4)(x, training=True))
    b = np.asarray(TEMAugment(cfg, seed=4)(x, training=True))
    c = np.asarray(TEMAugment(cfg, seed=5)(x, training=True))
    assert a.shape == x.shape and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 255.0
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(np.asarray(TEMAugment(cfg, seed=4)(x, training=False)), x.astype(np.float32))


def test_full_turns_with_reflect_fill_leave_no_empty_corners():
    flat = np.full((4, 16, 16, 1), 100, np.uint8)
    noise = _noise(4, angle=np.array([0.0, 0.2, 0.7, 0.9], np.float32))  # up to ±180°
    reflect = _run(AugmentConfig(rotation=180, shift=0, horizontal_flip=False, fill_mode="reflect"), flat, noise=noise)
    np.testing.assert_allclose(reflect, 100.0, atol=1e-3)
    constant = _run(
        AugmentConfig(rotation=180, shift=0, horizontal_flip=False, fill_mode="constant"), flat, noise=noise
    )
    assert (constant[1:, 0, 0, 0] == 0).all()  # the corners rotated out are filled with 0


def test_default_config_draws_only_the_reference_columns():
    """The reference configuration needs no TEM draws: its noise rows are what earlier releases used."""
    layer = TEMAugment(AugmentConfig(), seed=0)
    noise = np.asarray(layer.sample_noise(5))
    assert noise.shape == (5, NOISE_DIM) and (noise[:, BASE_NOISE_DIM:] == 0).all()
    tem = np.asarray(TEMAugment(AugmentConfig(gamma=0.2), seed=0).sample_noise(5))
    np.testing.assert_array_equal(tem[:, :BASE_NOISE_DIM], noise[:, :BASE_NOISE_DIM])
    assert (tem[:, BASE_NOISE_DIM:] > 0).any()


def test_new_options_validate_and_round_trip():
    cfg = AugmentConfig(gamma=0.2, blur_sigma=1.0, noise_std=0.03)
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg and cfg.tem and not AugmentConfig().tem
    assert not AugmentConfig.none().enabled
    assert TEMAugment.from_config(TEMAugment(cfg).get_config()).config == cfg
    for bad in ({"gamma": -0.1}, {"gamma": 2.0}, {"blur_sigma": 9.0}, {"noise_std": 0.9}, {"noise_std": "x"}):
        with pytest.raises(VirionError, match=next(iter(bad))):
            AugmentConfig(**bad)


# ------------------------------------------------------------------------------------------ mixing


def _labelled(batch=4, size=8, classes=3):
    images = np.stack([np.full((size, size, 1), 40.0 * (i + 1), np.float32) for i in range(batch)])
    labels = np.eye(classes, dtype=np.float32)[np.arange(batch) % classes]
    return images, labels


def test_mixup_blends_images_and_labels_by_lambda():
    x, y = _labelled()
    partner = np.array([1, 0, 3, 2])
    lam = np.array([0.7, 0.2, 1.0, 0.5], np.float32)
    u = np.zeros((4, MIX_DIM), np.float32)
    mx, my = (np.asarray(t) for t in mix_batch(x, y, MixConfig(mixup=0.4), lam, np.ones(4), partner, u))
    for i in range(4):
        np.testing.assert_allclose(mx[i], lam[i] * x[i] + (1 - lam[i]) * x[partner[i]], atol=1e-4)
        np.testing.assert_allclose(my[i], lam[i] * y[i] + (1 - lam[i]) * y[partner[i]], atol=1e-6)
    np.testing.assert_allclose(my.sum(axis=1), 1.0, atol=1e-6)


def test_cutmix_label_weight_is_the_pasted_area():
    x, y = _labelled(size=10)
    partner = np.array([1, 2, 3, 0])
    lam = np.array([0.75, 0.5, 0.9, 0.3], np.float32)
    u = np.column_stack([np.zeros(4), np.zeros(4), [0.5, 0.1, 0.5, 0.95], [0.5, 0.5, 0.0, 0.9]]).astype(np.float32)
    mx, my = (np.asarray(t) for t in mix_batch(x, y, MixConfig(cutmix=1.0), np.ones(4), lam, partner, u))
    for i in range(4):
        pasted = np.isclose(mx[i, ..., 0], x[partner[i], 0, 0, 0]).mean()
        own = np.isclose(mx[i, ..., 0], x[i, 0, 0, 0]).mean()
        assert pasted + own == pytest.approx(1.0)  # a box of the partner, the rest untouched
        assert pasted > 0
        np.testing.assert_allclose(my[i], (1 - pasted) * y[i] + pasted * y[partner[i]], atol=1e-6)
    # Centred box of 1 - 0.75 = 1/4 of the area: 5x5 pixels of 10x10.
    assert np.isclose(mx[0, ..., 0], x[1, 0, 0, 0]).sum() == 25


def test_mixing_off_or_never_applied_is_the_identity():
    x, y = _labelled()
    for cfg in (MixConfig(), MixConfig(mixup=0.4, cutmix=1.0, mix_prob=0.0)):
        mx, my = random_mix_batch(x, y, cfg, seed=1)
        np.testing.assert_array_equal(np.asarray(mx), x)
        np.testing.assert_array_equal(np.asarray(my), y)
    with pytest.raises(VirionError, match="mixup"):
        MixConfig(mixup=-1)
    with pytest.raises(VirionError, match="mix_prob"):
        MixConfig.from_dict({"mixup": 0.2, "mix_prob": 2})


def test_random_mix_is_seeded_and_labels_stay_distributions():
    x, y = _labelled(batch=8)
    cfg = MixConfig(mixup=0.4, cutmix=1.0)
    a = [np.asarray(t) for t in random_mix_batch(x, y, cfg, seed=3)]
    b = [np.asarray(t) for t in random_mix_batch(x, y, cfg, seed=3)]
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].shape == x.shape and a[0].dtype == np.float32
    assert a[0].min() >= x.min() and a[0].max() <= x.max()
    np.testing.assert_allclose(a[1].sum(axis=1), 1.0, atol=1e-5)
    assert (a[1] >= 0).all() and not np.array_equal(a[1], y)


# ------------------------------------------------------------------------------------------ pipeline


def _arrays(n=20, size=16):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    return SplitArrays(images, np.arange(n) % 3, [Path(f"{i}.png") for i in range(n)], [])


def _epoch(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_pipeline_mixes_training_batches_only_and_reproducibly():
    arrays = _arrays()
    mix = MixConfig(mixup=0.4, cutmix=1.0)
    x1, y1 = _epoch(make_dataset(arrays, 3, 8, training=True, augment=AugmentConfig.none(), mix=mix, seed=2))
    x2, y2 = _epoch(make_dataset(arrays, 3, 8, training=True, augment=AugmentConfig.none(), mix=mix, seed=2))
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert x1.shape == (20, 16, 16, 3) and x1.dtype == np.float32
    np.testing.assert_allclose(y1.sum(axis=1), 1.0, atol=1e-5)
    assert ((y1 > 0) & (y1 < 1)).any()  # soft labels
    _, y_eval = _epoch(make_dataset(arrays, 3, 8, training=False, mix=mix, seed=2))
    np.testing.assert_array_equal(y_eval, np.eye(3, dtype=np.float32)[arrays.labels])


def test_pipeline_with_tem_options_is_reproducible_and_in_range():
    arrays = _arrays()
    aug = AugmentConfig(rotation=180, rot90=True, fill_mode="reflect", gamma=0.3, blur_sigma=1.0, noise_std=0.05)
    a, _ = _epoch(make_dataset(arrays, 3, 8, training=True, augment=aug, seed=4))
    b, _ = _epoch(make_dataset(arrays, 3, 8, training=True, augment=aug, seed=4))
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and a.max() <= 255
    np.testing.assert_array_equal(a[..., 0], a[..., 2])  # still one gray channel, widened
    # The TEM draws come from their own seeds: with them at zero strength the batches are the
    # reference-config batches exactly.
    plain = AugmentConfig(rotation=180, rot90=True, fill_mode="reflect")
    c, _ = _epoch(make_dataset(arrays, 3, 8, training=True, augment=plain, seed=4))
    assert not np.array_equal(a, c)
    tiny = AugmentConfig(rotation=180, rot90=True, fill_mode="reflect", gamma=1e-9)
    d, _ = _epoch(make_dataset(arrays, 3, 8, training=True, augment=tiny, seed=4))
    np.testing.assert_allclose(d, c, atol=1e-3)


def test_keras_backend_ops_only():
    """The new ops run through keras.ops on any tensor type: a symbolic call builds."""
    inputs = keras.Input((16, 16, 1))
    out = TEMAugment(AugmentConfig(gamma=0.2, blur_sigma=1.0, noise_std=0.02))(inputs, training=True)
    assert tuple(out.shape) == (None, 16, 16, 1)

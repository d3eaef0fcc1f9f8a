"""tf.data input pipelines from the decoded uint8 cache (the only module that uses tf.data).

Why it is fast: the decoded split already sits in memory as one uint8 (N, H, W) array, so an
epoch is a shuffle of integer indices, one `gather` per batch, and one composed affine warp per
image on a single channel (`TEMAugment`) run by a parallel map over whole batches. Images are
widened to three channels only at the end, as the models expect (H, W, 3) float32 in 0..255.

Reproducibility: shuffling uses `seed`; augmentation noise comes from a stateless per-batch
seed drawn from `tf.data.Dataset.random(seed, rerandomize_each_iteration=True)`, so a fresh
dataset built with the same seed yields the same batches, each epoch differs, and the parallel
map cannot reorder random draws. The reference draws come first from that seed exactly as in
earlier releases; the TEM options' draws, the pixel noise and the mixup/cutmix draws come from
seeds folded out of it, so turning them on leaves the reference draws unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from virion.data.augment import (
    BASE_NOISE_DIM,
    MIX_DIM,
    NOISE_DIM,
    AugmentConfig,
    MixConfig,
    TEMAugment,
    mix_batch,
)
from virion.data.batch_checks import check_batch_size, check_images, check_split

if TYPE_CHECKING:  # pragma: no cover
    from virion.data.cache import SplitArrays

AUTOTUNE = tf.data.AUTOTUNE


def _to_model_input(gray):
    """(B, H, W[, 1]) grayscale → (B, H, W, 3) float32 0..255, the models' input contract."""
    gray = tf.cast(gray, tf.float32)
    if gray.shape.rank == 3:
        gray = gray[..., tf.newaxis]
    if gray.shape[-1] == 3:  # already replicated (decode_rgb output)
        return gray
    return tf.repeat(gray, 3, axis=-1)


def _beta(shape, alpha: float, seed):
    """Stateless Beta(alpha, alpha) draws as the ratio of two Gamma draws."""
    g1 = tf.random.stateless_gamma(shape, seed=seed, alpha=alpha)
    g2 = tf.random.stateless_gamma(shape, seed=tf.random.experimental.stateless_fold_in(seed, 1), alpha=alpha)
    return g1 / tf.maximum(g1 + g2, 1e-12)


def _mix_draws(batch, mix: MixConfig, seed):
    """Stateless per-batch draws for `mix_batch` (tf.data's parallel map stays reproducible)."""
    fold = tf.random.experimental.stateless_fold_in
    ones = tf.ones((batch,), tf.float32)
    lam_mixup = _beta((batch,), mix.mixup, fold(seed, 1)) if mix.mixup else ones
    lam_cutmix = _beta((batch,), mix.cutmix, fold(seed, 2)) if mix.cutmix else ones
    partner = tf.argsort(tf.random.stateless_uniform((batch,), seed=fold(seed, 3)))
    uniforms = tf.random.stateless_uniform((batch, MIX_DIM), seed=fold(seed, 4))
    return lam_mixup, lam_cutmix, partner, uniforms


def make_dataset(
    arrays: SplitArrays,
    num_classes: int,
    batch_size: int,
    *,
    training: bool,
    augment: AugmentConfig | dict | None = None,
    seed: int | None = 0,
    mix: MixConfig | dict | None = None,
) -> tf.data.Dataset:
    """Batches of (float32 (B, H, W, 3) in 0..255, float32 one-hot (B, C)) from a decoded split.

    training=True: reshuffled each epoch (seeded), augmented with `augment` (default: the
    reference's rotation/shift/flip; pass `AugmentConfig.none()` to switch it off), then mixed
    with `mix` (mixup/cutmix; default off), which makes the labels soft.
    training=False: file order, untouched pixels, last partial batch kept, so predictions line
    up with `arrays.files`. The dataset has a known cardinality: `len(ds)` batches per epoch.
    """
    images, labels, batch_size = check_split(arrays, num_classes, batch_size)
    if seed is None:  # explicitly unseeded: a fresh random run
        seed = int(np.random.default_rng().integers(2**31))
    seed = int(seed)

    n = len(images)
    # One copy into a TF tensor; each batch is then a single gather (no Python generator).
    image_table = tf.constant(images)
    onehot_table = tf.constant(np.eye(num_classes, dtype=np.float32)[labels])

    order = tf.data.Dataset.range(n)
    if training:
        order = order.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    batches = order.batch(batch_size, drop_remainder=False)

    def gather(idx):
        return tf.gather(image_table, idx), tf.gather(onehot_table, idx)

    if augment is None:
        augment = AugmentConfig()
    elif isinstance(augment, dict):
        augment = AugmentConfig.from_dict(augment)
    if isinstance(mix, dict):
        mix = MixConfig.from_dict(mix)
    use_mix = training and mix is not None and mix.enabled
    if not use_mix and (not training or not augment.enabled):

        def plain_batch(idx):
            x, y = gather(idx)
            return _to_model_input(x), y

        return batches.map(plain_batch, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)

    layer = TEMAugment(augment, seed=seed) if augment.enabled else None
    noise_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    fold = tf.random.experimental.stateless_fold_in

    def augment_batch(idx, noise_seed):
        x, y = gather(idx)
        x = x[..., tf.newaxis]
        rows = tf.shape(idx)[0]
        batch_seed = tf.stack([noise_seed, tf.constant(seed, tf.int64)])
        if layer is not None:
            noise = tf.random.stateless_uniform((rows, BASE_NOISE_DIM), seed=batch_seed)
            extra_shape = (rows, NOISE_DIM - BASE_NOISE_DIM)
            extra = (
                tf.random.stateless_uniform(extra_shape, seed=fold(batch_seed, 1))
                if augment.tem
                else tf.zeros(extra_shape, tf.float32)
            )
            pixel_noise = (
                tf.random.stateless_normal(tf.shape(x), seed=fold(batch_seed, 2)) if augment.noise_std else None
            )
            x = layer(x, training=True, noise=tf.concat([noise, extra], axis=1), pixel_noise=pixel_noise)
        if use_mix:  # on the single channel, before widening: a third of the work
            x, y = mix_batch(x, y, mix, *_mix_draws(rows, mix, fold(batch_seed, 3)))
        return _to_model_input(x), y

    ds = tf.data.Dataset.zip((batches, noise_seeds)).map(augment_batch, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def make_predict_dataset(images, batch_size: int) -> tf.data.Dataset:
    """Batches of float32 (B, H, W, 3) in 0..255 from uint8 (N, H, W), in order, no labels.

    Also takes (N, H, W, 1) and the replicated (N, H, W, 3) that `decode_rgb` gives.
    """
    images = check_images(images, "images to predict", allow_channels=True)
    batch_size = check_batch_size(batch_size)
    table = tf.constant(images)
    ds = tf.data.Dataset.range(len(images)).batch(batch_size)
    ds = ds.map(lambda idx: _to_model_input(tf.gather(table, idx)), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Batches in one pass (the last partial batch counts), as `len(make_dataset(...))` gives."""
    return -(-int(num_images) // check_batch_size(batch_size))

"""Training-time augmentation for grayscale TEM crops: one composed affine warp per image.

The reference pipeline (Keras 2 `ImageDataGenerator`) rotated, shifted and flipped each image in
separate passes on three channels. Stock Keras layers (RandomRotation, RandomTranslation,
RandomFlip) still make one pass each. Here every geometric change (rotation, shift, zoom, flips,
90° turns) is folded into ONE 3×3 matrix per image and applied in ONE call to
`keras.ops.image.affine_transform` on a single channel, which is where almost all the time went.

After the warp come the intensity changes, each per image: Gaussian blur (one separable
pass, reflect padding), gamma, brightness/contrast, Gaussian noise. `mix_batch` mixes whole
training batches (mixup / cutmix) on (images, one-hot labels).

Only `keras.ops` / `keras.random` are used, so the layer can also sit inside a model.
"""

from __future__ import annotations

import math

import keras

from virion.data.augment_config import (  # noqa: F401 - re-export
    FILL_MODES,
    INTERPOLATIONS,
    AugmentConfig,
    MixConfig,
)

# Columns of the per-image uniform noise matrix, one random draw per column. The first
# BASE_NOISE_DIM are the reference's draws (unchanged, so default runs stay reproducible);
# the TEM options use the last three.
_ANGLE, _SHIFT_X, _SHIFT_Y, _ZOOM, _HFLIP, _VFLIP, _ROT90, _BRIGHT, _CONTRAST = range(9)
_GAMMA, _BLUR, _NOISE = 9, 10, 11
BASE_NOISE_DIM = 9
NOISE_DIM = 12


def affine_matrices(angle, shift_x, shift_y, scale, flip_x, flip_y, quarter_turns, height, width):
    """Per-image output→input transforms, shape (B, 8), for `keras.ops.image.affine_transform`.

    Forward (what happens to the picture, about the image centre): flip, turn by
    `quarter_turns`×90° then `angle` radians counter-clockwise as displayed (row 0 on top),
    scale the content by `scale`, then shift by (`shift_x`, `shift_y`) pixels (right, down).
    affine_transform wants the inverse, so we build
    p_in = c + F · R⁻¹ · (p_out − c − t) / s, with pixel centres at integers and
    c = ((W−1)/2, (H−1)/2). Quarter turns use exact cos/sin so 90° turns are lossless.
    All arguments are (B,) tensors; flips are ±1 floats.
    """
    ops = keras.ops
    # Exact cos/sin of k·90° by table lookup (k in 0..3), then the free angle on top.
    k = ops.cast(quarter_turns, "int32") % 4
    cos_k = ops.take(ops.convert_to_tensor([1.0, 0.0, -1.0, 0.0]), k)
    sin_k = ops.take(ops.convert_to_tensor([0.0, 1.0, 0.0, -1.0]), k)
    cos_a, sin_a = ops.cos(angle), ops.sin(angle)
    cos_t = cos_a * cos_k - sin_a * sin_k
    sin_t = sin_a * cos_k + cos_a * sin_k
    inv_s = 1.0 / scale
    a00 = flip_x * cos_t * inv_s
    a01 = -flip_x * sin_t * inv_s
    a10 = flip_y * sin_t * inv_s
    a11 = flip_y * cos_t * inv_s
    cx = (ops.cast(width, "float32") - 1.0) / 2.0
    cy = (ops.cast(height, "float32") - 1.0) / 2.0
    ox, oy = cx + shift_x, cy + shift_y
    a02 = cx - (a00 * ox + a01 * oy)
    a12 = cy - (a10 * ox + a11 * oy)
    zeros = ops.zeros_like(a00)
    return ops.stack([a00, a01, a02, a10, a11, a12, zeros, zeros], axis=1)


@keras.saving.register_keras_serializable(package="virion")
class TEMAugment(keras.layers.Layer):
    """Random rotation, shift, zoom, flips and 90° turns as one warp per image, then
    brightness/contrast. Works on (B, H, W, C) (use C=1 for grayscale and widen afterwards);
    returns float32 in 0..255. Identity unless `training=True`.

    Args:
        config: an `AugmentConfig` or its dict (default: the reference settings).
        seed: seeds the layer's own `keras.random.SeedGenerator`.

    `call(images, training=None, noise=None)`: `noise` is an optional (B, 9) tensor of uniform
    [0, 1) draws that replaces the seed generator; `virion.data.pipeline` passes stateless,
    per-batch noise so that tf.data's parallel map stays reproducible.
    """

    def __init__(self, config: AugmentConfig | dict | None = None, seed: int | None = None, **kwargs):
        # Pixels stay float32 under a mixed-precision policy: the warp kernel wants float32 and
        # the next layer casts anyway.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if config is None:
            config = AugmentConfig()
        elif isinstance(config, dict):
            config = AugmentConfig.from_dict(config)
        self.config = config
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = False

    def sample_noise(self, batch_size):
        """Uniform [0, 1) draws, one row of NOISE_DIM per image, from the layer's seed generator.

        The TEM columns are drawn (a second draw) only when a TEM option is on, so the default
        configuration draws exactly what earlier releases drew.
        """
        base = keras.random.uniform((batch_size, BASE_NOISE_DIM), seed=self.seed_generator)
        if self.config.tem:
            extra = keras.random.uniform((batch_size, NOISE_DIM - BASE_NOISE_DIM), seed=self.seed_generator)
        else:
            extra = keras.ops.zeros((batch_size, NOISE_DIM - BASE_NOISE_DIM), "float32")
        return keras.ops.concatenate([base, extra], axis=1)

    def call(self, images, training=None, noise=None, pixel_noise=None):
        ops = keras.ops
        cfg = self.config
        if not training or not cfg.enabled:
            return ops.cast(images, "float32")
        shape = ops.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]
        if cfg.noise_std and pixel_noise is None:
            if noise is not None:
                raise ValueError(
                    "TEMAugment: noise_std > 0 with explicit `noise` needs `pixel_noise` too "
                    "(standard normal, the shape of the images)"
                )
            pixel_noise = keras.random.normal(shape, seed=self.seed_generator)
        if noise is None:
            noise = self.sample_noise(batch)
        noise = ops.cast(noise, "float32")
        # Warp in float32: TF's uint8 kernel truncates the bilinear result (a -0.5 grey-level
        # bias), and on CPU float32 measured as fast as uint8 for one channel.
        images = ops.cast(images, "float32")

        def spread(column, amount):  # uniform in [-amount, amount]
            return (2.0 * noise[:, column] - 1.0) * amount

        if cfg.geometric:
            one = ops.ones_like(noise[:, 0])
            angle = spread(_ANGLE, math.radians(cfg.rotation))
            shift_x = spread(_SHIFT_X, cfg.shift) * ops.cast(width, "float32")
            shift_y = spread(_SHIFT_Y, cfg.shift) * ops.cast(height, "float32")
            scale = one + spread(_ZOOM, cfg.zoom)
            flip_x = ops.where(noise[:, _HFLIP] < 0.5, -one, one) if cfg.horizontal_flip else one
            flip_y = ops.where(noise[:, _VFLIP] < 0.5, -one, one) if cfg.vertical_flip else one
            turns = ops.floor(noise[:, _ROT90] * 4.0) if cfg.rot90 else 0.0 * one
            matrices = affine_matrices(angle, shift_x, shift_y, scale, flip_x, flip_y, turns, height, width)
            images = ops.image.affine_transform(
                images,
                matrices,
                interpolation=cfg.interpolation,
                fill_mode=cfg.fill_mode,
                fill_value=0,
                data_format="channels_last",
            )
        if cfg.blur_sigma:
            images = gaussian_blur(images, noise[:, _BLUR] * cfg.blur_sigma, cfg.blur_sigma)
        if cfg.gamma:
            exponent = ops.reshape(ops.exp(spread(_GAMMA, math.log1p(cfg.gamma))), (-1, 1, 1, 1))
            images = 255.0 * ops.power(ops.clip(images / 255.0, 0.0, 1.0), exponent)
        if cfg.photometric:
            # Contrast about each image's own mean keeps the stain background level; brightness
            # is an additive offset in grey levels. Clip: a uint8 model input must stay in 0..255.
            mean = ops.mean(images, axis=(1, 2, 3), keepdims=True)
            factor = ops.reshape(1.0 + spread(_CONTRAST, cfg.contrast), (-1, 1, 1, 1))
            offset = ops.reshape(spread(_BRIGHT, cfg.brightness * 255.0), (-1, 1, 1, 1))
            images = ops.clip((images - mean) * factor + mean + offset, 0.0, 255.0)
        if cfg.noise_std:
            std = ops.reshape(noise[:, _NOISE] * (cfg.noise_std * 255.0), (-1, 1, 1, 1))
            images = ops.clip(images + std * ops.cast(pixel_noise, "float32"), 0.0, 255.0)
        return images

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def compute_output_spec(self, images, training=None, noise=None, pixel_noise=None):
        return keras.KerasTensor(images.shape, dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update({"config": self.config.to_dict(), "seed": self.seed})
        return config


def gaussian_blur(images, sigma, max_sigma: float):
    """Blur each image of (B, H, W, C) float32 with its own Gaussian `sigma` (B,) pixels.

    Separable, r = ceil(3 * max_sigma) (less for tiny images), reflect padding so borders keep
    their level; sigma 0 is the identity (a one-tap kernel). The batch is folded into the
    channels so that each image's kernel is one depthwise convolution (twice as fast as shifted
    sums on CPU).
    """
    ops = keras.ops
    radius = math.ceil(3.0 * float(max_sigma))
    static = images.shape
    for dim in (static[1], static[2]):
        if isinstance(dim, int):
            radius = min(radius, dim - 1)
    if radius <= 0:
        return images
    taps = 2 * radius + 1
    shape = ops.shape(images)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    offsets = ops.cast(ops.arange(-radius, radius + 1), "float32")
    s = ops.maximum(ops.cast(sigma, "float32"), 1e-3)[:, None]
    weights = ops.exp(-0.5 * ops.square(offsets[None, :] / s))
    weights = weights / ops.sum(weights, axis=1, keepdims=True)  # (B, taps)
    weights = ops.transpose(ops.repeat(weights, channels, axis=0))  # (taps, B*C), image-major
    x = ops.reshape(ops.transpose(images, (1, 2, 0, 3)), (1, height, width, -1))  # (1, H, W, B*C)
    x = ops.pad(x, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="reflect")
    x = ops.depthwise_conv(x, ops.reshape(weights, (1, taps, -1, 1)), padding="valid")
    x = ops.depthwise_conv(x, ops.reshape(weights, (taps, 1, -1, 1)), padding="valid")
    return ops.transpose(ops.reshape(x, (height, width, batch, channels)), (2, 0, 1, 3))


# --------------------------------------------------------------------------------------------
# mixup / cutmix on whole batches

MIX_DIM = 4  # uniform draws per image: apply?, cutmix instead of mixup?, box centre y, box centre x
_MIX_APPLY, _MIX_WHICH, _MIX_BOX_Y, _MIX_BOX_X = range(MIX_DIM)


def mix_batch(images, labels, config: MixConfig, lam_mixup, lam_cutmix, partner, uniforms):
    """Mix each image (and its one-hot label) with a partner image of the same batch.

    Deterministic given its draws, so any random source fits (`sample_mix` below for a
    `keras.random` seed, stateless per-batch draws in `virion.data.pipeline`):
    lam_mixup, lam_cutmix: (B,) Beta draws, the share of each image's own content;
    partner: (B,) int, the index of the image mixed in (a permutation of the batch);
    uniforms: (B, MIX_DIM) uniform [0, 1) draws.
    mixup blends the two images; cutmix pastes a box of the partner covering 1 - lam of the
    image, and the label weight follows the box's true (clipped, whole-pixel) area.
    Returns (images float32, labels float32). For training batches only.
    """
    ops = keras.ops
    images = ops.cast(images, "float32")
    labels = ops.cast(labels, "float32")
    if not config.enabled:
        return images, labels
    shape = ops.shape(images)
    height, width = ops.cast(shape[1], "float32"), ops.cast(shape[2], "float32")
    u = ops.cast(uniforms, "float32")
    apply = u[:, _MIX_APPLY] < config.mix_prob
    if config.mixup and config.cutmix:
        cut = u[:, _MIX_WHICH] < 0.5
    else:
        cut = ops.full_like(apply, bool(config.cutmix))
    lam = ops.where(cut, ops.cast(lam_cutmix, "float32"), ops.cast(lam_mixup, "float32"))
    lam = ops.where(apply, ops.clip(lam, 0.0, 1.0), 1.0)
    other = ops.take(images, partner, axis=0)
    other_labels = ops.take(labels, partner, axis=0)

    # cutmix box, whole pixels: centre uniform over the image, sides sqrt(1 - lam) of the image's.
    side = ops.sqrt(1.0 - lam)
    cy, cx = u[:, _MIX_BOX_Y] * height, u[:, _MIX_BOX_X] * width
    cut_h, cut_w = ops.round(side * height), ops.round(side * width)
    top, left = ops.floor(cy - cut_h / 2.0), ops.floor(cx - cut_w / 2.0)
    y0, y1 = ops.clip(top, 0.0, height), ops.clip(top + cut_h, 0.0, height)
    x0, x1 = ops.clip(left, 0.0, width), ops.clip(left + cut_w, 0.0, width)
    rows = ops.cast(ops.arange(shape[1]), "float32")[None, :, None, None]
    cols = ops.cast(ops.arange(shape[2]), "float32")[None, None, :, None]

    def per_image(v):
        return ops.reshape(v, (-1, 1, 1, 1))

    inside = (rows >= per_image(y0)) & (rows < per_image(y1)) & (cols >= per_image(x0)) & (cols < per_image(x1))
    box_lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
    use_box = cut & apply
    box = per_image(use_box) & inside
    blend = per_image(lam) * images + per_image(1.0 - lam) * other
    mixed = ops.where(box, other, ops.where(per_image(use_box), images, blend))
    weight = ops.where(use_box, box_lam, lam)[:, None]
    return mixed, weight * labels + (1.0 - weight) * other_labels


def sample_mix(batch_size: int, config: MixConfig, seed=None):
    """Draws for `mix_batch` from `keras.random` (seed: int, SeedGenerator or None)."""
    ops, rnd = keras.ops, keras.random
    ones = ops.ones((batch_size,), "float32")
    lam_mixup = rnd.beta((batch_size,), config.mixup, config.mixup, seed=seed) if config.mixup else ones
    lam_cutmix = rnd.beta((batch_size,), config.cutmix, config.cutmix, seed=seed) if config.cutmix else ones
    partner = ops.argsort(rnd.uniform((batch_size,), seed=seed))
    uniforms = rnd.uniform((batch_size, MIX_DIM), seed=seed)
    return lam_mixup, lam_cutmix, partner, uniforms


def random_mix_batch(images, labels, config: MixConfig | dict, seed=None):
    """`mix_batch` with draws from `keras.random`: the one-call form for eager use and tests."""
    if isinstance(config, dict):
        config = MixConfig.from_dict(config)
    if not config.enabled:
        return keras.ops.cast(images, "float32"), keras.ops.cast(labels, "float32")
    batch = int(keras.ops.shape(images)[0])
    return mix_batch(images, labels, config, *sample_mix(batch, config, seed))

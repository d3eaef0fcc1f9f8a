"""Training-time augmentation for grayscale TEM crops: one composed affine warp per image.

The reference pipeline (Keras 2 `ImageDataGenerator`) rotated, shifted and flipped each image in
separate passes on three channels. Stock Keras layers (RandomRotation, RandomTranslation,
RandomFlip) still make one pass each. Here every geometric change (rotation, shift, zoom, flips,
90° turns) is folded into ONE 3×3 matrix per image and applied in ONE call to
`keras.ops.image.affine_transform` on a single channel, which is where almost all the time went.

Only `keras.ops` / `keras.random` are used, so the layer can also sit inside a model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import keras

from virion.errors import VirionError

FILL_MODES = ("nearest", "reflect", "constant", "wrap")
INTERPOLATIONS = ("bilinear", "nearest")

# Columns of the per-image uniform noise matrix, one random draw per column.
_ANGLE, _SHIFT_X, _SHIFT_Y, _ZOOM, _HFLIP, _VFLIP, _ROT90, _BRIGHT, _CONTRAST = range(9)
NOISE_DIM = 9


@dataclass
class AugmentConfig:
    """What the training pipeline may do to an image; defaults are the reference's settings.

    rotation: max degrees either way (reference: 20). shift: max fraction of width/height
    either way (reference: 0.2). zoom: content scale drawn from [1 - zoom, 1 + zoom].
    brightness: max shift as a fraction of 255. contrast: factor drawn from
    [1 - contrast, 1 + contrast] around each image's mean. rot90: random quarter turns, valid
    for TEM since particles have no "up". fill_mode "nearest" matches ImageDataGenerator's
    default; "reflect" avoids the edge streaks that nearest leaves after large shifts.
    interpolation "bilinear" matches the reference (scipy order 1).
    """

    rotation: float = 20.0
    shift: float = 0.2
    horizontal_flip: bool = True
    vertical_flip: bool = False
    rot90: bool = False
    zoom: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    fill_mode: str = "nearest"
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def none(cls) -> "AugmentConfig":
        """No augmentation at all (the layer becomes the identity)."""
        return cls(rotation=0.0, shift=0.0, horizontal_flip=False, vertical_flip=False,
                   rot90=False, zoom=0.0, brightness=0.0, contrast=0.0)

    def validate(self) -> None:
        """Reject values that would silently produce garbage images."""
        def bad(option: str, value: Any, fix: str) -> VirionError:
            return VirionError(f"augmentation option {option}={value!r} is invalid: {fix}")

        for name in ("rotation", "shift", "zoom", "brightness", "contrast"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(name, value, "give a finite number")
            setattr(self, name, float(value))
        if not 0.0 <= self.rotation <= 180.0:
            raise bad("rotation", self.rotation, "use degrees between 0 and 180")
        if not 0.0 <= self.shift < 1.0:
            raise bad("shift", self.shift, "use a fraction of the image size in [0, 1)")
        if not 0.0 <= self.zoom < 1.0:
            raise bad("zoom", self.zoom, "use a fraction in [0, 1), e.g. 0.1 for ±10%")
        if not 0.0 <= self.brightness <= 1.0:
            raise bad("brightness", self.brightness, "use a fraction of 255 in [0, 1]")
        if not 0.0 <= self.contrast < 1.0:
            raise bad("contrast", self.contrast, "use a fraction in [0, 1), e.g. 0.2 for ±20%")
        for name in ("horizontal_flip", "vertical_flip", "rot90"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, getattr(self, name), "use true or false")
        if self.fill_mode not in FILL_MODES:
            raise bad("fill_mode", self.fill_mode, f"choose one of {', '.join(FILL_MODES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise bad("interpolation", self.interpolation, f"choose one of {', '.join(INTERPOLATIONS)}")

    @property
    def geometric(self) -> bool:
        """True when any warp is drawn (otherwise the affine pass is skipped)."""
        return bool(self.rotation or self.shift or self.zoom or self.horizontal_flip
                    or self.vertical_flip or self.rot90)

    @property
    def photometric(self) -> bool:
        return bool(self.brightness or self.contrast)

    @property
    def enabled(self) -> bool:
        return self.geometric or self.photometric

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "AugmentConfig":
        """Build from a config file / metadata dict; unknown keys are a user mistake, not ignored."""
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise VirionError(f"unknown augmentation option(s) {', '.join(unknown)}: "
                              f"use only {', '.join(sorted(known))}")
        return cls(**data)


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
        """Uniform [0, 1) draws, one row of NOISE_DIM per image, from the layer's seed generator."""
        return keras.random.uniform((batch_size, NOISE_DIM), seed=self.seed_generator)

    def call(self, images, training=None, noise=None):
        ops = keras.ops
        cfg = self.config
        if not training or not cfg.enabled:
            return ops.cast(images, "float32")
        shape = ops.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]
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
            turns = (ops.floor(noise[:, _ROT90] * 4.0) if cfg.rot90 else 0.0 * one)
            matrices = affine_matrices(angle, shift_x, shift_y, scale, flip_x, flip_y, turns,
                                       height, width)
            images = ops.image.affine_transform(
                images, matrices, interpolation=cfg.interpolation, fill_mode=cfg.fill_mode,
                fill_value=0, data_format="channels_last")
        if cfg.photometric:
            # Contrast about each image's own mean keeps the stain background level; brightness
            # is an additive offset in grey levels. Clip: a uint8 model input must stay in 0..255.
            mean = ops.mean(images, axis=(1, 2, 3), keepdims=True)
            factor = ops.reshape(1.0 + spread(_CONTRAST, cfg.contrast), (-1, 1, 1, 1))
            offset = ops.reshape(spread(_BRIGHT, cfg.brightness * 255.0), (-1, 1, 1, 1))
            images = ops.clip((images - mean) * factor + mean + offset, 0.0, 255.0)
        return images

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def compute_output_spec(self, images, training=None, noise=None):
        return keras.KerasTensor(images.shape, dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update({"config": self.config.to_dict(), "seed": self.seed})
        return config

"""The augmentation settings as a plain dataclass, importable without Keras.

The training config, `virion train --help` and `--print-config` read these defaults and checks;
the Keras layer that applies them lives in `virion.data.augment` (which re-exports this class).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from virion.errors import VirionError

FILL_MODES = ("nearest", "reflect", "constant", "wrap")
INTERPOLATIONS = ("bilinear", "nearest")
MAX_BLUR_SIGMA = 5.0


@dataclass
class AugmentConfig:
    """What the training pipeline may do to an image; defaults are the reference's settings.

    rotation: max degrees either way (reference: 20). shift: max fraction of width/height
    either way (reference: 0.2). zoom: content scale drawn from [1 - zoom, 1 + zoom].
    brightness: max shift as a fraction of 255. contrast: factor drawn from
    [1 - contrast, 1 + contrast] around each image's mean. rot90: random quarter turns, valid
    for TEM since particles have no "up". fill_mode "nearest" matches ImageDataGenerator's
    default; "reflect" avoids the edge streaks that nearest leaves after large shifts.
    interpolation "bilinear" matches the reference (scipy order 1). rotation=180 gives full
    360-degree rotations (best with fill_mode "reflect").

    TEM options, all off by default (the reference had none): gamma: exponent drawn
    log-uniformly from [1/(1 + gamma), 1 + gamma] (exposure/stain response). blur_sigma: Gaussian
    blur with sigma drawn from [0, blur_sigma] pixels (defocus). noise_std: Gaussian noise whose
    standard deviation is drawn from [0, noise_std] x 255 (shot noise).
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
    gamma: float = 0.0
    blur_sigma: float = 0.0
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation at all (the layer becomes the identity)."""
        return cls(
            rotation=0.0,
            shift=0.0,
            horizontal_flip=False,
            vertical_flip=False,
            rot90=False,
            zoom=0.0,
            brightness=0.0,
            contrast=0.0,
            gamma=0.0,
            blur_sigma=0.0,
            noise_std=0.0,
        )

    def validate(self) -> None:
        """Reject values that would silently produce garbage images."""

        def bad(option: str, value: Any, fix: str) -> VirionError:
            return VirionError(f"augmentation option {option}={value!r} is invalid: {fix}")

        for name in ("rotation", "shift", "zoom", "brightness", "contrast", "gamma", "blur_sigma", "noise_std"):
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
        if not 0.0 <= self.gamma <= 1.0:
            raise bad("gamma", self.gamma, "use a value in [0, 1], e.g. 0.2 for exponents 0.83..1.2")
        if not 0.0 <= self.blur_sigma <= MAX_BLUR_SIGMA:
            raise bad("blur_sigma", self.blur_sigma, f"use pixels in [0, {MAX_BLUR_SIGMA:g}], e.g. 1.0")
        if not 0.0 <= self.noise_std <= 0.5:
            raise bad("noise_std", self.noise_std, "use a fraction of 255 in [0, 0.5], e.g. 0.03")
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
        return bool(
            self.rotation or self.shift or self.zoom or self.horizontal_flip or self.vertical_flip or self.rot90
        )

    @property
    def photometric(self) -> bool:
        """Brightness/contrast (the reference's photometric pass)."""
        return bool(self.brightness or self.contrast)

    @property
    def tem(self) -> bool:
        """True when any TEM option (gamma, blur, noise) is on; they need NOISE_DIM draws."""
        return bool(self.gamma or self.blur_sigma or self.noise_std)

    @property
    def enabled(self) -> bool:
        return self.geometric or self.photometric or self.tem

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> AugmentConfig:
        """Build from a config file / metadata dict; unknown keys are a user mistake, not ignored."""
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise VirionError(
                f"unknown augmentation option(s) {', '.join(unknown)}: use only {', '.join(sorted(known))}"
            )
        return cls(**data)


@dataclass
class MixConfig:
    """Batch mixing for training: mixup and/or cutmix on (images, one-hot) batches; off by default.

    mixup / cutmix: the Beta(alpha, alpha) parameter of each (0 = off; 0.2-1.0 are usual).
    When both are on, each image uses one of them at random (half each). mix_prob: the chance
    that an image is mixed at all.
    """

    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0

    def __post_init__(self) -> None:
        for name in ("mixup", "cutmix", "mix_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise VirionError(f"mixing option {name}={value!r} is invalid: give a finite number")
            setattr(self, name, float(value))
        for name in ("mixup", "cutmix"):
            if not 0.0 <= getattr(self, name) <= 10.0:
                raise VirionError(
                    f"mixing option {name}={getattr(self, name)!r} is invalid: use a Beta alpha "
                    f"in [0, 10] (0 = off), e.g. 0.2"
                )
        if not 0.0 <= self.mix_prob <= 1.0:
            raise VirionError(f"mixing option mix_prob={self.mix_prob!r} is invalid: use a probability in [0, 1]")

    @property
    def enabled(self) -> bool:
        return bool((self.mixup or self.cutmix) and self.mix_prob)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> MixConfig:
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise VirionError(f"unknown mixing option(s) {', '.join(unknown)}: use only {', '.join(sorted(known))}")
        return cls(**data)

"""Every training setting in one dataclass, with the reference defaults.

Settings come from three places, later wins: these defaults, a TOML file (`--config`), the
command line. The resolved config is written into the run folder so a run can be reproduced
(and resumed) from its folder alone.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virion.errors import VirionError

try:  # the registry is the one place that knows the model names
    from virion.models.registry import MODEL_NAMES
except ImportError:  # pragma: no cover - while the models module is being written
    MODEL_NAMES = ("resnet50", "xception", "densenet121")

# AugmentConfig's fields and defaults (docs/architecture.md); read from the class when it exists.
_AUGMENT_DEFAULTS: dict[str, Any] = {
    "rotation": 20.0, "shift": 0.2, "horizontal_flip": True, "vertical_flip": False,
    "rot90": False, "zoom": 0.0, "brightness": 0.0, "contrast": 0.0,
}
try:
    from virion.data.augment import AugmentConfig as _AugmentConfig

    _AUGMENT_DEFAULTS = dataclasses.asdict(_AugmentConfig())
except ImportError:  # pragma: no cover
    _AugmentConfig = None

LR_SCHEDULES = ("none", "cosine", "plateau")
CLASS_WEIGHTS = ("none", "balanced")
CHECKPOINT_METRICS = ("val_accuracy", "val_macro_f1")
AUTO_FLAGS = ("auto", True, False)


@dataclass
class TrainConfig:
    """All settings of `virion train`; defaults are the reference paper's settings."""

    data: str | None = None
    models: list[str] = field(default_factory=lambda: list(MODEL_NAMES))
    out: str | None = None
    input_size: int = 128
    batch_size: int = 64
    epochs: int = 20
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    loss: str = "categorical_crossentropy"
    seed: int = 0
    weights: str = "imagenet"  # imagenet | none | path to a weights file
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    classes: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    include_subfolders: bool = False
    stretch: tuple[float, float] | None = (0.5, 99.5)  # None = plain linear scaling by dtype
    strict: bool = False
    augment: dict[str, Any] = field(default_factory=lambda: dict(_AUGMENT_DEFAULTS))
    early_stopping: int | None = None  # patience in epochs; None = off
    lr_schedule: str = "none"
    class_weight: str = "none"
    checkpoint_metric: str = "val_accuracy"
    fine_tune_epochs: int = 0
    unfreeze: float | str = 0.3  # fraction of the base, or the name of the first layer to train
    fine_tune_lr: float = 1e-5
    feature_cache: int | None = None  # None = off; K = 0 plain features, K >= 1 augmented views
    mixed_precision: str | bool = "auto"  # auto: float16 with a GPU, off on the CPU; "bfloat16": mixed bf16
    xla: str | bool = "auto"  # auto: on with a GPU, off on the CPU (2.3x slower there)
    tensorboard: bool = False
    overwrite: bool = False

    # ---------------------------------------------------------------- building
    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a plain dict (TOML, config.json); unknown keys are a user mistake."""
        return cls().merged(values, source=source, skip_none=False)

    def merged(self, overrides: dict[str, Any], source: str = "command line", skip_none: bool = True) -> TrainConfig:
        """A copy with `overrides` applied; with `skip_none`, None means "not given" (argparse)."""
        known = {f.name for f in dataclasses.fields(self)}
        values = dataclasses.asdict(self)
        for key, value in overrides.items():
            key = key.replace("-", "_")
            if key not in known:
                raise VirionError(f"{source}: unknown setting '{key}'; known settings: "
                                  f"{', '.join(sorted(known))}")
            if value is None and skip_none:
                continue
            if key == "augment" and value is not None:
                value = _merge_augment(values["augment"], value, source)
            values[key] = value
        config = TrainConfig(**values)
        config._normalize(source)
        return config

    def _normalize(self, source: str) -> None:
        """Coerce TOML/JSON spellings (lists, "off") and check every choice once, here."""
        if isinstance(self.models, str):
            self.models = [self.models]
        self.models = list(self.models)
        for name in self.models:
            if name not in MODEL_NAMES:
                raise VirionError(f"{source}: unknown model '{name}' in 'models'; "
                                  f"choose from {', '.join(MODEL_NAMES)}")
        if not self.models:
            raise VirionError(f"{source}: 'models' is empty; name at least one of {', '.join(MODEL_NAMES)}")
        if self.stretch in ("linear", "none", False):
            self.stretch = None
        if self.stretch is not None:
            low, high = (float(v) for v in self.stretch)
            if not 0 <= low < high <= 100:
                raise VirionError(f"{source}: 'stretch' must be two percentiles 0 <= LOW < HIGH <= 100, "
                                  f"got {self.stretch}")
            self.stretch = (low, high)
        if self.early_stopping in (0, "off", "none", False):
            self.early_stopping = None
        if self.feature_cache in ("off", "none", False):
            self.feature_cache = None
        if self.feature_cache is not None and int(self.feature_cache) < 0:
            raise VirionError(f"{source}: 'feature_cache' must be 'off' or a number of views >= 0")
        if self.classes is not None:
            self.classes = list(self.classes)
        self.exclude = list(self.exclude)
        if isinstance(self.unfreeze, str):
            try:
                self.unfreeze = float(self.unfreeze)
            except ValueError:
                pass  # a layer name
        if isinstance(self.unfreeze, float) and not 0 <= self.unfreeze <= 1:
            raise VirionError(f"{source}: 'unfreeze' as a fraction must be within 0..1, got {self.unfreeze}")
        for key, choices in (("lr_schedule", LR_SCHEDULES), ("class_weight", CLASS_WEIGHTS),
                             ("checkpoint_metric", CHECKPOINT_METRICS),
                             ("mixed_precision", AUTO_FLAGS + ("bfloat16",)), ("xla", AUTO_FLAGS),
                             ("optimizer", ("adam",)), ("loss", ("categorical_crossentropy",))):
            if getattr(self, key) not in choices:
                raise VirionError(f"{source}: '{key}' must be one of {', '.join(map(str, choices))}, "
                                  f"got {getattr(self, key)!r}")
        for key in ("input_size", "batch_size", "epochs"):
            if int(getattr(self, key)) < 1:
                raise VirionError(f"{source}: '{key}' must be a positive integer")
        if self.fine_tune_epochs < 0:
            raise VirionError(f"{source}: 'fine_tune_epochs' must be >= 0")
        if not 0 < self.val_fraction < 1 or not 0 <= self.test_fraction < 1:
            raise VirionError(f"{source}: 'val_fraction' must be within (0, 1) and 'test_fraction' within [0, 1)")

    # ---------------------------------------------------------------- using
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (config.json); `from_dict(to_dict())` gives the same config."""
        values = dataclasses.asdict(self)
        values["stretch"] = list(self.stretch) if self.stretch is not None else None
        return values

    def augment_config(self):
        """The data layer's AugmentConfig for these settings."""
        from virion.data.augment import AugmentConfig

        return AugmentConfig(**self.augment)

    def use_gpu_speedups(self, flag: str | bool) -> bool:
        """Resolve an "auto" flag: on only where a GPU is visible."""
        if flag == "auto":
            return gpu_available()
        return bool(flag)


def _merge_augment(current: dict[str, Any], value: Any, source: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise VirionError(f"{source}: 'augment' must be a table of {', '.join(_AUGMENT_DEFAULTS)}")
    merged = dict(current)
    for key, v in value.items():
        if key not in _AUGMENT_DEFAULTS:
            raise VirionError(f"{source}: unknown setting 'augment.{key}'; known: {', '.join(_AUGMENT_DEFAULTS)}")
        if v is not None:
            merged[key] = v
    return merged


def gpu_available() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def load_config(toml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the TOML file, then `overrides` (the command line wins)."""
    config = TrainConfig()
    if toml_path is not None:
        path = Path(toml_path)
        try:
            with path.open("rb") as fh:
                values = tomllib.load(fh)
        except FileNotFoundError:
            raise VirionError(f"{path}: config file not found; check the --config path") from None
        except tomllib.TOMLDecodeError as exc:
            raise VirionError(f"{path}: not valid TOML ({exc}); fix the file") from None
        config = config.merged(values, source=str(path))
    if overrides:
        config = config.merged(overrides, source="command line")
    return config

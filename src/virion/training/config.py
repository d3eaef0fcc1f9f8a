"""Every training setting in one dataclass: default, help text, allowed values and CLI flag together.

Settings come from four places, later wins: these defaults, a named preset (TOML file shipped in
`virion/training/presets/`, `reference` by default), a TOML file (`--config`), the command line.
`virion train`'s options are generated from the field metadata below, so a new setting is one
edit here. `validate()` checks every value before any data is read and names the key, the value
and what is expected. This module imports no backend (TensorFlow/Keras) so `--help` stays fast.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import textwrap
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from virion.backend import BACKENDS
from virion.data.augment_config import FILL_MODES, AugmentConfig, MixConfig
from virion.errors import VirionError
from virion.models.catalog import DEFAULT_MODELS, MIN_INPUT_SIZE, MODEL_NAMES, SCRATCH_MODELS

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser as the back-port package (declared in pyproject.toml)
    import tomli as tomllib

LR_SCHEDULES = ("none", "cosine", "plateau")
CLASS_WEIGHTS = ("none", "balanced", "sqrt")
CHECKPOINT_METRICS = ("val_accuracy", "val_macro_f1", "last")
OPTIMIZERS = ("adam", "adamw", "sgd")
AUTO_FLAGS = ("auto", True, False)
DEFAULT_PRESET = "reference"
# keras.optimizers.AdamW's own default, used when `optimizer = "adamw"` and no weight_decay is set.
ADAMW_DEFAULT_WEIGHT_DECAY = 0.004
MAX_EPOCHS = 100_000
MAX_INPUT_SIZE = 4096
MAX_LEARNING_RATE = 10.0

_AUGMENT_DEFAULTS: dict[str, Any] = dataclasses.asdict(AugmentConfig())

# Metadata keys of each field: help, flag (None = not a CLI option), metavar, group, kind, choices,
# low/high (inclusive unless low_open/high_open), aliases ((flag, constant, help), ...).
# kind: int | float | str | bool | list | path | choice | special (own coercion in _COERCE).


def setting(
    default: Any = dataclasses.MISSING, *, help: str, kind: str, flag: str | None = "", factory: Any = None, **meta: Any
) -> Any:
    """A dataclass field with the metadata the CLI and validate() read (flag "" = --field-name)."""
    meta.update(help=help, kind=kind, flag=flag)
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """All settings of `virion train`; the defaults are the reference paper's settings (preset `reference`)."""

    # ------------------------------------------------------------------ run
    data: str | None = setting(
        None,
        kind="path",
        metavar="DIR",
        group="run",
        help="dataset folder: one sub-folder per class, train/validation/test split folders, or a CSV manifest",
    )
    models: list[str] = setting(
        kind="list",
        factory=lambda: list(DEFAULT_MODELS),
        choices=MODEL_NAMES,
        metavar="MODEL",
        group="run",
        help=f"models to train, any of {', '.join(MODEL_NAMES)} (default: the "
        f"reference three, {' '.join(DEFAULT_MODELS)})",
    )
    out: str | None = setting(
        None, kind="path", metavar="RUN", group="run", help="run folder to create, e.g. runs/NAME"
    )
    preset: str = setting(
        DEFAULT_PRESET, kind="special", metavar="NAME", group="run", help="named recipe the other settings start from"
    )
    overwrite: bool = setting(False, kind="bool", group="run", help="replace an existing, non-empty --out folder")
    # ------------------------------------------------------------------ training
    input_size: int = setting(
        128, kind="int", low=1, high=MAX_INPUT_SIZE, metavar="PX", help="images are resized to PX x PX"
    )
    batch_size: int = setting(64, kind="int", low=1, high=65536, metavar="N", help="images per batch")
    epochs: int = setting(20, kind="int", low=1, high=MAX_EPOCHS, metavar="N", help="epochs of training")
    learning_rate: float = setting(
        1e-3,
        kind="float",
        low=0.0,
        low_open=True,
        high=MAX_LEARNING_RATE,
        flag="--lr",
        metavar="LR",
        help="learning rate",
    )
    optimizer: str = setting(
        "adam",
        kind="choice",
        choices=OPTIMIZERS,
        help="adam (reference), adamw (decoupled weight decay) or sgd (momentum 0.9)",
    )
    weight_decay: float | None = setting(
        None,
        kind="float",
        low=0.0,
        high=1.0,
        metavar="WD",
        optional=True,
        help=f"decoupled weight decay (default: {ADAMW_DEFAULT_WEIGHT_DECAY} with adamw, none otherwise)",
    )
    label_smoothing: float = setting(
        0.0,
        kind="float",
        low=0.0,
        high=1.0,
        high_open=True,
        metavar="EPS",
        help="cross-entropy label smoothing, 0 = plain categorical cross-entropy",
    )
    seed: int = setting(
        0,
        kind="int",
        low=0,
        high=2**32 - 1,
        metavar="N",
        help="seed for the split, initial weights and augmentation order",
    )
    weights: str | dict[str, str] = setting(
        "imagenet",
        kind="special",
        metavar="SPEC",
        nargs="+",
        help="transfer models' base: imagenet (Keras cache/download), none (random init, whole network "
        "trained), a weights file, a folder holding Keras' weight file names, or per model "
        "NAME=imagenet|none|PATH (e.g. xception=x.h5 densenet121=none)",
    )
    fine_tune_epochs: int = setting(
        0,
        kind="int",
        low=0,
        high=MAX_EPOCHS,
        metavar="N",
        help="after the head, unfreeze the top of the base and train N more epochs",
    )
    unfreeze: float | str = setting(
        0.3,
        kind="special",
        metavar="FRACTION|LAYER",
        help="part of the base to unfreeze for fine-tuning: a fraction in (0, 1] "
        "or the name of the first layer to train",
    )
    fine_tune_lr: float = setting(
        1e-5,
        kind="float",
        low=0.0,
        low_open=True,
        high=MAX_LEARNING_RATE,
        metavar="LR",
        help="learning rate for fine-tuning",
    )
    class_weight: str = setting(
        "none",
        kind="choice",
        choices=CLASS_WEIGHTS,
        help="balanced: weight classes by inverse frequency; sqrt: by its square root (milder, mean weight 1)",
    )
    checkpoint_metric: str = setting(
        "val_accuracy",
        kind="choice",
        choices=CHECKPOINT_METRICS,
        help="validation metric that picks the best epoch; last: keep the final epoch (nothing is chosen on "
        "the validation split, so it stays a fair judge of ensembles and the recommended classifier; early "
        "stopping and the plateau schedule then watch val_macro_f1)",
    )
    early_stopping: int | None = setting(
        None,
        kind="int",
        low=1,
        high=MAX_EPOCHS,
        optional=True,
        metavar="PATIENCE",
        help="stop after PATIENCE epochs without improvement of the checkpoint metric (0 or off: never)",
    )
    lr_schedule: str = setting("none", kind="choice", choices=LR_SCHEDULES, help="learning-rate schedule")
    feature_cache: int | None = setting(
        None,
        kind="special",
        metavar="off|K",
        help="frozen-base models: run the base once per image (0) or per each "
        "of K augmented views and train the head on cached features",
    )
    mixed_precision: str | bool = setting(
        "auto",
        kind="special",
        metavar="auto|on|off|bfloat16",
        aliases=(
            ("--no-mixed-precision", False, "same as --mixed-precision off"),
            ("--bf16", "bfloat16", "same as --mixed-precision bfloat16 (CPUs with AVX512_BF16/AMX)"),
        ),
        help="mixed precision: auto = float16 with a GPU, off on the CPU; bfloat16 = mixed bfloat16",
    )
    xla: str | bool = setting(
        "auto",
        kind="special",
        metavar="auto|on|off",
        aliases=(("--no-xla", False, "same as --xla off"),),
        help="compile the training step with XLA (auto: with a GPU only)",
    )
    tensorboard: bool = setting(
        False,
        kind="bool",
        help="write TensorBoard logs under each model folder (needs the extra: pip install 'virion[tensorboard]')",
    )
    eval_tta: bool = setting(
        False,
        kind="bool",
        help="evaluate with test-time augmentation: each test and validation image's probabilities are the mean "
        "over its 8 flips and 90-degree turns (what `virion predict --tta` does); every output says so",
    )
    # ------------------------------------------------------------------ devices (virion.backend, training.distribute)
    backend: str = setting(
        "auto",
        kind="choice",
        choices=BACKENDS,
        help="Keras compute backend: auto = jax when JAX sees a GPU (pip install "
        "'virion[cuda]'), else tensorflow (the faster CPU path)",
    )
    devices: str | int = setting(
        "all",
        kind="special",
        metavar="all|N",
        help="devices to train on, data parallel: all local accelerators or the first N "
        "of each machine (several need the jax backend); --batch-size is the global batch",
    )
    coordinator: str | None = setting(
        None,
        kind="special",
        metavar="HOST:PORT",
        help="multi-machine training: address of process 0 (or VIRION_COORDINATOR; SLURM is detected)",
    )
    num_processes: int | None = setting(
        None,
        kind="int",
        low=1,
        high=65536,
        optional=True,
        metavar="N",
        help="multi-machine training: number of processes (or VIRION_NUM_PROCESSES)",
    )
    process_id: int | None = setting(
        None,
        kind="int",
        low=0,
        high=65535,
        optional=True,
        metavar="I",
        help="multi-machine training: this process's index, 0 writes the run folder (or VIRION_PROCESS_ID)",
    )
    # ------------------------------------------------------------------ data
    classes: list[str] | None = setting(
        None, kind="list", metavar="NAME", group="data", optional=True, help="train on these classes only"
    )
    exclude: list[str] = setting(
        kind="list", factory=list, metavar="NAME", group="data", help="leave these class folders out (fnmatch patterns)"
    )
    include_subfolders: bool = setting(
        False, kind="bool", group="data", help="also take images from sub-folders of each class folder"
    )
    group_by: str | None = setting(
        None,
        kind="special",
        metavar="REGEX",
        group="data",
        help="split validation/test by group, not by image: the group is the part of "
        "the file name REGEX matches (e.g. '^(.*)_\\d+$' = all before the last _N)",
    )
    val_fraction: float = setting(
        0.2,
        kind="float",
        low=0.0,
        high=1.0,
        low_open=True,
        high_open=True,
        metavar="F",
        group="data",
        help="share of training images for validation",
    )
    test_fraction: float = setting(
        0.2,
        kind="float",
        low=0.0,
        high=1.0,
        high_open=True,
        metavar="F",
        group="data",
        help="share of images for the test set",
    )
    stretch: tuple[float, float] | None = setting(
        (0.5, 99.5),
        kind="special",
        metavar=("LOW", "HIGH"),
        nargs=2,
        group="data",
        aliases=(("--linear", "linear", "plain linear scaling by the image's dtype instead of a stretch"),),
        help="contrast stretch between these percentiles",
    )
    strict: bool = setting(
        False, kind="bool", group="data", help="stop at the first unreadable image instead of skipping it"
    )
    mixup: float = setting(
        0.0,
        kind="float",
        low=0.0,
        high=10.0,
        metavar="ALPHA",
        group="augmentation",
        help="mixup: blend each training image and its label with another image of the batch, "
        "weights drawn from Beta(ALPHA, ALPHA); 0 = off, 0.2-0.4 are usual",
    )
    cutmix: float = setting(
        0.0,
        kind="float",
        low=0.0,
        high=10.0,
        metavar="ALPHA",
        group="augmentation",
        help="cutmix: paste a box of another image of the batch, labels mixed by the box's "
        "area, Beta(ALPHA, ALPHA); 0 = off, 1.0 is usual (with --mixup: half each)",
    )
    mix_prob: float = setting(
        1.0,
        kind="float",
        low=0.0,
        high=1.0,
        metavar="P",
        group="augmentation",
        help="share of training images that --mixup/--cutmix mix",
    )
    augment: dict[str, Any] = setting(
        kind="special",
        factory=lambda: dict(_AUGMENT_DEFAULTS),
        flag=None,
        group="augmentation",
        help="augmentation of training images",
    )

    # ---------------------------------------------------------------- building
    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a plain dict (TOML, config.json) and validate; unknown keys are a user mistake."""
        values = dict(values)
        if values.get("loss") == "categorical_crossentropy":  # config.json of runs before label smoothing
            values.pop("loss")
        config = cls().merged(values, source=source, skip_none=False)
        config.validate(source)
        return config

    def merged(self, overrides: dict[str, Any], source: str = "command line", skip_none: bool = True) -> TrainConfig:
        """A copy with `overrides` applied, each value checked; with `skip_none`, None means "not given"."""
        values = dataclasses.asdict(self)
        for key, value in overrides.items():
            key = key.replace("-", "_")
            if key not in FIELDS:
                raise VirionError(f"{source}: unknown setting '{key}'; known settings: {', '.join(FIELDS)}")
            if value is None and skip_none:
                continue
            if key == "augment":
                value = _merge_augment(values["augment"], value, source)
            values[key] = _check(key, value, source)
        return TrainConfig(**values)

    def validate(self, source: str = "settings") -> TrainConfig:
        """Check every value and the combinations (e.g. input size per model); raise VirionError."""
        for key in FIELDS:
            setattr(self, key, _check(key, getattr(self, key), source))
        for name in self.models:
            if self.input_size < MIN_INPUT_SIZE[name]:
                raise VirionError(
                    f"--input-size (input_size) {self.input_size} is too small for {name}; use "
                    f"{MIN_INPUT_SIZE[name]} or more, or leave {name} out of --models"
                )
        if self.feature_cache is not None and self.mix_config().enabled:
            raise VirionError(
                "--feature-cache with --mixup/--cutmix: cached features cannot be mixed; "
                "turn one of them off (--feature-cache off, or --mixup 0 --cutmix 0)"
            )
        if isinstance(self.weights, dict):
            missing = [m for m in self.models if m not in SCRATCH_MODELS and m not in self.weights]
            extra = [m for m in self.weights if m not in self.models]
            if missing or extra:
                given = " ".join(f"{k}={v}" for k, v in self.weights.items())
                problem = f"no entry for {', '.join(missing)}" if missing else f"{', '.join(extra)} is not trained"
                raise VirionError(
                    f"--weights (weights) {given}: {problem}; give NAME=imagenet|none|PATH for "
                    "each transfer model of --models"
                )
        return self

    def check_environment(self) -> None:
        """File-system and installation checks before any work: inputs exist, --out writable, extras present."""
        from virion.fs import check_output_dir

        data = Path(self.data).expanduser() if self.data else None
        if data is not None and not data.exists():
            raise VirionError(f"--data {self.data}: no such file or folder; pass a dataset folder or CSV manifest")
        if data is not None and data.is_file() and data.suffix.lower() != ".csv":
            raise VirionError(
                f"--data {self.data}: is a file but not a .csv manifest; pass a dataset folder "
                "(one sub-folder per class) or a CSV manifest"
            )
        for name, spec in self._weight_specs():
            if spec.lower() not in ("imagenet", "none") and not Path(spec).expanduser().exists():
                raise VirionError(
                    f"--weights {spec}: no such file or folder (for {name}); pass imagenet, none, "
                    "a weights file or a folder of Keras weight files"
                )
        if self.out:
            check_output_dir(self.out, "--out")
        if self.tensorboard:
            from importlib.util import find_spec

            if find_spec("tensorboard") is None:
                raise VirionError(
                    "--tensorboard: TensorBoard is not installed; install it with "
                    "pip install 'virion[tensorboard]', or train without --tensorboard"
                )

    def _weight_specs(self) -> list[tuple[str, str]]:
        transfer = [m for m in self.models if m not in SCRATCH_MODELS]
        if isinstance(self.weights, dict):
            return [(m, self.weights[m]) for m in transfer if m in self.weights]
        return [(m, self.weights) for m in transfer]

    # ---------------------------------------------------------------- using
    def weights_for(self, model: str) -> str:
        """The weights setting of one model: "imagenet", "none" or a path (file or folder)."""
        if isinstance(self.weights, dict):
            return self.weights.get(model, "none" if model in SCRATCH_MODELS else "imagenet")
        return self.weights

    def resolved_weight_decay(self) -> float:
        """The weight decay the optimizer gets (adamw's default when not set)."""
        if self.weight_decay is not None:
            return float(self.weight_decay)
        return ADAMW_DEFAULT_WEIGHT_DECAY if self.optimizer == "adamw" else 0.0

    def build_optimizer(self, learning_rate: float):
        """The Keras optimizer these settings name, at `learning_rate` (head or fine-tune stage)."""
        import keras

        decay = self.resolved_weight_decay() or None
        if self.optimizer == "adamw":
            return keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=decay or 0.0)
        if self.optimizer == "sgd":
            return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9, weight_decay=decay)
        return keras.optimizers.Adam(learning_rate=learning_rate, weight_decay=decay)

    def build_loss(self):
        """Categorical cross-entropy, with label smoothing when set (plain string otherwise, as the reference)."""
        if not self.label_smoothing:
            return "categorical_crossentropy"
        import keras

        return keras.losses.CategoricalCrossentropy(label_smoothing=float(self.label_smoothing))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (config.json); `from_dict(to_dict())` gives the same config."""
        values = dataclasses.asdict(self)
        values["stretch"] = list(self.stretch) if self.stretch is not None else None
        return values

    def to_toml(self) -> str:
        """The full config as TOML (`virion train --print-config`); None values are commented out."""
        values = self.to_dict()
        for key, off in (("stretch", "linear"), ("early_stopping", "off"), ("feature_cache", "off")):
            if values[key] is None:  # an explicit "off" so a preset below cannot turn it back on
                values[key] = off
        return _to_toml(values)

    def augment_config(self) -> AugmentConfig:
        """The data layer's AugmentConfig for these settings."""
        return AugmentConfig(**self.augment)

    def mix_config(self) -> MixConfig:
        """The data layer's MixConfig (mixup/cutmix of training batches) for these settings."""
        return MixConfig(mixup=self.mixup, cutmix=self.cutmix, mix_prob=self.mix_prob)

    def use_gpu_speedups(self, flag: str | bool) -> bool:
        """Resolve an "auto" flag: on only where a GPU is visible."""
        if flag == "auto":
            return gpu_available()
        return bool(flag)


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}

# Help and CLI flag of each augmentation key; defaults and ranges belong to AugmentConfig.
AUGMENT_HELP: dict[str, tuple[str, str | None]] = {
    "rotation": ("max rotation either way, degrees 0..180", "DEG"),
    "shift": ("max shift as a fraction of the size", "F"),
    "horizontal_flip": ("random left-right flips", None),
    "vertical_flip": ("random up-down flips", None),
    "rot90": ("random quarter turns", None),
    "zoom": ("random zoom within 1 +- F", "F"),
    "brightness": ("random brightness shift, fraction of 255", "F"),
    "contrast": ("random contrast factor within 1 +- F", "F"),
    "gamma": ("random gamma (exposure) within [1/(1+G), 1+G]", "G"),
    "blur_sigma": ("random Gaussian blur (defocus), sigma up to S pixels", "S"),
    "noise_std": ("random Gaussian noise, standard deviation up to F x 255", "F"),
    "fill_mode": (f"how pixels outside the image are filled: {', '.join(FILL_MODES)}", "MODE"),
    "interpolation": ("resampling of the warp: bilinear or nearest", "MODE"),
}


def flag_of(key: str) -> str | None:
    """The CLI flag of a setting ("--lr" for learning_rate), None when it has none."""
    if key in _AUGMENT_DEFAULTS:
        return "--" + key.replace("_", "-")
    flag = FIELDS[key].metadata["flag"]
    return None if flag is None else (flag or "--" + key.replace("_", "-"))


def _name(key: str, source: str) -> str:
    """How the user wrote the key: the flag on the command line, the TOML key in a file."""
    if source == "command line":
        return flag_of(key.split(".")[-1]) or key
    return key


def _bad(key: str, value: Any, expected: str, source: str) -> VirionError:
    shown = value if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)
    if source == "command line":
        shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        return VirionError(f"{_name(key, source)} {shown}: expected {expected}")
    return VirionError(f"{source}: {key} = {shown}: expected {expected}")


def _range_text(meta: dict) -> str:
    low, high = meta.get("low"), meta.get("high")
    parts = []
    if low is not None:
        parts.append(f"{'>' if meta.get('low_open') else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if meta.get('high_open') else '<='} {high:g}")
    return " and ".join(parts)


def _number(key: str, value: Any, meta: dict, source: str) -> int | float:
    integer = meta["kind"] == "int"
    what = ("an integer " if integer else "a finite number ") + _range_text(meta)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str) and source == "command line":
            try:
                value = float(value)
            except ValueError:
                raise _bad(key, value, what, source) from None
        else:
            raise _bad(key, value, what, source)
    if not math.isfinite(value) or (integer and float(value) != int(value)):
        raise _bad(key, value, what, source)
    value = int(value) if integer else float(value)
    low, high = meta.get("low"), meta.get("high")
    if low is not None and (value < low or (meta.get("low_open") and value == low)):
        raise _bad(key, value, what, source)
    if high is not None and (value > high or (meta.get("high_open") and value == high)):
        raise _bad(key, value, what, source)
    return value


def _check(key: str, value: Any, source: str) -> Any:
    """One value, coerced from TOML/JSON/CLI spellings and checked; raise naming key, value, expectation."""
    meta = FIELDS[key].metadata
    kind = meta["kind"]
    if value is None and (meta.get("optional") or FIELDS[key].default is None):
        return None
    if key in _COERCE:
        return _COERCE[key](value, source)
    if kind in ("int", "float"):
        if key == "early_stopping" and (value is False or str(value).lower() in ("0", "off", "none")):
            return None
        return _number(key, value, meta, source)
    if kind == "bool":
        if not isinstance(value, bool):
            raise _bad(key, value, "true or false", source)
        return value
    if kind == "choice":
        if value not in meta["choices"]:
            raise _bad(key, value, f"one of {', '.join(meta['choices'])}", source)
        return value
    if kind == "path":
        if not isinstance(value, (str, Path)) or not str(value).strip():
            raise _bad(key, value, "a path", source)
        return str(value)
    if kind == "list":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise _bad(key, value, "a list of names", source)
        value = list(value)
        choices = meta.get("choices")
        for item in value:
            if choices and item not in choices:
                raise _bad(key, item, f"one of {', '.join(choices)}", source)
        if key == "models" and not value:
            raise _bad(key, value, f"at least one of {', '.join(MODEL_NAMES)}", source)
        return value
    raise AssertionError(f"no check for setting {key}")  # pragma: no cover - a field without a kind


def _check_preset(value: Any, source: str) -> str:
    names = preset_names()
    if value not in names:
        raise _bad("preset", value, f"one of {', '.join(names)}", source)
    return value


def _check_weights(value: Any, source: str) -> str | dict[str, str]:
    expected = "imagenet, none, a path, or NAME=imagenet|none|PATH per transfer model"
    if isinstance(value, (list, tuple)):
        if len(value) == 1 and "=" not in str(value[0]):
            value = value[0]
        else:
            pairs = {}
            for item in value:
                name, sep, spec = str(item).partition("=")
                if not sep:
                    raise _bad("weights", item, expected + " (several values must all be NAME=...)", source)
                pairs[name] = spec
            value = pairs
    if isinstance(value, dict):
        out = {}
        for name, spec in value.items():
            if name not in MODEL_NAMES or name in SCRATCH_MODELS:
                raise _bad(
                    "weights",
                    f"{name}={spec}",
                    f"a transfer model name ({', '.join(m for m in MODEL_NAMES if m not in SCRATCH_MODELS)}) "
                    "before '='",
                    source,
                )
            if not isinstance(spec, str) or not spec.strip():
                raise _bad("weights", f"{name}={spec}", expected, source)
            out[name] = spec.lower() if spec.lower() in ("imagenet", "none") else spec
        return out
    if not isinstance(value, str) or not value.strip():
        raise _bad("weights", value, expected, source)
    return value.lower() if value.lower() in ("imagenet", "none") else value


def _check_unfreeze(value: Any, source: str) -> float | str:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            if not value.strip():
                raise _bad("unfreeze", value, "a fraction in (0, 1] or a layer name", source) from None
            return value  # a layer name; checked against the model when fine-tuning starts
    return _number("unfreeze", value, {"kind": "float", "low": 0.0, "low_open": True, "high": 1.0}, source)


def _check_feature_cache(value: Any, source: str) -> int | None:
    if value is None or value is False or (isinstance(value, str) and value.lower() in ("off", "none")):
        return None
    return _number("feature_cache", value, {"kind": "int", "low": 0, "high": 1000}, source)


def _auto_flag(key: str, extra: tuple = ()) -> Any:
    spellings = {"auto": "auto", "on": True, "true": True, "off": False, "false": False}

    def check(value: Any, source: str) -> str | bool:
        if isinstance(value, bool) or value in extra:
            return value
        if isinstance(value, str) and value.lower() in spellings:
            return spellings[value.lower()]
        if isinstance(value, str) and value.lower() == "float16" and extra:
            return True
        raise _bad(key, value, f"one of auto, on, off{''.join(', ' + e for e in extra)}", source)

    return check


def _check_stretch(value: Any, source: str) -> tuple[float, float] | None:
    """Through virion.run.schema.parse_stretch (the one stretch parser), with this module's message."""
    from virion.run.schema import parse_stretch

    expected = 'two percentiles 0 <= LOW < HIGH <= 100, or "linear"'
    try:
        parsed = parse_stretch(value, source)
    except VirionError:
        raise _bad("stretch", list(value) if isinstance(value, tuple) else value, expected, source) from None
    if parsed is not None and not isinstance(value, (list, tuple)):  # "12" must not read as [1, 2]
        raise _bad("stretch", value, expected, source)
    return parsed


def _check_group_by(value: Any, source: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _bad("group_by", value, "a regular expression", source)
    try:
        re.compile(value)
    except re.error as exc:
        raise _bad("group_by", value, f"a valid regular expression ({exc})", source) from None
    return value


def _check_augment(value: Any, source: str) -> dict[str, Any]:
    merged = _merge_augment(_AUGMENT_DEFAULTS, value, source)
    for key in merged:  # one key at a time, so the message names the one that is wrong
        try:
            AugmentConfig(**{**_AUGMENT_DEFAULTS, key: merged[key]})
        except VirionError as exc:
            expected = str(exc).split(" is invalid: ")[-1]
            if source == "command line":
                raise VirionError(f"{flag_of(key)} {merged[key]}: {expected}") from None
            raise VirionError(f"{source}: augment.{key} = {merged[key]!r}: {expected}") from None
    return AugmentConfig(**merged).to_dict()


def _check_devices(value: Any, source: str) -> str | int:
    if isinstance(value, str) and value.strip().lower() == "all":
        return "all"
    try:
        return _number("devices", value, {"kind": "int", "low": 1, "high": 65536}, source)
    except VirionError:
        raise _bad("devices", value, "all or a number of devices >= 1", source) from None


def _check_coordinator(value: Any, source: str) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise _bad("coordinator", value, "HOST:PORT of process 0, e.g. node1:1234", source)
    return text


_COERCE = {
    "preset": _check_preset,
    "weights": _check_weights,
    "unfreeze": _check_unfreeze,
    "feature_cache": _check_feature_cache,
    "mixed_precision": _auto_flag("mixed_precision", ("bfloat16",)),
    "xla": _auto_flag("xla"),
    "stretch": _check_stretch,
    "group_by": _check_group_by,
    "augment": _check_augment,
    "devices": _check_devices,
    "coordinator": _check_coordinator,
}


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
    """Whether the loaded Keras backend computes on a GPU (never imports TensorFlow on JAX)."""
    from virion.backend import gpu_available as _gpu_available

    return _gpu_available()


# ---------------------------------------------------------------------------- presets and TOML files
def preset_names() -> list[str]:
    """Names of the presets shipped in virion/training/presets/ (reference first)."""
    names = sorted(
        p.name[:-5] for p in resources.files("virion.training.presets").iterdir() if p.name.endswith(".toml")
    )
    return sorted(names, key=lambda n: n != DEFAULT_PRESET)


def preset_text(name: str) -> str:
    """The TOML text of preset `name`."""
    _check_preset(name, "--preset")
    return resources.files("virion.training.presets").joinpath(f"{name}.toml").read_text(encoding="utf-8")


def preset_summary(name: str) -> str:
    """The first comment line of a preset file: what it is for (shown in `virion train --help`)."""
    for line in preset_text(name).splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def preset_values(name: str) -> dict[str, Any]:
    values = tomllib.loads(preset_text(name))
    values.pop("preset", None)
    return values


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML settings file as a dict; a missing or broken file is a one-line error."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise VirionError(f"{path}: config file not found; check the --config path") from None
    except IsADirectoryError:
        raise VirionError(f"{path}: is a folder; --config takes a TOML file") from None
    except UnicodeDecodeError:
        raise VirionError(f"{path}: not valid TOML (not UTF-8 text); fix the file") from None
    except tomllib.TOMLDecodeError as exc:
        raise VirionError(f"{path}: not valid TOML ({exc}); fix the file") from None


def load_config(
    toml_path: str | Path | None = None, overrides: dict[str, Any] | None = None, preset: str | None = None
) -> TrainConfig:
    """Defaults < preset < TOML file < `overrides` (the command line; None = not given); validated.

    The preset is `preset`, else overrides["preset"], else the TOML file's `preset`, else reference.
    """
    overrides = dict(overrides or {})
    file_values = read_toml(toml_path) if toml_path is not None else {}
    name = preset or overrides.get("preset") or file_values.get("preset") or DEFAULT_PRESET
    name = _check_preset(name, "command line" if (preset or overrides.get("preset")) else str(toml_path))
    config = TrainConfig().merged(preset_values(name), source=f"preset {name}", skip_none=False)
    if file_values:
        config = config.merged(file_values, source=str(toml_path), skip_none=False)
    config = config.merged(overrides, source="command line")
    config.preset = name
    return config.validate("settings" if toml_path is None else f"{toml_path} + command line")


# A tiny TOML writer: the config holds only strings, numbers, booleans, lists and one table.
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")  # pragma: no cover


def _to_toml(values: dict[str, Any]) -> str:
    lines, tables = [], []
    for key, value in values.items():
        help_text = FIELDS[key].metadata["help"] if key in FIELDS else ""
        if isinstance(value, dict):
            tables.append((key, value, help_text))
            continue
        lines.extend(textwrap.wrap(help_text, 98, initial_indent="# ", subsequent_indent="# "))
        lines.append(f"# {key} = ...  (not set)" if value is None else f"{key} = {_toml_value(value)}")
    for key, table, help_text in tables:
        lines.append(f"\n# {help_text}\n[{key}]")
        for sub, value in table.items():
            note = AUGMENT_HELP.get(sub, ("", None))[0] if key == "augment" else ""
            lines.append(f"{sub} = {_toml_value(value)}" + (f"  # {note}" if note else ""))
    return "\n".join(lines) + "\n"

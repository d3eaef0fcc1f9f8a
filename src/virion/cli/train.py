"""`virion train`: train ResNet-50 / Xception / DenseNet121 into a run folder (or resume one).

The options are generated from `TrainConfig`'s field metadata (help, choices, flag), so a new
setting is one edit in `virion/training/config.py`. Every option defaults to None here ("not
given"), so a preset and a TOML config file can set it and the command line still wins. This
module only parses, checks and calls the library: no TensorFlow import until `run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from virion.errors import VirionError
from virion.training import config as cfg

_GROUPS = {"run": "run", "training": "training", "data": "data", "augmentation": "augmentation (training images only)"}


def _default_text(key: str) -> str:
    value = getattr(cfg.TrainConfig(), key) if key in cfg.FIELDS else cfg.TrainConfig().augment[key]
    if value is None:
        return "off" if key in ("early_stopping", "feature_cache") else "not set"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _add_setting(group, key: str) -> None:
    meta = cfg.FIELDS[key].metadata
    flag = cfg.flag_of(key)
    if flag is None:
        return
    help_text = meta["help"]
    kind = meta["kind"]
    kwargs: dict = {"dest": key, "default": None}
    if key == "preset":
        names = cfg.preset_names()
        help_text = (
            "start from a named recipe (the config file and options given here win): "
            + "; ".join(f"{n}: {cfg.preset_summary(n).rstrip('.')}" for n in names)
            + f" (default {cfg.DEFAULT_PRESET})"
        )
        kwargs.update(metavar="|".join(names))
    elif kind == "bool":
        kwargs["action"] = argparse.BooleanOptionalAction
    elif kind == "choice":
        kwargs.update(choices=meta["choices"])
    elif kind == "list":
        kwargs.update(nargs="+", metavar=meta.get("metavar"))
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
    else:  # numbers and special values stay text here; TrainConfig checks and converts them with one message
        kwargs.update(metavar=meta.get("metavar"))
        if meta.get("nargs"):
            kwargs["nargs"] = meta["nargs"]
    if key not in ("data", "out", "preset", "models") and "default" not in help_text:
        help_text += f" (default {_default_text(key)})"
    group.add_argument(flag, help=help_text, **kwargs)
    for alias, constant, alias_help in meta.get("aliases", ()):
        group.add_argument(alias, dest=key, action="store_const", const=constant, help=alias_help)


def _add_augment(group) -> None:
    defaults = cfg.TrainConfig().augment
    for key in defaults:  # every AugmentConfig field gets a flag, described or not
        help_text, metavar = cfg.AUGMENT_HELP.get(key, (key.replace("_", " "), "X"))
        kwargs: dict = {
            "dest": "augment_" + key,
            "default": None,
            "help": f"{help_text} (default {_default_text(key)})",
        }
        if isinstance(defaults[key], bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = metavar
        group.add_argument(cfg.flag_of(key), **kwargs)
    group.add_argument("--no-augment", action="store_true", help="no augmentation at all (every value above off)")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the models into a run folder (runs/NAME), or resume one",
        description="Train each requested model into a run folder: <model>.keras, <model>.h5, metadata.json and "
        "history.csv per model under --out, then evaluate them. Settings come from the preset (default: "
        "reference = 128x128, batch 64, 20 epochs, Adam 1e-3), then a --config TOML file, then the options "
        "given here. `--print-config` shows the resolved settings as TOML.",
    )
    groups = {name: p.add_argument_group(title) for name, title in _GROUPS.items()}
    groups["run"].add_argument(
        "--config",
        metavar="FILE.toml",
        type=Path,
        help="TOML file with any of the settings below (options given here win); see --print-config",
    )
    groups["run"].add_argument(
        "--resume", metavar="RUN", type=Path, help="continue an interrupted run folder with its own settings"
    )
    groups["run"].add_argument(
        "--print-config", action="store_true", help="print the resolved settings as TOML and exit (nothing is trained)"
    )
    for key, f in cfg.FIELDS.items():
        _add_setting(groups[f.metadata.get("group", "training")], key)
    _add_augment(groups["augmentation"])
    p.set_defaults(func=run)


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The settings given on the command line (None = not given)."""
    values = {key: getattr(args, key, None) for key in cfg.FIELDS if key != "augment"}
    augment = {key: getattr(args, "augment_" + key, None) for key in cfg.TrainConfig().augment}
    if getattr(args, "no_augment", False):
        none = dataclasses.asdict(cfg.AugmentConfig.none())
        augment.update({k: v for k, v in none.items() if k not in ("fill_mode", "interpolation")})
    if any(v is not None for v in augment.values()):
        values["augment"] = _typed_augment(augment)
    return values


def _typed_augment(augment: dict) -> dict:
    """Numbers given as text on the command line; a bad one is a one-line error naming the flag."""
    out = {}
    for key, value in augment.items():
        if isinstance(value, str) and key not in ("fill_mode", "interpolation"):
            try:
                value = float(value)
            except ValueError:
                raise VirionError(f"{cfg.flag_of(key)} {value}: expected a number") from None
        out[key] = value
    return out


def _resume_config(args: argparse.Namespace, overrides: dict):
    from virion.run import store
    from virion.training.distribute import prepare_process

    try:  # the run's backend must be chosen before the trainer imports Keras
        saved = store.read_json(Path(args.resume) / "config.json")
    except Exception:  # noqa: BLE001 - load_run_config below says what is wrong with the folder
        saved = {}
    prepare_process(saved.get("backend") or "auto")
    from virion.training.trainer import load_run_config

    given = [k for k, v in overrides.items() if v is not None and k != "data"]
    if args.config is not None or given:
        drop = ", ".join(cfg.flag_of(k) or k for k in given) or "--config"
        raise VirionError(f"--resume {args.resume}: a resumed run keeps its own settings (config.json); drop {drop}")
    config = load_run_config(args.resume)
    if overrides.get("data"):  # the data may have moved
        config = config.merged({"data": overrides["data"]})
    return config


def run(args: argparse.Namespace) -> int:
    overrides = overrides_from_args(args)
    if args.resume is not None:
        args.run_dir = str(args.resume)
        config = _resume_config(args, overrides)
    else:
        config = cfg.load_config(args.config, overrides)
        if args.print_config:
            sys.stdout.write(config.to_toml())
            return 0
        if not config.data:
            raise VirionError("--data DIR is required (a folder with one sub-folder per class)")
        if not config.out:
            raise VirionError("--out RUN is required (the run folder to create, e.g. runs/NAME)")
        args.run_dir = config.out
    config.check_environment()  # inputs exist, --out writable, extras installed: before any data is read
    return _train(config, resume=args.resume is not None)


def _train(config, *, resume: bool) -> int:
    from virion.training.distribute import prepare_process

    # Backend and multi-machine start first: Keras reads its backend once, at its import.
    prepare_process(
        config.backend, coordinator=config.coordinator, num_processes=config.num_processes, process_id=config.process_id
    )
    from virion import workflow

    result = workflow.train(config, resume=resume)
    print(next_steps(result.run_dir, config.data))
    return 0


def next_steps(run_dir, data=None) -> str:
    """What to try after training, with the real paths (printed at the end of `virion train`)."""
    run = _quote(run_dir)
    images = _quote(Path(data) / "test") if data and (Path(data) / "test").is_dir() else "IMAGES..."
    lines = [
        f"run folder: {run_dir}",
        "next:",
        f"  virion evaluate {run}  # again, or on other data with --data DIR",
        f"  virion predict {run} {images} --out predictions.csv",
        f"  virion explain {run} {images} --out {_quote(Path(run_dir) / 'gradcam')}",
        f"  virion serve {run}  # a local web page: upload images, see classes and Grad-CAM",
    ]
    return "\n".join(lines)


def _quote(path) -> str:
    import shlex

    return shlex.quote(str(path))

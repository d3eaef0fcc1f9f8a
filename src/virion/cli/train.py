"""`virion train`: train ResNet-50 / Xception / DenseNet121 into a run folder (or resume one).

Every option defaults to None here ("not given"), so a TOML config file can set it and the
command line still wins where it is given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from virion.training.config import CHECKPOINT_METRICS, CLASS_WEIGHTS, LR_SCHEDULES, MODEL_NAMES


def _unfreeze(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def _feature_cache(text: str):
    if text.lower() in ("off", "none"):
        return "off"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give off or a number of augmented views (0, 1, 2, ...)")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the number of views must be 0 or more")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train the models into a run folder (runs/NAME), or resume one",
        description="Train each requested model with the reference settings (128x128, batch 64, 20 epochs, "
        "Adam 1e-3) unless a --config TOML file or an option says otherwise; saves <model>.keras, "
        "<model>.h5, metadata.json and history.csv per model under --out, then evaluates them.")
    g = p.add_argument_group("run")
    g.add_argument("--data", metavar="DIR", help="dataset folder: one sub-folder per class, "
                   "train/validation/test split folders, or a CSV manifest")
    g.add_argument("--models", nargs="+", choices=MODEL_NAMES, metavar="MODEL",
                   help=f"models to train, any of {', '.join(MODEL_NAMES)} (default: all three)")
    g.add_argument("--out", metavar="RUN", help="run folder to create, e.g. runs/NAME")
    g.add_argument("--config", metavar="FILE.toml", type=Path,
                   help="TOML file with any of the settings below (options given here win)")
    g.add_argument("--resume", metavar="RUN", type=Path,
                   help="continue an interrupted run folder with its own settings")
    g.add_argument("--overwrite", action="store_true", default=None,
                   help="replace an existing, non-empty --out folder")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, metavar="N", help="epochs of training (default 20)")
    g.add_argument("--batch-size", type=int, metavar="N", help="images per batch (default 64)")
    g.add_argument("--input-size", type=int, metavar="PX", help="images are resized to PX x PX (default 128)")
    g.add_argument("--lr", dest="learning_rate", type=float, metavar="LR", help="Adam learning rate (default 1e-3)")
    g.add_argument("--seed", type=int, metavar="N", help="seed for the split, initial weights and "
                   "augmentation order (default 0)")
    g.add_argument("--weights", metavar="imagenet|none|PATH",
                   help="transfer models' base: imagenet (Keras cache/download, the default), none "
                   "(random init, whole network trained) or a local weights file")
    g.add_argument("--fine-tune-epochs", type=int, metavar="N",
                   help="after the head, unfreeze the top of the base and train N more epochs (default 0)")
    g.add_argument("--unfreeze", type=_unfreeze, metavar="FRACTION|LAYER",
                   help="part of the base to unfreeze for fine-tuning: a fraction or a layer name (default 0.3)")
    g.add_argument("--fine-tune-lr", type=float, metavar="LR", help="learning rate for fine-tuning (default 1e-5)")
    g.add_argument("--class-weight", choices=CLASS_WEIGHTS, help="balanced: weight classes by inverse "
                   "frequency (default none)")
    g.add_argument("--checkpoint-metric", choices=CHECKPOINT_METRICS,
                   help="validation metric that picks the best epoch (default val_accuracy)")
    g.add_argument("--early-stopping", type=int, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without improvement of the checkpoint metric (default off)")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="learning-rate schedule (default none)")
    g.add_argument("--feature-cache", type=_feature_cache, metavar="off|K",
                   help="frozen-base models: run the base once per image (0) or per each of K augmented "
                   "views and train the head on cached features (default off)")
    g.add_argument("--no-mixed-precision", dest="mixed_precision", action="store_false", default=None,
                   help="GPU: train in float32 instead of mixed float16")
    g.add_argument("--bf16", dest="mixed_precision", action="store_const", const="bfloat16",
                   help="train in mixed bfloat16 (CPUs with AVX512_BF16/AMX: about 1.6x faster ResNet-50 "
                   "steps here; softmax kept in float32)")
    g.add_argument("--no-xla", dest="xla", action="store_false", default=None,
                   help="GPU: do not compile the training step with XLA")
    g.add_argument("--tensorboard", action="store_true", default=None,
                   help="write TensorBoard logs under each model folder")
    g = p.add_argument_group("data")
    g.add_argument("--classes", nargs="+", metavar="NAME", help="train on these classes only")
    g.add_argument("--exclude", nargs="+", metavar="NAME", help="leave these class folders out")
    g.add_argument("--include-subfolders", action="store_true", default=None,
                   help="also take images from sub-folders of each class folder")
    g.add_argument("--val-fraction", type=float, metavar="F", help="share of images for validation (default 0.2)")
    g.add_argument("--test-fraction", type=float, metavar="F", help="share of images for the test set (default 0.2)")
    contrast = g.add_mutually_exclusive_group()
    contrast.add_argument("--stretch", nargs=2, type=float, metavar=("LOW", "HIGH"),
                          help="contrast stretch between these percentiles (default 0.5 99.5)")
    contrast.add_argument("--linear", action="store_true", default=None,
                          help="plain linear scaling by the image's dtype instead of a percentile stretch")
    g.add_argument("--strict", action="store_true", default=None,
                   help="stop at the first unreadable image instead of skipping it")
    g = p.add_argument_group("augmentation (training images only)")
    g.add_argument("--rotation", type=float, metavar="DEG", help="max rotation either way (default 20)")
    g.add_argument("--shift", type=float, metavar="F", help="max shift as a fraction of the size (default 0.2)")
    g.add_argument("--horizontal-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="random left-right flips (default on)")
    g.add_argument("--vertical-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="random up-down flips (default off)")
    g.add_argument("--rot90", action=argparse.BooleanOptionalAction, default=None,
                   help="random quarter turns (default off)")
    g.add_argument("--zoom", type=float, metavar="F", help="random zoom within 1 +- F (default 0)")
    g.add_argument("--brightness", type=float, metavar="F", help="random brightness shift, fraction of 255 (default 0)")
    g.add_argument("--contrast", type=float, metavar="F", help="random contrast factor within 1 +- F (default 0)")
    g.add_argument("--no-augment", action="store_true", help="no augmentation at all")
    p.set_defaults(func=run)


_AUGMENT_FLAGS = ("rotation", "shift", "horizontal_flip", "vertical_flip", "rot90", "zoom", "brightness", "contrast")
_SETTINGS = ("data", "models", "out", "overwrite", "epochs", "batch_size", "input_size", "learning_rate", "seed",
             "weights", "fine_tune_epochs", "unfreeze", "fine_tune_lr", "class_weight", "checkpoint_metric",
             "early_stopping", "lr_schedule", "feature_cache", "mixed_precision", "xla", "tensorboard", "classes",
             "exclude", "include_subfolders", "val_fraction", "test_fraction", "strict")


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The settings given on the command line (None = not given)."""
    values = {key: getattr(args, key, None) for key in _SETTINGS}
    if getattr(args, "stretch", None):
        values["stretch"] = tuple(args.stretch)
    if getattr(args, "linear", None):
        values["stretch"] = "linear"
    augment = {key: getattr(args, key, None) for key in _AUGMENT_FLAGS}
    if getattr(args, "no_augment", False):
        augment = {"rotation": 0.0, "shift": 0.0, "horizontal_flip": False, "vertical_flip": False,
                   "rot90": False, "zoom": 0.0, "brightness": 0.0, "contrast": 0.0}
    if any(v is not None for v in augment.values()):
        values["augment"] = augment
    return values


def run(args: argparse.Namespace) -> int:
    from virion.errors import VirionError
    from virion.training.config import load_config
    from virion.training.trainer import load_run_config, train_run

    overrides = overrides_from_args(args)
    if args.resume is not None:
        given = [k for k, v in overrides.items() if v is not None and k not in ("data",)]
        if args.config is not None or given:
            raise VirionError(f"--resume {args.resume}: a resumed run keeps its own settings (config.json); "
                              f"drop {', '.join('--' + k.replace('_', '-') for k in given) or '--config'}")
        config = load_run_config(args.resume)
        if overrides.get("data"):  # the data may have moved
            config = config.merged({"data": overrides["data"]})
        train_run(config, resume=True)
        return 0
    config = load_config(args.config, overrides)
    if not config.data:
        raise VirionError("--data DIR is required (a folder with one sub-folder per class)")
    if not config.out:
        raise VirionError("--out RUN is required (the run folder to create, e.g. runs/NAME)")
    result = train_run(config)
    print(f"run folder: {result.run_dir}")
    return 0

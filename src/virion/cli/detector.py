"""`virion detector`: train the learned particle detector that `virion crops` and `virion scan` use."""

from __future__ import annotations

from pathlib import Path

from virion.cli import argtypes
from virion.cli.crops import add_annotation_arguments

# heatmap.DEFAULT_EPOCHS, repeated here so that `virion --help` imports no library module; a test
# checks that they agree.
DEFAULT_EPOCHS = 30


def _epochs(text: str) -> int:
    return argtypes.bounded_int(text, 1, 10_000, "a number of epochs from 1 to 10000")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "detector",
        help="train a learned particle detector on annotated micrographs (used by crops and scan)",
        description="Train a class-agnostic particle detector (a small U-Net that draws a heat map of particle "
        "centres at 4 nm/px) on the boxes of annotated micrographs, the annotations `virion crops` reads, and "
        "save it in OUT (detector.json + detector.weights.h5, plain files that run no code when loaded). "
        "Points without a box are skipped (no size). Then `virion crops BOXES.csv --out CROPS --detected "
        "--detector OUT` trains the classifier on its candidates and hands it on: runs trained on those crops "
        "scan with it. See docs/micrographs.md.",
    )
    add_annotation_arguments(parser, "1 nm/px, as `virion scan` assumes")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the detector (new or empty)")
    parser.add_argument(
        "--epochs",
        type=_epochs,
        default=DEFAULT_EPOCHS,
        metavar="N",
        help=f"passes over the micrographs, one random 128-px crop of each per pass (default {DEFAULT_EPOCHS})",
    )
    parser.add_argument("--seed", type=argtypes.seed, default=0, metavar="N", help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier `virion detector` output in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    from virion.micrograph.heatmap_training import train_from_boxes

    result = train_from_boxes(
        args.boxes,
        args.out,
        yolo=args.yolo,
        images=args.images,
        classes=args.classes,
        nm_per_px=args.nm_per_px,
        epochs=args.epochs,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(result.summary())
    return 0

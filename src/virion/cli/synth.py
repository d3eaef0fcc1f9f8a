"""`virion synth`: write the built-in synthetic TEM virus dataset (train/validation/test layout)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _int_in(low: int, high: int):
    """An argparse type: an integer within [low, high] (a huge value would run for days or fail late)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected an integer from {low} to {high}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text}: expected an integer from {low} to {high}")
        return value

    parse.__name__ = "int"  # argparse names the type in its messages
    return parse


def _difficulty(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number from 0 to 3") from None
    if not 0.0 <= value <= 3.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text}: expected a number from 0 to 3")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write the built-in synthetic TEM virus dataset (14 classes)",
        description="Write a synthetic negative-stain TEM dataset with the 14 classes of the TEM virus dataset, "
        "in the DIR/{train,validation,test}/<Class>/ layout, plus DIR/montage.png and DIR/README.txt. "
        "The images are synthetic: use them to try and test virion, not to judge real-world accuracy.",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="output folder: new, empty, or an earlier `virion synth` output (which is replaced)",
    )
    parser.add_argument(
        "--per-class",
        type=_int_in(1, 100_000),
        default=60,
        metavar="N",
        help="images per class in total, split 60/20/20 into train/validation/test (default 60)",
    )
    parser.add_argument(
        "--seed",
        type=_int_in(0, 2**32 - 1),
        default=0,
        metavar="S",
        help="random seed; the same seed and settings give identical files (default 0)",
    )
    parser.add_argument(
        "--size",
        type=_int_in(16, 4096),
        default=256,
        metavar="PX",
        help="image width and height in pixels; the field of view is always 256 nm, "
        "so 256 means 1 nm per pixel like the real dataset (default 256)",
    )
    parser.add_argument(
        "--format", choices=("png", "tif"), default="png", dest="fmt", help="file format: png or tif (default png)"
    )
    parser.add_argument(
        "--bit-depth",
        type=int,
        choices=(8, 16),
        default=8,
        help="8 or 16 bits per pixel; 16-bit works with both formats and uses the range "
        "2000..60000 like raw detector data (default 8)",
    )
    parser.add_argument(
        "--difficulty",
        type=_difficulty,
        default=1.0,
        metavar="X",
        help="scales noise, blur, clutter, background unevenness and size jitter: 0 easy, 1 default, 2 hard, at most 3",
    )
    parser.add_argument(
        "--workers",
        type=_int_in(1, 1024),
        default=1,
        metavar="N",
        help="processes that render in parallel; the output is the same for any number (default 1)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty folder that is not a `virion synth` output, "
        "deleting its train/, validation/ and test/ folders first",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    from virion.data.synth import generate_dataset
    from virion.fs import check_output_dir

    check_output_dir(args.out, "--out")  # before rendering: --out under a file, unwritable folder
    from virion.data.synth.writer import split_counts

    out = generate_dataset(
        args.out,
        per_class=args.per_class,
        seed=args.seed,
        size=args.size,
        fmt=args.fmt,
        bit_depth=args.bit_depth,
        difficulty=args.difficulty,
        progress=not args.quiet,
        overwrite=args.overwrite,
        workers=args.workers,
    )
    train, val, test = split_counts(args.per_class, (0.6, 0.2, 0.2))
    print(
        f"wrote 14 classes x {args.per_class} synthetic images ({train} train / {val} validation / {test} test "
        f"per class) to {out}; see {out / 'montage.png'}"
    )
    return 0

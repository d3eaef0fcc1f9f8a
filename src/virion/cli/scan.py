"""`virion scan`: find, classify and count the particles in whole micrographs; a verdict per micrograph."""

from __future__ import annotations

import argparse
from pathlib import Path

from virion.cli import argtypes
from virion.micrograph.verdict import DEFAULT_WEIGHT_BY, WEIGHT_BY


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {value}")
    return value


# Pixel sizes of TEM micrographs: from about 0.01 nm/px (atomic resolution) to a few hundred (overviews).
MAX_NM_PER_PX = 1000.0


def _pixel_size(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a pixel size in nm, got {text!r}") from None
    if not 0 < value <= MAX_NM_PER_PX:
        raise argparse.ArgumentTypeError(f"expected a pixel size above 0 and at most {MAX_NM_PER_PX:g} nm, got {value}")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "scan",
        help="find and classify the particles in whole micrographs; a verdict per micrograph",
        description="Scan whole micrographs (files or folders, searched recursively; 8/16-bit, any size): "
        "find particle candidates (the run's learned detector if it has one, else blobs at 20-350 nm; black "
        "padding and borders excluded), classify a "
        "256-px window around each with the run's recommended classifier, keep those whose class is not "
        "_background and whose probability reaches --min-confidence, and give each micrograph a verdict: "
        "the class with the largest summed probability over its particles ('none' without particles, "
        "'uncertain' when fewer than --min-particles support it or it leads the runner-up by less than "
        "--margin). Writes OUT/particles.csv, OUT/verdicts.csv, OUT/specimens.csv (with --specimen-by) and "
        "OUT/overlays/*.png (boxes coloured by class, legend, scale bar). Unreadable files are listed, "
        "not fatal.",
    )
    parser.add_argument("run_dir", metavar="RUN", help="a run folder (or model folder/file) from `virion train`")
    parser.add_argument("inputs", metavar="PATH", nargs="+", help="micrograph files or folders of micrographs")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the CSVs and overlays")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    parser.add_argument(
        "--nm-per-px",
        type=_pixel_size,
        default=None,
        metavar="NM",
        help="pixel size of micrographs whose file states none (default: 1 nm/px); each micrograph is "
        "resampled to the run's pixel size (1 nm/px, the crops' scale)",
    )
    parser.add_argument(
        "--model",
        dest="model_name",
        default=None,
        metavar="NAME",
        help="a model or ensemble of the run (default: the run's recommended classifier)",
    )
    parser.add_argument(
        "--min-confidence",
        type=_fraction,
        default=None,
        metavar="P",
        help="keep a particle only when its class probability is at least P (default: the detector's own, "
        "0.3 for a learned heat-map detector, 0.5 for log)",
    )
    parser.add_argument(
        "--min-particles",
        type=argtypes.positive_int,
        default=1,
        metavar="N",
        help="a verdict needs at least N particles of that class, else 'uncertain' (default: 1)",
    )
    parser.add_argument(
        "--margin",
        type=_fraction,
        default=None,
        metavar="M",
        help="'uncertain' when the verdict's share of the summed probability leads the runner-up's by "
        "less than M (default: 0.02)",
    )
    parser.add_argument(
        "--specimen-by",
        default=None,
        metavar="folder|REGEX",
        help="also a verdict per specimen: micrographs in one folder, or sharing the REGEX match (group 1 "
        "if any) in their path; writes OUT/specimens.csv",
    )
    parser.add_argument(
        "--weight-by",
        choices=WEIGHT_BY,
        default=DEFAULT_WEIGHT_BY,
        help="each particle's weight in the verdict: score (its detector score, the default: a clear "
        "particle counts more than a faint one) or none (every particle counts 1)",
    )
    parser.add_argument(
        "--no-size-prior",
        dest="size_prior",
        action="store_false",
        help="ignore the run's class_sizes.json (by default, accepted particles of one class closer than half "
        "its typical size count once)",
    )
    parser.add_argument(
        "--detector",
        default=None,
        metavar="DIR|log",
        help="the particle detector: a folder from `virion detector`, or log (the Laplacian-of-Gaussian blobs); "
        "default: the run's learned detector (RUN/detector, else its training data's), else log",
    )
    parser.add_argument("--tta", action="store_true", help="average each window over 8 flips/turns (8x slower)")
    parser.add_argument("--no-overlays", dest="overlays", action="store_false", help="write no overlay PNGs")
    parser.add_argument(
        "--batch-size", type=argtypes.positive_int, default=32, metavar="N", help="windows per batch (default: 32)"
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    from virion.micrograph.scan import scan
    from virion.micrograph.verdict import DEFAULT_MARGIN

    result = scan(
        args.run_dir,
        args.inputs,
        args.out,
        nm_per_px=args.nm_per_px,
        model=args.model_name,
        min_confidence=args.min_confidence,
        min_particles=args.min_particles,
        margin=DEFAULT_MARGIN if args.margin is None else args.margin,
        specimen_by=args.specimen_by,
        tta=args.tta,
        batch_size=args.batch_size,
        weight_by=args.weight_by,
        size_prior=args.size_prior,
        detector=args.detector,
        overlays=args.overlays,
        overwrite=args.overwrite,
        progress=args.progress,
    )
    print(result.summary())
    return 0

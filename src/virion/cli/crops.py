"""`virion crops`: cut a classification dataset (class folders + manifest) from annotated micrographs."""

from __future__ import annotations

from pathlib import Path

from virion.cli.argtypes import bounded_int, nm_per_px


def _window_size(text: str) -> int:
    return bounded_int(text, 8, 4096, "a window size from 8 to 4096 px")


def _windows(text: str) -> int:
    return bounded_int(text, 1, 10_000, "a number of windows per micrograph from 1 to 10000")


def add_annotation_arguments(parser, unstated_scale: str) -> None:
    """The annotation inputs `virion crops` and `virion detector` share, with --nm-per-px;
    `unstated_scale`: what the command assumes for a file that states no pixel size."""
    parser.add_argument(
        "boxes",
        nargs="?",
        type=Path,
        metavar="BOXES_CSV",
        help="CSV with path,label and xmin,ymin,xmax,ymax (or x,y) in pixels, paths relative to the CSV; "
        "an optional session (or group) column groups the micrographs",
    )
    parser.add_argument(
        "--yolo", type=Path, metavar="LABELS_DIR", help="YOLO label folder (class cx cy w h, normalized) instead"
    )
    parser.add_argument("--images", type=Path, metavar="IMAGES_DIR", help="the images of the YOLO labels")
    parser.add_argument(
        "--classes",
        type=Path,
        metavar="FILE",
        help="class names, one per line (YOLO: line n is class n; with a CSV: the classes to keep, "
        "other labels are reported as bad rows)",
    )
    parser.add_argument(
        "--nm-per-px",
        type=nm_per_px,
        default=None,
        metavar="NM",
        help="pixel size of micrographs whose file states none (TIFF resolution tags, ImageJ or PNG density "
        f"are used when present); default: {unstated_scale}",
    )


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "crops",
        help="cut particle crops (and background windows) from annotated micrographs",
        description="Cut a window of --size px centred on every annotated particle of whole micrographs, at "
        "--target-nm-per-px, into OUT/<Class>/<group>__<micrograph>_<i>.png plus OUT/manifest.csv "
        "(path,label,group,micrograph,...), ready for `virion train --data OUT/manifest.csv`, which splits by "
        "group. Windows reaching past the image or into black padding are filled by mirroring the valid pixels. "
        "See docs/micrographs.md.",
    )
    add_annotation_arguments(parser, "the target, i.e. no resampling")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (new or empty)")
    parser.add_argument(
        "--size", type=_window_size, default=256, metavar="PX", help="window width and height in px (default 256)"
    )
    parser.add_argument(
        "--target-nm-per-px",
        type=nm_per_px,
        default=1.0,
        metavar="NM",
        help="pixel size of the crops in nm (default 1, the scale of the public TEM virus crops)",
    )
    parser.add_argument(
        "--background",
        type=_windows,
        default=None,
        metavar="N",
        help="also cut up to N windows per micrograph away from every box and outside black padding, "
        "as class _background (default: none)",
    )
    parser.add_argument(
        "--detected",
        action="store_true",
        help="also cut a window on every particle candidate `virion scan`'s detector finds inside a box, as "
        "that box's class (the windows the scanner will show the classifier; with --background, the "
        "background windows are then detector candidates on no box); default off",
    )
    parser.add_argument(
        "--detector",
        type=Path,
        metavar="DIR",
        help="a learned detector from `virion detector`: with --detected it proposes those candidates instead of "
        "the blob detector; with or without --detected it is copied to OUT/detector/, so runs trained on these "
        "crops (and `virion scan` with them) use it",
    )
    parser.add_argument(
        "--group-by",
        metavar="REGEX",
        help="group = this regular expression on the micrograph's file name (as `virion train --group-by`), "
        "when the CSV has no session/group column; default: each micrograph is its own group",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier `virion crops` output in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    from virion.micrograph.crops import cut_crops

    result = cut_crops(
        args.boxes,
        args.out,
        yolo=args.yolo,
        images=args.images,
        classes=args.classes,
        size=args.size,
        target_nm_per_px=args.target_nm_per_px,
        nm_per_px=args.nm_per_px,
        background=args.background or 0,
        detected=args.detected,
        detector=args.detector,
        group_by=args.group_by,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(result.summary())
    return 0

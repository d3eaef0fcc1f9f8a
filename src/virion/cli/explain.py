"""`virion explain`: Grad-CAM heatmaps that show where a model looked, one PNG per image."""

from __future__ import annotations

from pathlib import Path

from virion.errors import VirionError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="write Grad-CAM heatmaps over images for a saved model",
        description="For each image, write a PNG with the image and its Grad-CAM heatmap overlay side by "
        "side, titled with the predicted class and confidence. The last convolutional feature map is "
        "found automatically. MODEL is a .keras/.h5 file, a model folder or a run folder.",
    )
    parser.add_argument(
        "model_path",
        metavar="MODEL",
        help="a .keras/.h5 model file, a model folder, or a run folder from `virion train`",
    )
    parser.add_argument(
        "images", metavar="IMAGE", nargs="+", help="image files or folders of images (searched recursively)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder for the PNG files (created; must be empty unless --overwrite)",
    )
    parser.add_argument(
        "--model",
        dest="model_name",
        metavar="NAME",
        default=None,
        help="with a run folder: explain only this model; default: every model in the run",
    )
    parser.add_argument(
        "--class",
        dest="class_name",
        metavar="NAME",
        default=None,
        help="explain this class instead of the predicted one (a name from the model's class list)",
    )
    parser.add_argument(
        "--layer",
        default=None,
        metavar="LAYER",
        help="feature-map layer to explain (default: the last convolutional one, found automatically)",
    )
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    parser.set_defaults(func=run)


def run(args) -> int:
    from virion.fs import check_output_dir
    from virion.inference.classifier import Classifier
    from virion.inference.explain import explain_files
    from virion.inference.inputs import collect_inputs

    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise VirionError(f"--out {out}: is a file; give a folder for the PNGs")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise VirionError(f"--out {out}: folder is not empty; choose a new folder or pass --overwrite")
    check_output_dir(out, "--out")  # before any model is loaded: unwritable place, --out under a file
    files = collect_inputs(args.images)
    if not files:
        raise VirionError(f"no image files found in {' '.join(map(str, args.images))}; pass image files or folders")
    clf = Classifier.load(args.model_path, args.model_name)
    for m in clf.models:
        if args.class_name is not None and args.class_name not in m.class_names:
            raise VirionError(
                f"--class {args.class_name}: not a class of model {m.name}; choose one of: {', '.join(m.class_names)}"
            )
    written, unreadable, layers, skipped = explain_files(clf, files, out, class_name=args.class_name, layer=args.layer)
    for name, why in skipped.items():
        if len(skipped) < len(clf.model_names):
            print(f"virion: note: {name}: {why}; skipped")
    if skipped and len(skipped) == len(clf.model_names):
        name, why = next(iter(skipped.items()))
        raise VirionError(f"{name}: {why}; explain a network instead (virion explain RUN --model NAME ...)")
    for f, reason in unreadable:
        print(f"virion: warning: skipped unreadable {f}: {reason}")
    if not written:
        raise VirionError(f"none of the {len(files)} input file(s) could be read as an image; check paths and formats")
    how = "; ".join(f"{name}: {'layer ' if layer != 'radial profile' else ''}{layer}" for name, layer in layers.items())
    print(f"{written} explanation image(s) written to {out} ({how})")
    return 0

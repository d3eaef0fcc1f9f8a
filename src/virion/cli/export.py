"""`virion export`: write a run's models as TensorFlow SavedModel, TFLite or ONNX for use without virion."""

from __future__ import annotations

from pathlib import Path

FORMATS = ("savedmodel", "tflite", "onnx")  # kept here too so `--help` does not import TensorFlow


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export trained models as SavedModel, TFLite or ONNX",
        description="Export the models of a run (or one model folder/file) to --out DIR/<model>/: a TensorFlow "
        "SavedModel, a TFLite file or an ONNX file, with export.json (class order, input shape and value range). "
        "The exports need neither virion nor Keras to run. Each is checked against the Keras model on a few "
        'images and the largest difference is printed. ONNX needs the extra: pip install "virion[export]".',
    )
    parser.add_argument("run", metavar="RUN", help="a run folder from `virion train` (or a model folder / .keras file)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="savedmodel, tflite or onnx")
    parser.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="folder to write into (one sub-folder per model)"
    )
    parser.add_argument(
        "--model",
        dest="model_name",
        metavar="NAME",
        default=None,
        help="with a run folder: export only this model (default: every model)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace exports already in --out")
    parser.add_argument(
        "--no-check", dest="check", action="store_false", help="skip running each export against the Keras model"
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from virion.errors import VirionError
    from virion.inference.export import WARN_DIFF, check_format_available, export_models

    check_format_available(args.format)  # a missing converter is said before the slow model loading
    if not Path(args.run).exists():
        raise VirionError(f"{args.run}: no such run folder; pass a folder written by `virion train` (runs/NAME)")
    results = export_models(
        args.run, args.out, args.format, model_name=args.model_name, overwrite=args.overwrite, check=args.check
    )
    for r in results:
        if r.max_abs_diff is None:
            checked = r.check_note or "not checked"
        else:
            checked = f"max |difference| vs Keras on 4 images: {r.max_abs_diff:.1e}"
        print(f"{r.model}: {r.format} -> {r.path} ({checked})")
        if r.max_abs_diff is not None and r.max_abs_diff > WARN_DIFF:
            print(
                f"virion: warning: {r.model}: the {r.format} export differs from the Keras model by up to "
                f"{r.max_abs_diff:.3g} in probability; check it before relying on it"
            )
    print(f"class order and input description: {args.out}/<model>/export.json")
    return 0

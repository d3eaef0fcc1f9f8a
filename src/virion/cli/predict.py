"""`virion predict`: classify new images with a saved model or a whole run."""

from __future__ import annotations

from pathlib import Path

from virion.cli import argtypes
from virion.errors import VirionError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict the class of new images with a saved model or run",
        description="Predict virus classes for image files or folders (searched recursively) with a "
        "saved model (.keras or .h5, or a texture model's .json, with metadata.json beside it), a model "
        "folder, or a run folder. With a run folder and no model option, the run's recommended classifier "
        "(RUN/recommended.json, chosen on the validation split: one model or an ensemble) gives one row "
        "per image; --model NAME uses one model, --all-models gives one row per image and model. Images "
        "are decoded as in training. Prints a table and optionally writes a CSV (file,class,probability,"
        "model,top-k,error); unreadable files get an error row, not a crash.",
    )
    parser.add_argument(
        "model_path",
        metavar="MODEL_OR_RUN",
        help="a model file, a model folder, or a run folder from `virion train`",
    )
    parser.add_argument(
        "inputs",
        metavar="INPUT",
        nargs="+",
        help="image files or folders of images (searched recursively; hidden files skipped)",
    )
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument(
        "--model",
        dest="model_name",
        metavar="NAME",
        default=None,
        help="with a run folder: use this model (e.g. resnet50) or ensemble (ensemble, ensemble-weighted); "
        "default: the run's recommended classifier",
    )
    choice.add_argument(
        "--all-models",
        action="store_true",
        help="one row per image and model (every model of the run) instead of one answer per image",
    )
    choice.add_argument(
        "--ensemble",
        action="store_true",
        help="the equal-weight mean of every model of the run (they must share the class list)",
    )
    parser.add_argument(
        "--top-k",
        type=argtypes.positive_int,
        default=3,
        metavar="K",
        help="how many of the most likely classes to write per image (default: 3)",
    )
    parser.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average the softmax over the 8 flips and 90-degree rotations",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="CSV",
        help="write the predictions to this CSV file (e.g. predictions.csv)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument(
        "--batch-size",
        type=argtypes.positive_int,
        default=32,
        metavar="N",
        help="images per prediction batch (default: 32)",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    # Keras/TensorFlow load only when the command runs, so `virion --help` stays fast.
    from virion.fs import check_output_file
    from virion.inference.classifier import ENSEMBLE, WEIGHTED_ENSEMBLE, Classifier
    from virion.inference.inputs import collect_inputs
    from virion.inference.predict import format_table, unreadable, write_csv

    out: Path | None = args.out
    if out is not None:
        if out.exists() and out.is_dir():
            raise VirionError(f"--out {out}: is a folder; give a CSV file name")
        if out.exists() and not args.overwrite:
            raise VirionError(f"--out {out}: file exists; choose another name or pass --overwrite")
        check_output_file(out, "--out")  # before any model is loaded: unwritable place, --out under a file
    files = collect_inputs(args.inputs)
    if not files:
        raise VirionError(
            f"no image files found in {' '.join(map(str, args.inputs))}; "
            "pass .png/.jpg/.tif/... files or folders that hold them"
        )
    combined = args.model_name in (ENSEMBLE, WEIGHTED_ENSEMBLE)
    clf = Classifier.load(args.model_path, None if combined else args.model_name)
    if args.model_name and combined and args.model_name not in clf.choices:
        raise VirionError(
            f"--model {args.model_name}: this run has no such ensemble; choose one of: {', '.join(clf.choices)}"
        )
    if args.all_models:
        results = clf.predict_each(files, tta=args.tta, batch_size=args.batch_size, progress=args.progress)
        used = ", ".join(f"{m.name} ({m.input_size}px)" for m in clf.models) + ", one row per model"
    else:
        chosen = ENSEMBLE if args.ensemble else args.model_name or clf.default_model
        if args.ensemble and len(clf.model_names) < 2:
            print(f"virion: note: --ensemble with one model ({clf.model_names[0]}) is that model's prediction")
        results = [clf.predict(files, model=chosen, tta=args.tta, batch_size=args.batch_size, progress=args.progress)]
        why = f" ({clf.why})" if chosen == clf.default_model and not (args.model_name or args.ensemble) else ""
        used = f"{results[0].model}{why}"
    if not any(p.sources for p in results):
        reasons = "; ".join(f"{f}: {why}" for f, why in unreadable(results)[:3]).replace("\n", " ")
        raise VirionError(
            f"none of the {len(files)} input file(s) could be read as an image ({reasons}); "
            "check the paths and file formats"
        )
    print(f"{len(files)} image(s), classifier: {used}" + (", with TTA" if args.tta else ""))
    print(format_table(results))
    if out is not None:
        write_csv(results, out, args.top_k)
        print(f"predictions written to {out}")
    return 0

"""`virion evaluate RUN`: evaluate every model of a run on its test set, then refresh the comparison and report."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings for people, not developers: `virion: warning: ...` without the source line."""
    print(f"virion: warning: {message}", file=file or sys.stderr)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a run's models on the test set (reports, matrices, plots, report.html)",
        description="Evaluate every model of a training run on its unshuffled test set and write "
        "RUN/<model>/evaluation/, RUN/comparison.{md,csv,png} and RUN/report.html. With --data OTHER, "
        "the test split of OTHER goes to RUN/<model>/evaluation-OTHER/, comparison-OTHER.* and "
        "report-OTHER.html; the run's own evaluation is kept. --tta / --no-tta evaluate with or without 8-way "
        "test-time augmentation; one that differs from the run's own setting (virion train --eval-tta) goes to "
        "RUN/<model>/evaluation-tta/ (evaluation-no-tta/), comparison-tta.* and report-tta.html beside the run's "
        "own evaluation, never over it.",
    )
    parser.add_argument("run", type=Path, metavar="RUN", help="run folder written by `virion train` (runs/NAME)")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="DIR",
        help="evaluate on this dataset's test split instead of the run's own (the run's data, moved, "
        "counts as its own; default: the path in RUN/config.json)",
    )
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="test-time augmentation: each image's probabilities are the mean over its 8 flips and 90-degree "
        "turns, as `virion predict --tta` (default: the run's own setting, config.json eval_tta; the other "
        "setting is written beside the run's evaluation as evaluation-tta/ or evaluation-no-tta/)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="images per inference batch (default: the run's batch size)",
    )
    parser.add_argument(
        "--no-report",
        action="store_true",
        help="only write the per-model evaluation, not the comparison and report.html",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from virion import workflow
    from virion.errors import VirionError

    if args.batch_size is not None and args.batch_size < 1:
        raise VirionError(f"--batch-size {args.batch_size}: must be a positive number of images")
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning  # restored on exit
        results = workflow.evaluate(args.run, args.data, tta=args.tta, batch_size=args.batch_size, with_report=False)
    print(f"{'model':<18} {'accuracy':>9} {'macro F1':>9} {'images/s':>9}  TTA")
    for name, s in results.items():
        tta = f"{s.get('tta_views', 8)}-way" if s.get("tta") else "none"
        print(f"{name:<18} {s['accuracy']:>9.4f} {s['macro_f1']:>9.4f} {s['inference_images_per_second']:>9.1f}  {tta}")
    if not args.no_report:
        print(f"report: {workflow.report(args.run, workflow.data_name_of(results), workflow.variant_of(results))}")
    return 0

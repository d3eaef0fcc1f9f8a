"""`virion demo`: the main job end to end on the built-in synthetic TEM data.

Generate the synthetic dataset, train the three models, evaluate, compare, write the HTML
report and print where it is. The default preset is reduced (figures measured on 2-core CPUs are in
docs/benchmarks.md; the run prints its own time and CPU flags); `--full` runs the reference settings.
"""

from __future__ import annotations

import argparse

from virion.cli import argtypes


def register(subparsers) -> None:
    from virion.workflow import PRESETS  # plain data; the heavy imports wait for run()

    parser = subparsers.add_parser(
        "demo",
        help="generate synthetic TEM data, train all three models, evaluate and report",
        description="Run the whole pipeline on the built-in synthetic TEM virus dataset: generate it, "
        "train ResNet-50 (from scratch), Xception, DenseNet121 and the texture model, evaluate, compare and write "
        "report.html. The default is a reduced run; it ends by printing its own wall time and this CPU's flags.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--full", action="store_true", help="run the reference settings (128x128, batch 64, 20 epochs; hours on a CPU)"
    )
    size.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="size of the run: tiny (smoke test), reduced (default) or full",
    )
    parser.add_argument(
        "--out", default="virion-demo", help="folder for the synthetic data and the runs (default: ./virion-demo)"
    )
    parser.add_argument(
        "--weights",
        default="auto",
        help="transfer-model weights: auto (ImageNet if it can be had, else none), "
        "imagenet, none, or a path to a weights file",
    )
    parser.add_argument("--seed", type=argtypes.seed, default=0, help="seed for the data and the training (default 0)")
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="MODEL",
        help="models to train (default: resnet50 xception densenet121 texture)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from virion.workflow import demo

    demo(
        "full" if args.full else (args.preset or "reduced"),
        out=args.out,
        weights=args.weights,
        seed=args.seed,
        models=args.models,
    )
    return 0

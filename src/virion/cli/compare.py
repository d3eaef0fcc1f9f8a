"""`virion compare RUN [RUN...]`: one table of all evaluated models, as Markdown, CSV and a bar chart."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare the evaluated models of one or more runs (table + bar chart)",
        description="Write comparison.md, comparison.csv and comparison.png with accuracy, macro "
        "precision/recall/F1, weighted F1, parameters, model size, training time and inference speed.",
    )
    parser.add_argument(
        "runs",
        type=Path,
        nargs="+",
        metavar="RUN",
        help="run folders written by `virion train` and evaluated by `virion evaluate`",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="where to write the comparison (default: the run folder; required for several runs)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from virion.reports.compare import markdown_table
    from virion.workflow import compare

    out = args.out if args.out is not None or len(args.runs) != 1 else args.runs[0]
    rows = compare(args.runs, out=args.out)
    print(markdown_table(rows), end="")
    print(f"written: {Path(out) / 'comparison.md'}, comparison.csv, comparison.png" if out else "")
    return 0

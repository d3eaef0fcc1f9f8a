"""The `virion` command: a thin argparse layer over the library.

Each sub-command lives in its own module under `virion.cli` and exposes
`register(subparsers)`, which adds its parser and sets `func` to a callable taking
the parsed arguments and returning an exit code. User mistakes raise `VirionError`
and end here as one line on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

from virion import __version__
from virion.errors import VirionError

# Order is the order shown in `virion --help`.
COMMAND_MODULES = ("synth", "train", "evaluate", "compare", "predict", "explain", "demo")


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; we keep the error on one line and exit 2."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.exit(2, f"virion: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(
        prog="virion",
        description="Classify virus particles in TEM images: synthesize data, train ResNet-50 / "
        "Xception / DenseNet121, evaluate, compare, predict and explain.",
    )
    parser.add_argument("--version", action="version", version=f"virion {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineErrorParser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"virion.cli.{name}")
        except ModuleNotFoundError as exc:  # a command still being written must not break the others
            if exc.name != f"virion.cli.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings are for people here, not for debugging: one line, no source excerpt."""
    return f"virion: warning: {message}\n"


def _quiet_backend_logs() -> None:
    """TensorFlow/absl chatter (retracing notices, 'HDF5 is legacy') hides the progress bars."""
    for name in ("tensorflow", "absl", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:  # pragma: no cover - absl comes with TensorFlow
        pass


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warning
    _quiet_backend_logs()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except VirionError as exc:
        print(f"virion: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("virion: interrupted; finished epochs are saved, continue with `virion train --resume RUN`"
              if args.command == "train" else "virion: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The `virion` command: a thin argparse layer over the library.

Each sub-command lives in its own module under `virion.cli` and exposes `register(subparsers)`,
which adds its parser and sets `func` to a callable taking the parsed arguments and returning an
exit code. `register` may import only argparse-level things (no TensorFlow/Keras): the heavy
imports happen inside `func`, so `virion --help`, `--version` and `COMMAND --help` start in well
under a second. User mistakes (`VirionError`) and file-system failures (`OSError`: permissions,
read-only or full disk, file-size limit) end here as one line on stderr, exit code 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings

from virion import __version__
from virion.errors import VirionError

# Order is the order shown in `virion --help`; a module not written yet is skipped.
COMMAND_MODULES = (
    "synth",
    "detector",
    "crops",
    "train",
    "evaluate",
    "compare",
    "predict",
    "explain",
    "scan",
    "serve",
    "export",
    "demo",
    "cache",
)
# Set VIRION_DEBUG=1 to see the traceback behind a one-line error.
DEBUG_ENV = "VIRION_DEBUG"


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; we keep the error on one line and exit 2."""

    def error(self, message: str) -> None:  # argparse API
        self.exit(2, f"virion: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(
        prog="virion",
        description="Classify virus particles in TEM images: synthesize data, cut crops from annotated "
        "micrographs, train ResNet-50 / Xception / DenseNet121 or the small-data models (texture, tem_cnn), "
        "evaluate, compare, predict, explain, and scan whole micrographs.",
    )
    parser.add_argument("--version", action="version", version=f"virion {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up and C++ log lines")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineErrorParser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"virion.cli.{name}")
        except ModuleNotFoundError as exc:  # a command still being written must not break the others
            if exc.name != f"virion.cli.{name}":
                raise
            continue
        module.register(subparsers)
    for sub in subparsers.choices.values():  # `virion train --verbose` works as well as `virion --verbose train`
        if "--verbose" not in sub._option_string_actions:
            sub.add_argument(
                "--verbose",
                action="store_true",
                default=argparse.SUPPRESS,
                help="show TensorFlow's start-up and C++ log lines",
            )
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings are for people here, not for debugging: one line, no source excerpt."""
    return f"virion: warning: {message}\n"


def _set_backend_logging(verbose: bool) -> None:
    """Silence TensorFlow's C++ start-up lines and absl/Python chatter, unless --verbose.

    Must run before anything imports TensorFlow: the C++ level is read once, at import. Default 3
    (set when `virion` is imported; why there).
    """
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if verbose else os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")
    level = logging.INFO if verbose else logging.ERROR
    # The standard loggers are enough: absl.logging keeps the level set here when TF imports it
    # later (importing absl.logging itself would cost 0.1-0.3 s of every start-up).
    for name in ("tensorflow", "absl", "h5py"):
        logging.getLogger(name).setLevel(level)


def _interrupted_message(args: argparse.Namespace) -> str:
    run_dir = getattr(args, "run_dir", None)
    if args.command == "train" and run_dir:
        return f"virion: interrupted; finished epochs are saved, continue with `virion train --resume {run_dir}`"
    if args.command == "detector":
        return "virion: interrupted; finished epochs are saved, run the same command again to continue"
    return "virion: interrupted"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv[: argv.index("--")] if "--" in argv else "--verbose" in argv
    _set_backend_logging(verbose)
    if not verbose:
        from virion.cli import quiet

        quiet.install()  # TensorFlow's import-time C++ lines, which TF_CPP_MIN_LOG_LEVEL does not stop
    warnings.formatwarning = _one_line_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except VirionError as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"virion: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        from virion.fs import describe_os_error

        out = getattr(args, "run_dir", None) or getattr(args, "out", None)
        print(f"virion: error: {describe_os_error(exc, f'--out {out}' if out else None)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted_message(args), file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

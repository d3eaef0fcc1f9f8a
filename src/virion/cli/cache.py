"""`virion cache info|clear`: see and empty the decode cache (~/.cache/virion or $VIRION_CACHE_DIR)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "cache",
        help="show or clear the decoded-image cache (~/.cache/virion)",
        description="Training decodes each split once into an on-disk array and reuses it. `info` shows where "
        "the cache is, how many entries it holds and their size; `clear` deletes them (they are rebuilt when "
        "needed). The folder is $VIRION_CACHE_DIR, else ~/.cache/virion.",
    )
    parser.add_argument("action", choices=("info", "clear"), help="info: show the cache; clear: delete its entries")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the cache folder (default: $VIRION_CACHE_DIR, else ~/.cache/virion)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from virion.data.cache import cache_info, clear_cache, default_cache_dir
    from virion.errors import VirionError

    folder = args.cache_dir if args.cache_dir is not None else default_cache_dir()
    if folder.exists() and not folder.is_dir():
        raise VirionError(f"--cache-dir {folder}: is a file, not a folder; give the cache folder")
    if args.action == "info":
        print(cache_info(folder).summary())
    else:
        print(f"{folder}: {clear_cache(folder).summary()}")
    return 0

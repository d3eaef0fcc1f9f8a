"""Rebuild a run's dataset and decode settings from its config, exactly as training did.

Training and evaluation both call these, so the test split that evaluation rebuilds is the one
training held out (same options, same seed, same decoding through the decode cache).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from virion.errors import VirionError
from virion.run.schema import DEFAULT_STRETCH, parse_stretch

DATASET_OPTIONS = ("classes", "exclude", "include_subfolders", "val_fraction", "test_fraction", "seed", "group_by")


def dataset_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The `load_dataset` keyword arguments recorded in a run's config (missing ones keep their defaults)."""
    options = {k: config[k] for k in DATASET_OPTIONS if config.get(k) is not None}
    if "exclude" in options:
        options["exclude"] = tuple(options["exclude"])
    return options


def open_dataset(config: Mapping[str, Any], data: str | Path | None = None):
    """The run's dataset (`data` overrides the recorded path): a `virion.data.layout.Dataset`."""
    from virion.data.layout import load_dataset

    root = data if data is not None else config.get("data")
    if not root:
        raise VirionError("no dataset given; pass --data DIR (a folder with one sub-folder per class)")
    if not Path(root).exists():
        raise VirionError(f"{root}: dataset folder not found; pass its current location with --data DIR")
    return load_dataset(Path(root), **dataset_options(config))


def decode_settings(config: Mapping[str, Any], input_size: int | None = None):
    """`DecodeSettings` of a run (its input size and stretch); `input_size` overrides the config's."""
    from virion.data.decode import DecodeSettings

    stretch = parse_stretch(config["stretch"], "config stretch") if "stretch" in config else DEFAULT_STRETCH
    return DecodeSettings(size=int(input_size or config.get("input_size") or 128), stretch=stretch)

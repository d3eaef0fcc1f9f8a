"""Argument types shared by the subcommands: one message per kind of bad value."""

from __future__ import annotations

import argparse
import math


def bounded_int(text: str, low: int, high: int | None, what: str) -> int:
    """Parse an integer in [low, high] or raise argparse's one-line error naming the range."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    return bounded_int(text, 1, None, "a positive integer")


def port(text: str) -> int:
    return bounded_int(text, 1, 65535, "a port number 1-65535")


def seed(text: str) -> int:
    """Seeds go to NumPy and Keras, which take 0 .. 2**32 - 1."""
    return bounded_int(text, 0, 2**32 - 1, f"an integer from 0 to {2**32 - 1}")


# The range a pixel size may take (a microscope's, not a display's dpi); the library checks it too.
NM_PER_PX_RANGE = (0.005, 500.0)


def nm_per_px(text: str) -> float:
    low, high = NM_PER_PX_RANGE
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a pixel size in nm from {low:g} to {high:g}, got {text!r}"
        ) from None
    if not math.isfinite(value) or not low <= value <= high:
        raise argparse.ArgumentTypeError(f"expected a pixel size in nm from {low:g} to {high:g}, got {text}")
    return value

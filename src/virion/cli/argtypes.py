"""Argument types shared by the subcommands: one message per kind of bad value."""

from __future__ import annotations

import argparse


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

"""Helpers that write tiny datasets and images inside each test's tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_png(path: Path, value: int = 128, size: int = 16) -> Path:
    """A tiny 8-bit grayscale PNG; `value` lets tests tell files apart after decoding."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


@pytest.fixture(name="write_png")
def write_png_fixture():
    """The `write_png` helper as a fixture (test modules cannot import conftest in importlib mode)."""
    return write_png


@pytest.fixture
def make_class_dir():
    """make_class_dir(root, {"A": 5, "B": 3}) -> root with that many PNGs per class folder."""

    def make(root: Path, counts: dict[str, int], ext: str = ".png") -> Path:
        for c, n in counts.items():
            for i in range(n):
                write_png(root / c / f"img_{i:03d}{ext}", value=(i * 7) % 256)
        return root

    return make

"""Fixtures for the web page tests: a tiny trained run (32 px) on data marked as `virion synth`'s."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import CLASSES, SIZE, train_tiny, write_model


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run folder with two tiny trained 32 px models, trained on data that `virion synth` marked."""
    base = tmp_path_factory.mktemp("app")
    data = base / "synthetic-data"
    data.mkdir()
    (data / "synth.json").write_text(json.dumps({"generator": "virion synth", "complete": True}))
    run = base / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": str(data), "input_size": SIZE}))
    (run / "dataset.json").write_text(json.dumps({"root": str(data), "class_names": CLASSES}))
    write_model(run, "tinya", train_tiny(1), accuracy=0.9167, macro_f1=0.9123)
    write_model(run, "tinyb", train_tiny(2), accuracy=0.8750, macro_f1=0.8701)
    return run


@pytest.fixture(scope="session")
def classifier(tiny_run):
    from virion.app import load_classifier

    return load_classifier(tiny_run)

"""Test-wide settings: quiet, offline, reproducible, and never touching the user's caches."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    """Point virion's decode cache and Keras' download cache at per-session temp folders."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("VIRION_CACHE_DIR", str(base / "virion-cache"))
    monkeypatch.setenv("KERAS_HOME", str(base / "keras-home"))

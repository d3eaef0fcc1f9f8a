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


# The few tests that run the real CLI end to end take minutes each; started first, they run on one
# xdist worker while the other worker goes through the many short tests (see pyproject's addopts).
_LONG_FIRST = (
    "tests/cli/test_demo_e2e.py",
    "tests/cli/test_readme_python.py",
    "tests/benchmarks/test_bench_real.py",
    "tests/distributed/test_train_jax.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        path = item.nodeid.split("::")[0]
        return _LONG_FIRST.index(path) if path in _LONG_FIRST else len(_LONG_FIRST)

    items.sort(key=rank)  # stable: the order inside each group is unchanged

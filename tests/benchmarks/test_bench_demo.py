"""bench_demo: the record reads the demo's own summary lines and this machine's CPU flags."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_demo", ROOT / "benchmarks" / "bench_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_accuracies_are_read_from_the_demo_summary_lines():
    stdout = (
        "densenet121: best val accuracy 0.6964 (macro-F1 0.6753) at epoch 8\n"  # training line: not a test figure
        "virion demo (reduced demo):\n"
        "  resnet50: test accuracy 0.655, macro-F1 0.645 (chance 0.071)\n"
        "  densenet121: test accuracy 0.744, macro-F1 n/a (chance 0.071)\n"
        "  texture: FAILED in training (the loss became nan)\n"
    )
    found = _bench().parse_accuracies(stdout)
    assert found == {
        "resnet50": {"accuracy": 0.655, "macro_f1": 0.645},
        "densenet121": {"accuracy": 0.744, "macro_f1": None},
    }


def test_cpu_flags_are_a_subset_of_the_speed_flags():
    info = _bench().cpu_info()
    assert info["flags"] is None or set(info["flags"]) <= {"avx2", "avx512f", "avx512_bf16", "amx_tile"}

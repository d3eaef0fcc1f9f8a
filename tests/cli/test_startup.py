"""`virion --help` and friends must not import TensorFlow/Keras (they took 7.5-9.8 s and 745 MB).

Each case runs in a fresh interpreter, because this test process has long imported Keras. No
timing is asserted here; benchmarks/bench_startup.py measures it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("tensorflow", "keras", "jax", "torch")
FIXTURE_RUN = Path(__file__).resolve().parents[1] / "fixtures" / "run_v0_1"

_PROBE = """
import json, sys
from virion.cli.main import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print("PROBE " + json.dumps({"code": code, "heavy": [m for m in HEAVY if m in sys.modules]}))
""".replace("HEAVY", repr(HEAVY))


def _probe(*args: str, env=None) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, check=False, timeout=300, env=env
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    assert lines, proc.stdout + proc.stderr
    result = json.loads(lines[-1][6:])
    result["stdout"], result["stderr"] = proc.stdout, proc.stderr
    return result


def _commands() -> list[str]:
    from virion.cli.main import build_parser

    parser = build_parser()
    return sorted(parser._subparsers._group_actions[0].choices)


@pytest.mark.parametrize("args", [["--help"], ["--version"], []])
def test_top_level_help_and_version_import_no_backend(args):
    result = _probe(*args)
    assert result["heavy"] == [], result
    assert result["code"] in (0, 2)
    if args == ["--version"]:
        assert result["stdout"].startswith("virion ")


def test_every_command_help_imports_no_backend():
    commands = _commands()
    assert {"train", "synth", "compare", "predict", "evaluate", "explain", "cache"} <= set(commands)
    script = "\n".join(
        [
            "import sys",
            "from virion.cli.main import main",
            "heavy = {}",
            f"for name in {commands!r}:",
            "    try:",
            "        main([name, '--help'])",
            "    except SystemExit:",
            "        pass",
            f"    heavy[name] = [m for m in {HEAVY!r} if m in sys.modules]",
            "print('HEAVY', heavy)",
        ]
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=300)
    line = [x for x in proc.stdout.splitlines() if x.startswith("HEAVY ")]
    assert line, proc.stderr
    heavy = eval(line[0][6:])  # our own printed dict
    assert all(not mods for mods in heavy.values()), heavy


def test_config_module_and_print_config_import_no_backend():
    result = _probe("train", "--print-config", "--preset", "tem")
    assert result["code"] == 0 and result["heavy"] == [] and 'preset = "tem"' in result["stdout"]


def test_synth_and_compare_run_without_backend(tmp_path):
    synth = _probe("synth", "--out", str(tmp_path / "s"), "--per-class", "3", "--size", "16", "--quiet")
    assert synth["code"] == 0 and synth["heavy"] == [], synth["stderr"]
    compare = _probe("compare", str(FIXTURE_RUN), "--out", str(tmp_path / "cmp"))
    assert compare["code"] == 0 and compare["heavy"] == [], compare["stderr"]
    assert (tmp_path / "cmp" / "comparison.md").is_file()


def test_bad_train_option_is_refused_without_backend(tmp_path):
    """Validation happens before any backend import, so a typo costs a fraction of a second."""
    result = _probe("train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--lr", "nan")
    assert result["code"] == 2 and result["heavy"] == []
    assert "--lr nan" in result["stderr"] and "Traceback" not in result["stderr"]


@pytest.mark.parametrize(
    "args, level",
    [
        (["train", "--print-config"], "3"),
        (["--verbose", "train", "--print-config"], "0"),
        (["train", "--print-config", "--verbose"], "0"),
    ],
)
def test_tensorflow_log_level_is_set_before_any_import(args, level):
    """Quiet by default (oneDNN/absl start-up lines hidden), shown with --verbose, before TF can load."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    script = (
        "import os, sys\nfrom virion.cli.main import main\nmain(sys.argv[1:])\n"
        "print('LEVEL', os.environ.get('TF_CPP_MIN_LOG_LEVEL'))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, check=False, timeout=120, env=env
    )
    assert f"LEVEL {level}" in proc.stdout, proc.stderr

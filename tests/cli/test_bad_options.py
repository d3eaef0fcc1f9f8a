"""The bad-option sweep (issue 11): every numeric option of every command with negative, zero, NaN, huge
and non-numeric values; every path option with a missing path, a file where a folder is expected and
an unwritable target. Each case must end with exit code != 0, exactly one `virion: error:` line that
names the option (or path), and no traceback - or be accepted where the value is legitimately valid.

The cases are generated: `virion train`'s from TrainConfig's field metadata (ranges), the other
commands' from their argparse parsers (every option with a numeric type), so a new option is swept
without editing this file. Cases run in-process through `main([...])` (fast); `train` has its
training step replaced by a stub, so "accepted" means every up-front check passed. The counts are
printed (`pytest -s`) and asserted to be zero tracebacks and zero wrong verdicts.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import virion.cli.train as cli_train
from virion.cli.main import build_parser, main
from virion.training import config as cfg

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HUGE = "1000000000000"
VALUES = ("-1", "0", "nan", HUGE, "abc")
ACCEPT, REJECT = "accept", "reject"

# `virion train` settings of kind "special" that take numbers: (low, high, low_open, spellings that mean off).
TRAIN_SPECIAL_NUMERIC = {
    "unfreeze": (0.0, 1.0, True, ()),
    "feature_cache": (0, 1000, False, ()),
    "devices": (1, 65536, False, ()),
}
TRAIN_NOT_NUMERIC = {"preset", "weights", "mixed_precision", "xla", "stretch", "group_by", "augment", "coordinator"}
# Values of the other commands' numeric options that are legitimately valid (everything else must be refused).
OTHER_ACCEPTED = {
    ("synth", "--seed"): {"0"},
    ("synth", "--difficulty"): {"0"},  # 0 = easy
    ("demo", "--seed"): {"0"},
    ("detector", "--seed"): {"0"},
    ("evaluate", "--batch-size"): {HUGE},  # a batch larger than the data is one batch
    ("predict", "--batch-size"): {HUGE},
    ("predict", "--top-k"): {HUGE},  # more than the classes: all classes
    ("serve", "--top-k"): {HUGE},
    ("serve", "--max-upload-mb"): {HUGE},
    ("scan", "--batch-size"): {HUGE},
    ("scan", "--min-particles"): {HUGE},  # more than any micrograph has: every verdict is 'uncertain'
    ("scan", "--min-confidence"): {"0"},  # keep every candidate the classifier does not call background
    ("scan", "--margin"): {"0"},  # never 'uncertain' for a close runner-up
}


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("virion: error:")]

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.err or "Traceback" in self.out


def run_cli(argv: list[str]) -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - an escaped exception is what the sweep looks for
            import traceback

            err.write(traceback.format_exc())
            code = 1
    return Outcome(int(code), out.getvalue(), err.getvalue())


def run_subprocess(argv: list[str], timeout: float = 120) -> Outcome:
    code = "import sys; from virion.cli.main import main; sys.exit(main(sys.argv[1:]))"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, *argv], capture_output=True, text=True, check=False, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return Outcome(0, "", "(still running: accepted)")
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


# ------------------------------------------------------------------------------------------- expectations
def _in_range(value: str, low, high, low_open=False, high_open=False, integer=False) -> bool:
    try:
        number = float(value)
    except ValueError:
        return False
    if not math.isfinite(number) or (integer and number != int(number)):
        return False
    if low is not None and (number < low or (low_open and number == low)):
        return False
    return high is None or (number < high if high_open else number <= high)


def train_numeric_cases() -> list[tuple[str, str, str]]:
    """(flag, value, expected) for every numeric TrainConfig setting and augmentation value."""
    cases = []
    for key, field in cfg.FIELDS.items():
        meta, flag = field.metadata, cfg.flag_of(key)
        if flag is None or key in TRAIN_NOT_NUMERIC:
            continue
        if meta["kind"] in ("int", "float"):
            for value in VALUES:
                ok = _in_range(
                    value,
                    meta.get("low"),
                    meta.get("high"),
                    meta.get("low_open", False),
                    meta.get("high_open", False),
                    meta["kind"] == "int",
                )
                if key == "early_stopping" and value == "0":
                    ok = True  # 0 = off
                cases.append((flag, value, ACCEPT if ok else REJECT))
        elif key in TRAIN_SPECIAL_NUMERIC:
            low, high, low_open, _ = TRAIN_SPECIAL_NUMERIC[key]
            for value in VALUES:
                ok = _in_range(value, low, high, low_open, integer=isinstance(low, int))
                if key == "unfreeze" and value == "abc":
                    ok = True  # a layer name: checked against the model when fine-tuning starts
                cases.append((flag, value, ACCEPT if ok else REJECT))
    from virion.data.augment_config import AugmentConfig

    for key, default in cfg.TrainConfig().augment.items():
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            continue
        for value in VALUES:
            try:
                AugmentConfig(**{key: float(value)})
                ok = value != "abc"
            except Exception:  # noqa: BLE001 - AugmentConfig's own range is the expectation
                ok = False
            cases.append((cfg.flag_of(key), value, ACCEPT if ok else REJECT))
    return cases


def test_every_special_train_setting_is_classified():
    """A new non-int/float setting must say here whether it takes numbers, so the sweep covers it."""
    special = {k for k, f in cfg.FIELDS.items() if f.metadata["kind"] == "special"}
    assert special <= set(TRAIN_SPECIAL_NUMERIC) | TRAIN_NOT_NUMERIC, special - set(TRAIN_SPECIAL_NUMERIC)


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    return dict(build_parser()._subparsers._group_actions[0].choices)


def _is_numeric(action: argparse.Action) -> bool:
    if not action.option_strings or action.choices is not None or action.type in (None, str, Path):
        return False
    probe = action.type
    try:
        probe("1")
    except Exception:  # noqa: BLE001 - a type that refuses "1" is not a plain number type
        return False
    return getattr(probe, "__name__", "") not in ("Path",)


def other_numeric_cases() -> list[tuple[str, str, str, str]]:
    """(command, flag, value, expected) for numeric options of every command but train."""
    cases = []
    for command, parser in _subcommands().items():
        if command == "train":
            continue
        for action in parser._actions:
            if _is_numeric(action):
                flag = max(action.option_strings, key=len)
                for value in VALUES:
                    ok = value in OTHER_ACCEPTED.get((command, flag), set())
                    cases.append((command, flag, value, ACCEPT if ok else REJECT))
    return cases


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """A small dataset, a plain file, a folder that stays unwritable even for root, a copy of a run."""
    root = tmp_path_factory.mktemp("bad-options")
    data = root / "data"
    for name in ("a", "b"):
        (data / name).mkdir(parents=True)
    (root / "file.txt").write_text("not a folder")
    run = root / "run"
    shutil.copytree(FIXTURES / "run_v0_1", run)
    locked = root / "locked"
    locked.mkdir()
    how = _lock(locked)
    yield {
        "root": root,
        "data": data,
        "file": root / "file.txt",
        "run": run,
        "locked": locked,
        "lock": how,
        "image": FIXTURES / "run_v0_1_images" / "adeno.png",
    }
    if how == "chattr":
        subprocess.run(["chattr", "-i", str(locked)], check=False)
    locked.chmod(0o755)


def _lock(folder: Path) -> str | None:
    """Make `folder` unwritable in a way that holds for root too (immutable flag), else by mode bits."""
    chattr = shutil.which("chattr")
    if chattr and subprocess.run([chattr, "+i", str(folder)], capture_output=True, check=False).returncode == 0:
        return "chattr"
    folder.chmod(0o555)
    if os.geteuid() != 0:
        return "chmod"
    folder.chmod(0o755)
    return None


@pytest.fixture
def stub_training(monkeypatch):
    calls = []
    monkeypatch.setattr(cli_train, "_train", lambda config, *, resume: calls.append(config) or 0)
    return calls


# ------------------------------------------------------------------------------------------- checks
@dataclass
class Tally:
    cases: int = 0
    tracebacks: int = 0
    wrong_acceptances: int = 0
    wrong_rejections: int = 0
    bad_messages: int = 0

    def check(self, what: str, outcome: Outcome, expected: str, names: list[str], failures: list[str]) -> None:
        self.cases += 1
        if outcome.traceback:
            self.tracebacks += 1
            failures.append(f"{what}: traceback\n{outcome.err[-800:]}")
            return
        rejected = outcome.code != 0 and any(any(n in line for n in names) for line in outcome.error_lines)
        if outcome.code != 0 and len(outcome.error_lines) != 1:
            self.bad_messages += 1
            failures.append(f"{what}: exit {outcome.code} without exactly one error line: {outcome.err[-400:]!r}")
        elif expected == REJECT and not rejected:
            self.wrong_acceptances += 1
            failures.append(f"{what}: accepted (exit {outcome.code}) {outcome.err[-300:]!r}")
        elif expected == ACCEPT and rejected:
            self.wrong_rejections += 1
            failures.append(f"{what}: refused a valid value: {outcome.error_lines}")


def _report(name: str, tally: Tally, failures: list[str]) -> None:
    print(
        f"\n{name}: {tally.cases} cases, {tally.tracebacks} tracebacks, {tally.wrong_acceptances} wrong "
        f"acceptances, {tally.wrong_rejections} wrong rejections, {tally.bad_messages} malformed errors"
    )
    assert not failures, "\n".join(failures)


def test_train_numeric_sweep(places, stub_training):
    tally, failures = Tally(), []
    cases = train_numeric_cases()
    assert len(cases) >= 5 * 20
    for flag, value, expected in cases:
        argv = [
            "train",
            "--data",
            str(places["data"]),
            "--out",
            str(places["root"] / "run-new"),
            "--models",
            "resnet50",
            flag,
            value,
        ]
        tally.check(f"train {flag} {value}", run_cli(argv), expected, [flag], failures)
    _report("train numeric options", tally, failures)


def test_other_commands_numeric_sweep(places, tmp_path):
    """Accepted values run into a deliberately broken path instead of doing work, so nothing heavy runs."""
    blocked = str(places["file"] / "under-a-file")
    base = {
        "synth": ["synth", "--out", blocked, "--per-class", "3", "--size", "16", "--quiet"],
        "evaluate": ["evaluate", str(tmp_path / "no-run")],
        "predict": ["predict", str(tmp_path / "no-model"), str(places["image"])],
        "explain": ["explain", str(tmp_path / "no-model"), str(places["image"]), "--out", blocked],
        "serve": ["serve", str(tmp_path / "no-run")],
        "demo": ["demo", "--preset", "tiny", "--out", blocked],
        "compare": ["compare", str(tmp_path / "no-run")],
        "cache": ["cache", "info", "--cache-dir", str(places["file"])],
        "export": ["export", str(tmp_path / "no-run")],
        "scan": ["scan", str(tmp_path / "no-run"), str(places["image"]), "--out", blocked],
        "detector": ["detector", str(tmp_path / "no-boxes.csv"), "--out", blocked],
    }
    tally, failures = Tally(), []
    cases = other_numeric_cases()
    commands = {c for c, *_ in cases}
    assert {"synth", "predict", "evaluate"} <= commands
    for command, flag, value, expected in cases:
        argv = [*base.get(command, [command]), flag, value]
        run = run_subprocess if command == "serve" and expected == ACCEPT else run_cli
        bare = flag.lstrip("-")
        tally.check(
            f"{command} {flag} {value}", run(argv), expected, [flag, f"{bare} {value}", f"{bare}={value}"], failures
        )
    _report("other commands' numeric options", tally, failures)


def path_cases(p: dict, tmp: Path) -> list[tuple[str, list[str], str, list[str]]]:
    """(label, argv, expected, words the error must contain)."""
    missing, file, locked, data, run = tmp / "missing", p["file"], p["locked"], p["data"], p["run"]
    train = ["train", "--models", "resnet50"]
    cases = [
        ("train --data missing", [*train, "--data", str(missing), "--out", str(tmp / "r1")], REJECT, ["--data"]),
        ("train --data file", [*train, "--data", str(file), "--out", str(tmp / "r2")], REJECT, ["--data"]),
        ("train --out new", [*train, "--data", str(data), "--out", str(tmp / "new" / "r3")], ACCEPT, []),
        ("train --out file", [*train, "--data", str(data), "--out", str(file)], REJECT, ["--out", str(file)]),
        ("train --out under file", [*train, "--data", str(data), "--out", str(file / "r")], REJECT, ["--out"]),
        (
            "train --config missing",
            [*train, "--data", str(data), "--out", str(tmp / "r4"), "--config", str(missing)],
            REJECT,
            [str(missing)],
        ),
        (
            "train --config folder",
            [*train, "--data", str(data), "--out", str(tmp / "r5"), "--config", str(data)],
            REJECT,
            [str(data)],
        ),
        ("train --resume missing", ["train", "--resume", str(missing)], REJECT, ["--resume"]),
        ("train --resume file", ["train", "--resume", str(file)], REJECT, ["--resume"]),
        (
            "train --weights missing",
            ["train", "--models", "xception", "--data", str(data), "--out", str(tmp / "r6"), "--weights", str(missing)],
            REJECT,
            ["--weights"],
        ),
        (
            "synth --out file",
            ["synth", "--out", str(file), "--per-class", "3", "--size", "16", "--quiet"],
            REJECT,
            [str(file)],
        ),
        (
            "synth --out under file",
            ["synth", "--out", str(file / "s"), "--per-class", "3", "--size", "16"],
            REJECT,
            ["--out"],
        ),
        ("evaluate missing run", ["evaluate", str(missing)], REJECT, [str(missing)]),
        ("evaluate file as run", ["evaluate", str(file)], REJECT, [str(file)]),
        ("evaluate --data missing", ["evaluate", str(run), "--data", str(missing)], REJECT, [str(missing)]),
        ("compare missing run", ["compare", str(missing)], REJECT, [str(missing)]),
        ("compare file as run", ["compare", str(file)], REJECT, [str(file)]),
        ("compare --out file", ["compare", str(run), "--out", str(file)], REJECT, [str(file)]),
        ("predict missing model", ["predict", str(missing), str(p["image"])], REJECT, [str(missing)]),
        ("predict missing input", ["predict", str(run), str(missing)], REJECT, [str(missing)]),
        ("predict --out folder", ["predict", str(run), str(p["image"]), "--out", str(data)], REJECT, ["--out"]),
        (
            "predict --out under file",
            ["predict", str(run), str(p["image"]), "--out", str(file / "p.csv")],
            REJECT,
            ["--out"],
        ),
        (
            "explain missing model",
            ["explain", str(missing), str(p["image"]), "--out", str(tmp / "e")],
            REJECT,
            [str(missing)],
        ),
        ("explain --out file", ["explain", str(run), str(p["image"]), "--out", str(file)], REJECT, ["--out"]),
        (
            "explain --out under file",
            ["explain", str(run), str(p["image"]), "--out", str(file / "e")],
            REJECT,
            ["--out"],
        ),
        ("cache --cache-dir file", ["cache", "info", "--cache-dir", str(file)], REJECT, ["--cache-dir"]),
        ("serve missing run", ["serve", str(missing)], REJECT, [str(missing)]),
    ]
    if p["lock"]:
        cases += [
            ("train --out unwritable", [*train, "--data", str(data), "--out", str(locked / "r")], REJECT, ["--out"]),
            (
                "synth --out unwritable",
                ["synth", "--out", str(locked / "s"), "--per-class", "3", "--size", "16"],
                REJECT,
                ["--out"],
            ),
            (
                "predict --out unwritable",
                ["predict", str(run), str(p["image"]), "--out", str(locked / "p.csv")],
                REJECT,
                ["--out"],
            ),
            (
                "explain --out unwritable",
                ["explain", str(run), str(p["image"]), "--out", str(locked / "e")],
                REJECT,
                ["--out"],
            ),
            ("compare --out unwritable", ["compare", str(run), "--out", str(locked / "c")], REJECT, [str(locked)]),
        ]
    return cases


def test_path_sweep(places, tmp_path, stub_training):
    tally, failures = Tally(), []
    commands = set(_subcommands())
    for label, argv, expected, words in path_cases(places, tmp_path):
        if argv[0] not in commands:
            continue
        outcome = run_cli(argv)
        tally.check(label, outcome, expected, words or [""], failures)
        if expected == REJECT and outcome.error_lines and words and not all(w in outcome.error_lines[0] for w in words):
            failures.append(f"{label}: the error does not name {words}: {outcome.error_lines[0]}")
    _report("path options" + ("" if places["lock"] else " (no unwritable folder possible here)"), tally, failures)


def test_os_errors_during_work_are_one_line(monkeypatch, places, tmp_path):
    """A full disk or a file-size limit while saving (h5py wraps errno 27 in its message): one line."""
    import errno

    def full_disk(config, *, resume):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "model.keras"))

    monkeypatch.setattr(cli_train, "_train", full_disk)
    outcome = run_cli(["train", "--data", str(places["data"]), "--out", str(tmp_path / "run")])
    assert outcome.code == 2 and len(outcome.error_lines) == 1 and not outcome.traceback
    assert "model.keras" in outcome.err and "No space left" in outcome.err and "free some space" in outcome.err

    def h5py_limit(config, *, resume):
        raise OSError(
            "Unable to synchronously create file (unable to open file: name = '/r/m.h5', errno = 27, "
            "error message = 'File too large', flags = 13, o_flags = 242)"
        )

    monkeypatch.setattr(cli_train, "_train", h5py_limit)
    outcome = run_cli(["train", "--data", str(places["data"]), "--out", str(tmp_path / "run")])
    assert outcome.code == 2 and len(outcome.error_lines) == 1
    assert "/r/m.h5: File too large" in outcome.err and "ulimit -f" in outcome.err


def test_real_file_size_limit_is_one_line(tmp_path):
    """`ulimit -f` reached while writing (a real EFBIG in a subprocess): one line naming --out, exit 2."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    out = tmp_path / "synth"
    code = "import sys; from virion.cli.main import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, "synth", "--out", str(out), "--per-class", "3", "--size", "256", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        preexec_fn=limit,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("virion: error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert len(errors) == 1 and "File too large" in errors[0] and str(out) in errors[0]

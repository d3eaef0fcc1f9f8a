"""Fault injection: a kill at any step of the save sequence loses nothing and repeats nothing.

`virion.training.faults.crash_point` marks every step of the commit protocol. One uninterrupted
run (`lab`) copies its run folder each time it passes a crash point: each copy is exactly the disk
state that a kill at that instant leaves, temporary files of half-done saves included. Each copy is
then resumed and must end as the uninterrupted run ended: history.csv with each epoch once and the
same rows, the same final model (same predictions; TensorFlow op determinism is on), no temporary
or resume file left. One real kill (`os._exit` in a child process) checks that a copy stands for
a kill. The run is a tiny transfer model: 2 head epochs, the switch to fine-tuning, 1 fine-tune epoch.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pytest
import tiny_run

from virion.errors import VirionError
from virion.run.loading import load_keras_model
from virion.training import faults
from virion.training.progress import is_temp_file

STEM = "xception_virus_classification"


@dataclass
class Lab:
    data: Path
    run: Path
    snapshots: dict[tuple[str, int], Path]
    probe: np.ndarray
    predictions: np.ndarray
    history: list[dict]
    cache_dir: Path


def _history(folder: Path) -> list[dict]:
    with open(folder / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _predict(model_folder: Path, probe: np.ndarray) -> np.ndarray:
    return load_keras_model(model_folder / f"{STEM}.keras").predict(probe, verbose=0)


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and is_temp_file(p)]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    import tensorflow as tf

    import virion.models.catalog as catalog
    import virion.models.registry as registry
    from virion.training.trainer import train_run

    base = tmp_path_factory.mktemp("crash-lab")
    data = tiny_run.make_images(base / "data")
    run = base / "reference"
    counts: dict[str, int] = {}
    snapshots: dict[tuple[str, int], Path] = {}

    def snapshot(phase: str) -> None:
        counts[phase] = counts.get(phase, 0) + 1
        if run.exists():
            dest = base / "snapshots" / f"{phase}-{counts[phase]}"
            shutil.copytree(run, dest)
            snapshots[(phase, counts[phase])] = dest

    cache_dir = tmp_path_factory.getbasetemp() / "virion-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VIRION_CACHE_DIR", str(cache_dir))
        mp.setattr(registry, "build_model", tiny_run.tiny_model)
        for name in catalog.MIN_INPUT_SIZE:
            mp.setitem(catalog.MIN_INPUT_SIZE, name, 8)
        tf.config.experimental.enable_op_determinism()
        faults.set_handler(snapshot)
        try:
            train_run(tiny_run.config_from(tiny_run.settings(data, run)), progress=False)
        finally:
            faults.set_handler(None)
        probe = np.random.default_rng(5).uniform(0, 255, (6, tiny_run.SIZE, tiny_run.SIZE, 3)).astype("float32")
        folder = run / "xception"
        yield Lab(data, run, snapshots, probe, _predict(folder, probe), _history(folder), cache_dir)
        from tensorflow.python.framework import config as tf_config

        if hasattr(tf_config, "disable_op_determinism"):
            tf_config.disable_op_determinism()


def _resume(run: Path):
    from virion.training.trainer import load_run_config, train_run

    return train_run(load_run_config(run), resume=True, progress=False)


def _assert_like_uninterrupted(lab: Lab, run: Path, where: str) -> None:
    folder = run / "xception"
    rows = _history(folder)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3], where
    assert rows == lab.history, f"{where}: the resumed run's history differs from the uninterrupted run's"
    np.testing.assert_allclose(_predict(folder, lab.probe), lab.predictions, atol=1e-6, err_msg=where)
    meta = json.loads((folder / "metadata.json").read_text())
    reference = json.loads((lab.run / "xception" / "metadata.json").read_text())
    assert meta["status"] == "trained" and meta["best_epoch"] == reference["best_epoch"], where
    assert _temp_files(run) == [], where
    assert sorted(p.name for p in (folder / "state").iterdir()) == ["progress.json"], where
    assert json.loads((folder / "state" / "progress.json").read_text())["phase"] == "done", where


# Each (phase, n): the n-th time the run passed that crash point. commit() runs for epoch 1, epoch 2,
# the switch to fine-tuning (3rd), epoch 3 (4th) and "done" (5th).
CRASH_POINTS = [
    ("epoch_end", 1),  # epoch 1 trained, nothing of it written
    ("best_save", 1),  # inside the best-weights save
    ("state_save", 2),  # inside the resume-model save of epoch 2
    ("before_commit", 2),  # epoch 2's files written, progress.json not yet (history row not committed)
    ("after_commit", 2),  # epoch 2 committed, history.csv not yet rewritten
    ("after_history", 2),  # history.csv rewritten, epoch 1's resume files not yet removed
    ("after_commit", 3),  # the switch to fine-tuning committed, nothing of fine-tuning done
    ("epoch_end", 3),  # the fine-tune epoch trained, nothing of it written
    ("final_save", 1),  # inside the final .keras save
    ("before_done", 1),  # final files and metadata.json written, "done" not committed
    ("after_done", 1),  # "done" committed, resume files not yet deleted
]


@pytest.mark.parametrize("phase,nth", CRASH_POINTS, ids=[f"{p}-{n}" for p, n in CRASH_POINTS])
def test_kill_at_each_step_then_resume_matches_the_uninterrupted_run(lab, tmp_path, phase, nth):
    snapshot = lab.snapshots[(phase, nth)]
    run = tmp_path / "run"
    shutil.copytree(snapshot, run)
    history = run / "xception" / "history.csv"
    if history.exists():  # what a kill left: never an epoch twice
        epochs = [int(r["epoch"]) for r in _history(run / "xception")]
        assert len(epochs) == len(set(epochs)), f"{phase}-{nth}: {epochs}"
    _resume(run)
    _assert_like_uninterrupted(lab, run, f"kill at {phase}-{nth}")


def test_a_kill_inside_a_save_leaves_a_temp_file_that_resume_removes(lab):
    """The copies are faithful: the one taken inside a save holds that save's temporary file."""
    assert [p.name for p in _temp_files(lab.snapshots[("state_save", 2)])] != []
    assert [p.name for p in _temp_files(lab.snapshots[("final_save", 1)])] != []


def test_real_kill_in_a_child_process_then_resume(lab, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, faults.ENV: "state_save:2", "VIRION_CACHE_DIR": str(lab.cache_dir)}
    proc = subprocess.run(
        [sys.executable, str(Path(tiny_run.__file__)), "train", str(lab.data), str(run)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == faults.CRASH_EXIT_CODE, proc.stderr[-2000:]
    assert _temp_files(run), "the kill inside the state save left no temporary file"
    assert json.loads((run / "xception" / "state" / "progress.json").read_text())["epochs_done"] == 1
    _resume(run)
    _assert_like_uninterrupted(lab, run, "os._exit inside the state save of epoch 2")


# ------------------------------------------------------------------ folders of virion 0.1
def test_finished_model_whose_state_was_deleted_before_done_is_not_retrained(lab, tmp_path):
    """virion 0.1 deleted the resume files before committing "done"; resume then trained from scratch."""
    run = tmp_path / "run"
    shutil.copytree(lab.run, run)
    state = run / "xception" / "state"
    legacy = {
        "epochs_done": 3,
        "phase": "fine_tune",
        "head_epochs": 2,
        "monitor": "val_accuracy",
        "best": 1.0,
        "best_epoch": 1,
        "best_logs": {},
        "train_seconds": 1.0,
        "train_images": 54,
    }
    (state / "progress.json").write_text(json.dumps(legacy))
    model_file = run / "xception" / f"{STEM}.keras"
    before = model_file.stat().st_mtime_ns
    seen = []

    class Epochs(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(epoch)

    from virion.training.trainer import load_run_config, train_run

    train_run(load_run_config(run), resume=True, progress=False, extra_callbacks=[Epochs()])
    assert seen == [] and model_file.stat().st_mtime_ns == before
    np.testing.assert_allclose(_predict(run / "xception", lab.probe), lab.predictions, atol=1e-6)
    assert json.loads((state / "progress.json").read_text())["phase"] == "done"
    assert [int(r["epoch"]) for r in _history(run / "xception")] == [1, 2, 3]


def test_legacy_history_with_an_uncommitted_repeat_is_repaired(lab, tmp_path):
    """virion 0.1 appended the history row before its commit: epochs 1, 2 on disk, 1 committed."""
    run = tmp_path / "run"
    shutil.copytree(lab.snapshots[("after_history", 1)], run)
    folder = run / "xception"
    state = folder / "state"
    progress = json.loads((state / "progress.json").read_text())
    os.replace(state / progress["model_file"], state / "last.keras")
    os.replace(state / progress["best_file"], state / "best.weights.h5")
    legacy = {
        k: progress[k]
        for k in ("epochs_done", "phase", "monitor", "best", "best_epoch", "best_logs", "train_seconds", "train_images")
    }
    (state / "progress.json").write_text(json.dumps(legacy))
    with open(folder / "history.csv", "a", newline="") as fh:  # the uncommitted row of epoch 2
        fh.write("2,0.5,0.5,0.5,0.5,0.5,0.03\n")
    _resume(run)
    _assert_like_uninterrupted(lab, run, "legacy folder")


# ------------------------------------------------------------------ resume refuses bad state files
def _snapshot_with_state_model(lab, tmp_path) -> tuple[Path, Path]:
    run = tmp_path / "run"
    shutil.copytree(lab.snapshots[("after_history", 1)], run)
    state = run / "xception" / "state"
    name = json.loads((state / "progress.json").read_text())["model_file"]
    return run, state / name


def test_resume_refuses_a_crafted_lambda_in_the_run_folder(lab, tmp_path):
    run, state_model = _snapshot_with_state_model(lab, tmp_path)
    marker = tmp_path / "pwned"
    target = str(marker)
    inputs = keras.Input((tiny_run.SIZE, tiny_run.SIZE, 3))
    outputs = keras.layers.Lambda(lambda x: (open(target, "w").write("ran"), x)[1])(inputs)
    crafted = keras.Model(inputs, outputs)
    crafted.compile(optimizer="adam", loss="mse")
    os.unlink(state_model)
    crafted.save(state_model)
    marker.unlink()  # building the model ran the function once, here in the test; loading must not
    with pytest.raises(VirionError) as info:
        _resume(run)
    message = str(info.value)
    assert "\n" not in message and str(state_model) in message and "delete" in message
    assert not marker.exists(), "code from the run folder ran"


def test_resume_with_a_truncated_state_model_says_how_to_go_on(lab, tmp_path):
    run, state_model = _snapshot_with_state_model(lab, tmp_path)
    data = state_model.read_bytes()
    state_model.write_bytes(data[: len(data) // 2])
    with pytest.raises(VirionError) as info:
        _resume(run)
    message = str(info.value)
    assert "\n" not in message and str(state_model) in message
    assert f"delete {state_model.parent}" in message
    # ... and following the advice works: that model trains again from its first epoch.
    shutil.rmtree(state_model.parent)
    _resume(run)
    _assert_like_uninterrupted(lab, run, "after deleting a damaged state folder")


# ------------------------------------------------------------------ NaN
def test_nan_loss_marks_the_model_failed_and_the_run_fails(lab, tmp_path, monkeypatch):
    import virion.models.registry as registry
    from virion.training.trainer import TrainingFailed, train_run

    class NaNLoss(keras.layers.Layer):
        """A NaN term added to the loss itself: no CPU kernel (ReLU/max on AMX) can swallow it."""

        def call(self, x):
            self.add_loss(keras.ops.sum(x) * float("nan"))
            return x

    def exploding(name, num_classes, input_size=16, weights="imagenet"):
        model = tiny_run.tiny_model(name, num_classes, input_size, weights)
        x = NaNLoss(name="nan")(model.layers[-3].output)
        out = model.get_layer("predictions")(model.get_layer("head_dropout")(x))
        return keras.Model(model.inputs, out, name=name)

    monkeypatch.setattr(registry, "build_model", exploding)
    run = tmp_path / "run"
    with pytest.raises(TrainingFailed) as info:
        train_run(tiny_run.config_from(tiny_run.settings(lab.data, run)), progress=False)
    assert "xception" in str(info.value) and "nan" in str(info.value).lower() and "\n" not in str(info.value)
    folder = run / "xception"
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["status"] == "failed" and "nan" in meta["failure"].lower()
    assert not list(folder.glob("*.keras")) and not list(folder.glob("*.h5"))
    assert json.loads((folder / "state" / "progress.json").read_text())["phase"] == "failed"
    assert [int(r["epoch"]) for r in _history(folder)] == [1]
    # A resume does not pretend otherwise.
    with pytest.raises(TrainingFailed):
        _resume(run)


# ------------------------------------------------------------------ evaluation and report
@pytest.mark.parametrize("phase", ["evaluate", "report"])
def test_kill_during_evaluation_or_report_then_resume(lab, tmp_path, phase):
    from virion import workflow
    from virion.training.trainer import load_run_config

    run = tmp_path / "run"
    shutil.copytree(lab.run, run)
    snapshot = tmp_path / "killed"

    def kill(at):
        if at == phase and not snapshot.exists():
            shutil.copytree(run, snapshot)

    faults.set_handler(kill)
    try:
        workflow.finish_run(run, progress=False)
    finally:
        faults.set_handler(None)
    workflow.train(load_run_config(snapshot), resume=True, progress=False)
    _assert_like_uninterrupted(lab, snapshot, f"kill during {phase}")
    assert (snapshot / "xception" / "evaluation" / "summary.json").is_file()
    assert (snapshot / "report.html").is_file()
    resumed, uninterrupted = (
        json.loads((r / "xception" / "evaluation" / "summary.json").read_text()) for r in (snapshot, run)
    )
    timing = [k for k in uninterrupted if "second" in k or "time" in k]
    for summary in (resumed, uninterrupted):
        for key in timing:
            summary.pop(key, None)
    assert resumed == uninterrupted

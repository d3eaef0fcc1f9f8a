"""Callbacks that make a training run measurable, checkpointed and resumable.

Order matters: Keras hands the same `logs` dict to each callback in list order, so
`ValidationMacroF1` must come before anything that reads `val_macro_f1` (checkpoint, history,
early stopping, the resumable state). `make_callbacks` builds the list in the right order.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
from sklearn.metrics import f1_score

from virion.training.run_folder import read_json, write_json
from virion.training.saving import save_keras, save_weights

HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "val_macro_f1", "lr")
LAST_MODEL = "last.keras"
BEST_WEIGHTS = "best.weights.h5"
PROGRESS_FILE = "progress.json"


def current_lr(model: keras.Model) -> float:
    try:
        return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    except Exception:  # noqa: BLE001 - an lr we cannot read is not worth failing a run for
        return float("nan")


class ValidationMacroF1(keras.callbacks.Callback):
    """Macro-F1 on the validation set each epoch, because accuracy hides the small classes.

    `val_x` is anything `model.predict` takes in a fixed order (a tf.data dataset without
    shuffling, or an array); `val_y` the integer labels in that same order.
    """

    def __init__(self, val_x: Any, val_y: np.ndarray, batch_size: int | None = None):
        super().__init__()
        self.val_x = val_x
        self.val_y = np.asarray(val_y)
        self.batch_size = batch_size

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        kwargs = {"batch_size": self.batch_size} if isinstance(self.val_x, np.ndarray) else {}
        probs = self.model.predict(self.val_x, verbose=0, **kwargs)
        pred = np.argmax(probs, axis=-1)
        logs["val_macro_f1"] = float(f1_score(self.val_y, pred, average="macro", zero_division=0))


class BestCheckpoint(keras.callbacks.Callback):
    """Keep the weights of the best epoch so far on `monitor` (higher is better).

    `best` and `best_epoch` survive a resume through progress.json (see `ResumableState`).
    """

    def __init__(self, path: str | Path, monitor: str = "val_accuracy", best: float | None = None,
                 best_epoch: int | None = None, best_logs: dict | None = None,
                 target: keras.Model | None = None):
        super().__init__()
        self.path = Path(path)
        self.target = target  # the model whose weights to keep, when not the one being fit
        self.monitor = monitor
        self.best = -math.inf if best is None else float(best)
        self.best_epoch = best_epoch
        self.best_logs = dict(best_logs or {})

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(value):
            return
        if value > self.best:
            self.best, self.best_epoch = float(value), epoch + 1
            self.best_logs = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
            save_weights(self.target or self.model, self.path)


class HistoryCSV(keras.callbacks.Callback):
    """history.csv with fixed columns, appended, so a resumed run continues the same file."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        row = {"epoch": epoch + 1, "lr": f"{current_lr(self.model):.6g}"}
        for key in HISTORY_COLUMNS[1:-1]:
            value = logs.get(key)
            row[key] = "" if value is None else f"{float(value):.6g}"
        new = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=HISTORY_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)


class ResumableState(keras.callbacks.Callback):
    """After every epoch: `state/last.keras` (model + optimizer) and `state/progress.json`.

    Written last in the callback list so the progress record includes this epoch's best. A
    process killed mid-epoch loses only that epoch; resume restarts it from `last.keras`.
    """

    def __init__(self, state_dir: str | Path, phase: str, checkpoint: BestCheckpoint,
                 timer: EpochTimer | None = None, extra: dict | None = None):
        super().__init__()
        self.state_dir = Path(state_dir)
        self.phase = phase
        self.checkpoint = checkpoint
        self.timer = timer
        self.extra = dict(extra or {})

    def on_epoch_end(self, epoch, logs=None):
        self.state_dir.mkdir(parents=True, exist_ok=True)
        save_keras(self.model, self.state_dir / LAST_MODEL)
        progress = {
            "epochs_done": epoch + 1,
            "phase": self.phase,
            "monitor": self.checkpoint.monitor,
            "best": None if not np.isfinite(self.checkpoint.best) else self.checkpoint.best,
            "best_epoch": self.checkpoint.best_epoch,
            "best_logs": self.checkpoint.best_logs,
            **self.extra,
        }
        if self.timer is not None:
            progress.update(self.timer.totals())
        write_json(self.state_dir / PROGRESS_FILE, progress)


def read_progress(state_dir: str | Path) -> dict | None:
    path = Path(state_dir) / PROGRESS_FILE
    return read_json(path) if path.exists() else None


class EpochTimer(keras.callbacks.Callback):
    """Training time without validation, for an honest images-per-second figure."""

    def __init__(self, train_seconds: float = 0.0, train_images: int = 0, images_per_epoch: int = 0):
        super().__init__()
        self.train_seconds = float(train_seconds)
        self.train_images = int(train_images)
        self.images_per_epoch = int(images_per_epoch)
        self._epoch_start = self._test_start = None
        self._test_seconds = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start, self._test_seconds = time.perf_counter(), 0.0

    def on_test_begin(self, logs=None):
        self._test_start = time.perf_counter()

    def on_test_end(self, logs=None):
        if self._test_start is not None:
            self._test_seconds += time.perf_counter() - self._test_start

    def on_epoch_end(self, epoch, logs=None):
        # The validation pass ran inside the epoch (before this hook); take it out.
        if self._epoch_start is not None:
            self.train_seconds += time.perf_counter() - self._epoch_start - self._test_seconds
            self.train_images += self.images_per_epoch

    def totals(self) -> dict:
        return {"train_seconds": self.train_seconds, "train_images": self.train_images}

    @property
    def images_per_second(self) -> float:
        return self.train_images / self.train_seconds if self.train_seconds > 0 else 0.0


def cosine_schedule(base_lr: float, total_epochs: int, first_epoch: int = 0):
    """Cosine decay by epoch index: a pure function of the epoch, so it resumes exactly."""
    span = max(1, total_epochs - first_epoch)

    def schedule(epoch, lr=None):
        t = min(max(epoch - first_epoch, 0), span) / span
        return float(base_lr * 0.5 * (1 + math.cos(math.pi * t)))
    return schedule


def make_callbacks(model_folder: str | Path, *, phase: str, val_x: Any, val_y: np.ndarray,
                   checkpoint_metric: str = "val_accuracy", progress: dict | None = None,
                   timer: EpochTimer, early_stopping: int | None = None, lr_schedule: str = "none",
                   base_lr: float = 1e-3, first_epoch: int = 0, total_epochs: int = 1,
                   tensorboard: bool = False, batch_size: int | None = None,
                   extra_state: dict | None = None,
                   checkpoint_model: keras.Model | None = None) -> tuple[list[keras.callbacks.Callback], BestCheckpoint]:
    """The callback list in the order the shared `logs` dict needs."""
    folder = Path(model_folder)
    state = folder / "state"
    state.mkdir(parents=True, exist_ok=True)
    progress = progress or {}
    checkpoint = BestCheckpoint(state / BEST_WEIGHTS, monitor=checkpoint_metric,
                                best=progress.get("best"), best_epoch=progress.get("best_epoch"),
                                best_logs=progress.get("best_logs"), target=checkpoint_model)
    callbacks: list[keras.callbacks.Callback] = [timer, ValidationMacroF1(val_x, val_y, batch_size)]
    if lr_schedule == "cosine":
        callbacks.append(keras.callbacks.LearningRateScheduler(cosine_schedule(base_lr, total_epochs, first_epoch)))
    elif lr_schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor=checkpoint_metric, mode="max",
                                                           factor=0.5, patience=2, min_lr=base_lr / 100))
    callbacks += [keras.callbacks.TerminateOnNaN(), checkpoint, HistoryCSV(folder / "history.csv")]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(folder / "tensorboard" / phase)))
    # State after checkpoint (records this epoch's best); early stopping last so the state of
    # the final epoch is always written.
    callbacks.append(ResumableState(state, phase, checkpoint, timer, extra_state))
    if early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=checkpoint_metric, mode="max",
                                                       patience=int(early_stopping)))
    return callbacks, checkpoint

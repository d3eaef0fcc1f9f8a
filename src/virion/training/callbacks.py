"""Callbacks that make a training run measurable, checkpointed and resumable.

Order matters: Keras hands the same `logs` dict to each callback in list order, so
`ValidationMacroF1` must come before anything that reads `val_macro_f1` (checkpoint, early
stopping, the commit), and `EpochCommit` comes last so it records every callback's update of the
epoch. `make_callbacks` builds the list in that order.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
from sklearn.metrics import f1_score

from virion.inference.batching import predict_arrays
from virion.run.layout import STATE_DIR
from virion.training.faults import crash_point
from virion.training.progress import (
    HISTORY_COLUMNS,
    PROGRESS_FILE,
    Progress,
    commit,
    is_temp_file,
    state_best_name,
    state_model_name,
)
from virion.training.saving import save_state_model, save_weights


def current_lr(model: keras.Model) -> float:
    try:
        return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    except Exception:  # noqa: BLE001 - an lr we cannot read is not worth failing a run for
        return float("nan")


class ValidationMacroF1(keras.callbacks.Callback):
    """Validation loss, accuracy and macro-F1 each epoch from ONE prediction pass over the validation set.

    Macro-F1 because accuracy hides the small classes. The trainer gives `fit` no validation_data:
    Keras' own validation pass was a second forward pass over the same images every epoch, plus a
    traced test function per model (~1 s per epoch and several seconds per model for ResNet-50 at
    72 px on 2 cores). val_loss and val_accuracy are computed here, from the same probabilities,
    with the model's compiled loss; a value Keras already put in `logs` is kept.

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
        if isinstance(self.val_x, np.ndarray):  # the shared batching path (same padding as predict/evaluate)
            probs = predict_arrays(self.model, self.val_x, batch_size=self.batch_size or 32)
        else:
            probs = self.model.predict(self.val_x, verbose=0)[: len(self.val_y)]  # drop multi-device padding
        pred = np.argmax(probs, axis=-1)
        logs.setdefault("val_loss", self._loss(probs))
        logs.setdefault("val_accuracy", float(np.mean(pred == self.val_y)) if len(self.val_y) else float("nan"))
        logs["val_macro_f1"] = float(f1_score(self.val_y, pred, average="macro", zero_division=0))

    def _loss(self, probs: np.ndarray) -> float:
        """The compiled loss (mean over the validation images) of these probabilities."""
        loss = getattr(self.model, "loss", None)
        if loss is None or not len(self.val_y):
            return float("nan")
        fn = keras.losses.get(loss)
        onehot = np.eye(probs.shape[-1], dtype=np.float32)[self.val_y]
        value = keras.ops.convert_to_numpy(fn(onehot, np.asarray(probs, dtype=np.float32)))
        return float(np.mean(value))


LAST_EPOCH = "last"  # checkpoint_metric that keeps the final epoch


class BestCheckpoint(keras.callbacks.Callback):
    """Keep the weights of the best epoch so far on `monitor` (higher is better); monitor "last"
    keeps every epoch's, so the final one is the "best".

    Each new best goes to its own file (`state/best-eNNNN.weights.h5`); the epoch's commit names
    it in progress.json, so a kill before the commit leaves the previous best in force.
    """

    def __init__(
        self,
        state_dir: str | Path,
        monitor: str = "val_accuracy",
        best: float | None = None,
        best_epoch: int | None = None,
        best_logs: dict | None = None,
        best_file: str | None = None,
        target: keras.Model | None = None,
    ):
        super().__init__()
        self.state_dir = Path(state_dir)
        self.target = target  # the model whose weights to keep, when not the one being fit
        self.monitor = monitor
        self.best = -math.inf if best is None else float(best)
        self.best_epoch = best_epoch
        self.best_logs = dict(best_logs or {})
        self.best_file = best_file

    def on_epoch_end(self, epoch, logs=None):
        value = float(epoch + 1) if self.monitor == LAST_EPOCH else (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(value):
            return
        if value > self.best:
            name = state_best_name(epoch + 1)
            save_weights(self.target or self.model, self.state_dir / name)
            self.best, self.best_epoch, self.best_file = float(value), epoch + 1, name
            self.best_logs = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}


class StopOnNaN(keras.callbacks.Callback):
    """Keras' TerminateOnNaN that also says when and where, so the model can be marked failed."""

    def __init__(self):
        super().__init__()
        self.failure: str | None = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._check((logs or {}).get("loss"), f"epoch {self._epoch + 1}, batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self._check((logs or {}).get("loss"), f"epoch {epoch + 1}")

    def _check(self, loss, where: str) -> None:
        if loss is None or self.failure is not None:
            return
        loss = float(np.asarray(loss))
        if not math.isfinite(loss):
            self.failure = f"the training loss became {loss} at {where}"
            self.model.stop_training = True


class _ResumableCounters:
    """Mixin for Keras callbacks whose counters must survive a resume (saved in progress.json).

    Keras resets the counters at every fit() call; the trainer fits one epoch per call, so the
    counters are reset once, then the committed ones are put back.
    """

    STATE: tuple[str, ...] = ()

    def __init__(self, *args, state: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.initial_state = dict(state or {})

    def on_train_begin(self, logs=None):
        if self.initial_state is None:
            return
        super().on_train_begin(logs)
        for key, value in self.initial_state.items():
            setattr(self, key, value)
        self.initial_state = None

    def get_state(self) -> dict:
        return {key: _plain(getattr(self, key, None)) for key in self.STATE}


class ResumableEarlyStopping(_ResumableCounters, keras.callbacks.EarlyStopping):
    """EarlyStopping whose counters survive a resume."""

    STATE = ("wait", "best", "best_epoch", "stopped_epoch")


class ResumablePlateau(_ResumableCounters, keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau whose counters survive a resume (the lr itself is in the optimizer)."""

    STATE = ("wait", "best", "cooldown_counter")


def _plain(value):
    if value is None:
        return None
    if isinstance(value, (np.generic, np.ndarray)):
        value = np.asarray(value).item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


class EpochsProgbar(keras.callbacks.ProgbarLogger):
    """Keras' progress display ("Epoch 3/20"), for a fit() called once per epoch."""

    def __init__(self, total_epochs: int):
        super().__init__()
        self.total_epochs = int(total_epochs)

    def set_params(self, params):
        super().set_params({**params, "epochs": self.total_epochs})


def history_row(epoch: int, logs: dict, lr: float) -> dict:
    row = {"epoch": epoch + 1, "lr": f"{lr:.6g}"}
    for key in HISTORY_COLUMNS[1:-1]:
        value = logs.get(key)
        row[key] = "" if value is None else f"{float(value):.6g}"
    return row


class EpochCommit(keras.callbacks.Callback):
    """The end of every epoch, as one ordered sequence with one commit point (last in the list).

    1. the resume model (model + optimizer) to `state/last-eNNNN.keras` (the best weights were
       written by BestCheckpoint just before); 2. progress.json naming them, with the history row
       and the counters (the commit); 3. history.csv derived from it; 4. the previous epoch's files
       removed. A loss that became NaN commits the epoch as "failed" instead.
    """

    def __init__(
        self,
        model_folder: str | Path,
        progress: Progress,
        phase: str,
        checkpoint: BestCheckpoint,
        timer: EpochTimer,
        nan_guard: StopOnNaN,
        counters: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.folder = Path(model_folder)
        self.state_dir = self.folder / STATE_DIR
        self.progress = progress
        self.phase = phase
        self.checkpoint = checkpoint
        self.timer = timer
        self.nan_guard = nan_guard
        self.counters = dict(counters or {})

    def on_epoch_end(self, epoch, logs=None):
        crash_point("epoch_end")
        logs = logs or {}
        row = history_row(epoch, logs, current_lr(self.model))
        old = self.progress
        common = dict(epochs_done=epoch + 1, history=[*old.history, row], **self.timer.totals())
        if self.nan_guard.failure is not None:
            new = dataclasses.replace(old, phase="failed", failure=self.nan_guard.failure, **common)
        else:
            name = state_model_name(epoch + 1)
            save_state_model(self.model, self.state_dir / name)
            ckpt = self.checkpoint
            new = dataclasses.replace(
                old,
                phase=self.phase,
                stopped=bool(self.model.stop_training),
                model_file=name,
                best_file=ckpt.best_file,
                monitor=ckpt.monitor,
                best=ckpt.best if np.isfinite(ckpt.best) else None,
                best_epoch=ckpt.best_epoch,
                best_logs=ckpt.best_logs,
                callbacks={key: cb.get_state() for key, cb in self.counters.items()},
                **common,
            )
        commit(self.folder, new)
        self.progress = new
        keep = {PROGRESS_FILE, new.model_file, new.best_file}
        for path in self.state_dir.iterdir():
            if path.is_file() and path.name not in keep and not is_temp_file(path):
                path.unlink(missing_ok=True)


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


def make_callbacks(
    model_folder: str | Path,
    *,
    phase: str,
    progress: Progress,
    val_x: Any,
    val_y: np.ndarray,
    timer: EpochTimer,
    checkpoint_metric: str = "val_accuracy",
    early_stopping: int | None = None,
    lr_schedule: str = "none",
    base_lr: float = 1e-3,
    first_epoch: int = 0,
    total_epochs: int = 1,
    tensorboard: bool = False,
    batch_size: int | None = None,
    checkpoint_model: keras.Model | None = None,
) -> tuple[list[keras.callbacks.Callback], EpochCommit]:
    """The callback list in the order the shared `logs` dict needs; the commit comes last."""
    folder = Path(model_folder)
    state = folder / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    checkpoint = BestCheckpoint(
        state,
        monitor=checkpoint_metric,
        best=progress.best,
        best_epoch=progress.best_epoch,
        best_logs=progress.best_logs,
        best_file=progress.best_file,
        target=checkpoint_model,
    )
    nan_guard = StopOnNaN()
    watched = "val_macro_f1" if checkpoint_metric == LAST_EPOCH else checkpoint_metric  # early stopping, plateau
    counters: dict[str, Any] = {}
    callbacks: list[keras.callbacks.Callback] = [timer, nan_guard, ValidationMacroF1(val_x, val_y, batch_size)]
    if lr_schedule == "cosine":
        callbacks.append(keras.callbacks.LearningRateScheduler(cosine_schedule(base_lr, total_epochs, first_epoch)))
    elif lr_schedule == "plateau":
        counters["plateau"] = ResumablePlateau(
            monitor=watched,
            mode="max",
            factor=0.5,
            patience=2,
            min_lr=base_lr / 100,
            state=progress.callbacks.get("plateau"),
        )
        callbacks.append(counters["plateau"])
    callbacks.append(checkpoint)
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(folder / "tensorboard" / phase)))
    if early_stopping:
        counters["early_stopping"] = ResumableEarlyStopping(
            monitor=watched,
            mode="max",
            patience=int(early_stopping),
            state=progress.callbacks.get("early_stopping"),
        )
        callbacks.append(counters["early_stopping"])
    # Last: it records this epoch's best, the counters after their update and whether to stop.
    committer = EpochCommit(folder, progress, phase, checkpoint, timer, nan_guard, counters)
    callbacks.append(committer)
    return callbacks, committer

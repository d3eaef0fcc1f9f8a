"""The progress record of one model (`state/progress.json`): the single commit point of its training.

A kill can land between any two writes. So everything an epoch produces (the resume model, the
best weights, the history row, the early-stopping and plateau counters) is first written under a
name of its own, and only the atomic rename of progress.json makes the epoch count. history.csv is
derived from the committed rows, so each finished epoch appears in it exactly once. A file in
`state/` that progress.json does not name, and any temporary file, is debris of an interrupted save
and is removed on the next start (`clean_model_folder`).

Phases: "head" -> ("fine_tune") -> "done"; or "failed" (the loss became NaN).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virion.atomic import TMP_MARK, atomic_write_text
from virion.errors import VirionError
from virion.run.layout import HISTORY_FILE, STATE_DIR
from virion.run.store import read_json, write_json
from virion.training.faults import crash_point

PROGRESS_FILE = "progress.json"
HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "val_macro_f1", "lr")
PHASES = ("head", "fine_tune", "done", "failed")
# The resume files of one committed epoch (a new name per epoch, so a half-finished save never
# replaces the file the last commit names).
_STATE_MODEL = "last-e{:04d}.keras"
_STATE_BEST = "best-e{:04d}.weights.h5"
_LEGACY_MODEL, _LEGACY_BEST = "last.keras", "best.weights.h5"  # written by virion 0.1
# atomic.atomic_write's names: ".<target>.<8 random chars>.tmp<suffix>"
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}" + re.escape(TMP_MARK) + r"(\.|$)")


@dataclass
class Progress:
    """What of one model's training is committed; see the module docstring."""

    phase: str = "head"
    epochs_done: int = 0  # committed epochs, head and fine-tune together
    head_epochs: int | None = None  # set once the head stage has ended
    stopped: bool = False  # early stopping ended the current stage
    model_file: str | None = None  # state/ file of the last committed epoch (model + optimizer)
    best_file: str | None = None  # state/ file of the best epoch's weights (full model)
    monitor: str | None = None
    best: float | None = None
    best_epoch: int | None = None
    best_logs: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    train_images: int = 0
    callbacks: dict[str, dict[str, Any]] = field(default_factory=dict)  # early stopping / plateau counters
    history: list[dict[str, Any]] = field(default_factory=list)  # committed history.csv rows
    feature_cache: int | None = None
    failure: str | None = None

    @property
    def finished(self) -> bool:
        return self.phase in ("done", "failed")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, where: str) -> Progress:
        if not isinstance(values, dict) or values.get("phase", "head") not in PHASES:
            raise VirionError(
                f"{where}: not a virion progress record; delete the model's state/ folder to train that model again"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def state_model_name(epoch: int) -> str:
    return _STATE_MODEL.format(epoch)


def state_best_name(epoch: int) -> str:
    return _STATE_BEST.format(epoch)


def read_progress(model_folder: str | Path) -> Progress | None:
    """The committed progress of a model folder, or None when it has none (a fresh start)."""
    folder = Path(model_folder)
    path = folder / STATE_DIR / PROGRESS_FILE
    if not path.is_file():
        return None
    values = read_json(path)
    progress = Progress.from_dict(values, str(path))
    if isinstance(values, dict) and "history" not in values:  # a folder of virion 0.1: adopt its files
        _adopt_legacy(folder, progress)
    return progress


def _adopt_legacy(folder: Path, progress: Progress) -> None:
    """virion 0.1 kept fixed state names and appended history.csv before its commit."""
    state = folder / STATE_DIR
    if progress.model_file is None and (state / _LEGACY_MODEL).is_file():
        progress.model_file = _LEGACY_MODEL
    if progress.best_file is None and (state / _LEGACY_BEST).is_file():
        progress.best_file = _LEGACY_BEST
    adopt_history(folder, progress)


def adopt_history(folder: str | Path, progress: Progress) -> None:
    """Take the rows of an existing history.csv up to the committed epoch, each epoch once."""
    rows, seen = [], set()
    path = Path(folder) / HISTORY_FILE
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                try:
                    epoch = int(row.get("epoch") or 0)
                except ValueError:
                    continue
                if 1 <= epoch <= progress.epochs_done and epoch not in seen:  # drop uncommitted repeats
                    seen.add(epoch)
                    rows.append({k: row.get(k, "") for k in HISTORY_COLUMNS})
    progress.history = rows


def commit(model_folder: str | Path, progress: Progress) -> None:
    """Make `progress` the committed state (atomic rename), then derive history.csv from it."""
    folder = Path(model_folder)
    crash_point("before_commit")
    write_json(folder / STATE_DIR / PROGRESS_FILE, progress.to_dict())
    crash_point("after_commit")
    write_history(folder, progress.history)
    crash_point("after_history")


def write_history(model_folder: str | Path, rows: list[dict[str, Any]]) -> Path:
    """history.csv from the committed rows (rewritten whole, atomically: a few dozen lines)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in HISTORY_COLUMNS})
    return atomic_write_text(Path(model_folder) / HISTORY_FILE, buffer.getvalue())


def is_temp_file(path: Path) -> bool:
    """A temporary file of `virion.atomic` (left behind only by a killed save)."""
    return bool(_TEMP_NAME.match(path.name))


def remove_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files of killed saves under `folder` (recursively); returns them."""
    removed = []
    for path in Path(folder).rglob("*"):
        if path.is_file() and is_temp_file(path):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def clean_model_folder(model_folder: str | Path, progress: Progress | None) -> None:
    """Remove temp files and every state/ file the committed progress does not name."""
    folder = Path(model_folder)
    if not folder.is_dir():
        return
    remove_temp_files(folder)
    state = folder / STATE_DIR
    if not state.is_dir():
        return
    keep = {PROGRESS_FILE}
    if progress is not None:
        keep |= {name for name in (progress.model_file, progress.best_file) if name}
    elif (folder / STATE_DIR / PROGRESS_FILE).exists():
        return  # unreadable progress: leave the folder for the user to look at
    for path in state.iterdir():
        if path.is_file() and path.name not in keep:
            path.unlink(missing_ok=True)

"""The run folder: a self-describing record of one `virion train` (layout in docs/architecture.md).

A run never silently replaces another: an existing non-empty folder is refused unless the user
says `--overwrite` (start again) or `--resume` (continue it).
"""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path
from typing import Any, Iterable

from virion.atomic import atomic_write_text
from virion.errors import VirionError

CONFIG_FILE = "config.json"
DATASET_FILE = "dataset.json"
SKIPPED_FILE = "skipped_files.txt"
METADATA_FILE = "metadata.json"
HISTORY_FILE = "history.csv"
STATE_DIR = "state"


def check_run_dir(out: str | Path, *, overwrite: bool = False) -> None:
    """Raise if `out` holds a previous run and `overwrite` is off (before any slow work)."""
    run_dir = Path(out)
    if run_dir.exists() and not run_dir.is_dir():
        raise VirionError(f"{run_dir}: exists and is not a folder; choose another --out")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise VirionError(f"{run_dir}: run folder already exists and is not empty; pass --overwrite "
                              f"to replace it, or --resume {run_dir} to continue it")


def create_run_dir(out: str | Path, *, overwrite: bool = False) -> Path:
    """Make `out` ready for a new run; refuse to clobber a previous one."""
    run_dir = Path(out)
    check_run_dir(run_dir, overwrite=overwrite)
    if run_dir.is_dir() and any(run_dir.iterdir()):
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def model_dir(run_dir: str | Path, model_name: str) -> Path:
    path = Path(run_dir) / model_name
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: str | Path, payload: Any) -> Path:
    """Write JSON atomically (temp file then rename) so a crash never leaves half a file."""
    return atomic_write_text(path, json.dumps(payload, indent=2, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VirionError(f"{path}: not found; is this a virion run folder?") from None
    except json.JSONDecodeError as exc:
        raise VirionError(f"{path}: not valid JSON ({exc}); the run folder is damaged") from None


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def write_config(run_dir: str | Path, config) -> Path:
    return write_json(Path(run_dir) / CONFIG_FILE, config.to_dict())


def write_dataset_info(run_dir: str | Path, dataset, failures: Iterable[tuple[Path, str]] = ()) -> Path:
    """dataset.json (classes, counts, ignored, fingerprint) and skipped_files.txt (decode failures)."""
    run_dir = Path(run_dir)
    failures = list(failures)
    info = {
        "root": str(dataset.root),
        "layout": dataset.layout,
        "class_names": list(dataset.class_names),
        "counts": dataset.counts(),
        "ignored": [{"path": str(p), "reason": r} for p, r in dataset.ignored],
        "skipped": [{"path": str(p), "reason": r} for p, r in failures],
        "fingerprint": dataset.fingerprint(),
    }
    write_json(run_dir / DATASET_FILE, info)
    write_skipped_files(run_dir, failures)
    return run_dir / DATASET_FILE


def write_skipped_files(run_dir: str | Path, failures: Iterable[tuple[Path, str]]) -> Path:
    path = Path(run_dir) / SKIPPED_FILE
    lines = [f"{p}\t{reason}" for p, reason in failures]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def library_versions() -> dict[str, str]:
    import keras
    import numpy
    import tensorflow

    from virion import __version__

    return {"python": platform.python_version(), "keras": keras.__version__,
            "tensorflow": tensorflow.__version__, "numpy": numpy.__version__, "virion": __version__}


def write_metadata(model_folder: str | Path, *, class_names: list[str], input_size: int, scaling: str,
                   weights: str, base_frozen: bool | None, config: dict, data_fingerprint: str,
                   best_epoch: int | None, best_val_accuracy: float | None,
                   best_val_macro_f1: float | None, train_seconds: float, images_per_second: float,
                   params: int, epochs_run: int, files: dict[str, str], **extra: Any) -> Path:
    """metadata.json: everything a later stage needs to use the model without the run's config."""
    payload = {
        "class_names": list(class_names),
        "input_size": int(input_size),
        "scaling": scaling,
        "weights": weights,
        "base_frozen": base_frozen,
        "config": config,
        "versions": library_versions(),
        "data_fingerprint": data_fingerprint,
        "best_epoch": best_epoch,
        "best_val_accuracy": best_val_accuracy,
        "best_val_macro_f1": best_val_macro_f1,
        "train_seconds": round(float(train_seconds), 3),
        "images_per_second": round(float(images_per_second), 2),
        "params": int(params),
        "epochs_run": int(epochs_run),
        "files": files,
        **extra,
    }
    return write_json(Path(model_folder) / METADATA_FILE, payload)

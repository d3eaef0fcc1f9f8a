"""Where things live in a run folder (see docs/architecture.md for the picture).

A run never silently replaces another: an existing non-empty folder is refused unless the user
says `--overwrite` (start again) or `--resume` (continue it).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from virion.errors import VirionError

CONFIG_FILE = "config.json"
DATASET_FILE = "dataset.json"
SKIPPED_FILE = "skipped_files.txt"
METADATA_FILE = "metadata.json"
HISTORY_FILE = "history.csv"
STATE_DIR = "state"
EVALUATION_DIR = "evaluation"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
COMPARISON_STEM = "comparison"
MODEL_FILE_SUFFIX = "_virus_classification"
RECOMMENDED_FILE = "recommended.json"  # the run's recommended classifier, chosen on validation
ENSEMBLE = "ensemble"  # the equal-weight mean of the run's models
WEIGHTED_ENSEMBLE = "ensemble-weighted"  # member weights fitted on the validation split
ENSEMBLE_NAMES = (ENSEMBLE, WEIGHTED_ENSEMBLE)  # run sub-folders holding only evaluation/ (no metadata.json)
# An evaluation whose test-time augmentation differs from the run's own setting (config.json `eval_tta`)
# goes to a side folder named for it, beside the run's evaluation, never over it.
TTA_VARIANT = "tta"  # `virion evaluate RUN --tta` on a run trained without --eval-tta
NO_TTA_VARIANT = "no-tta"  # `virion evaluate RUN --no-tta` on a run trained with --eval-tta


def check_run_dir(out: str | Path, overwrite: bool = False) -> None:
    """Raise if `out` holds a previous run and `overwrite` is off (before any slow work)."""
    run_dir = Path(out)
    if run_dir.exists() and not run_dir.is_dir():
        raise VirionError(f"{run_dir}: exists and is not a folder; choose another --out")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
        raise VirionError(
            f"{run_dir}: run folder already exists and is not empty; pass --overwrite "
            f"to replace it, or --resume {run_dir} to continue it"
        )


def create_run_dir(out: str | Path, overwrite: bool = False) -> Path:
    """Make `out` ready for a new run; refuse to clobber a previous one."""
    run_dir = Path(out)
    check_run_dir(run_dir, overwrite=overwrite)
    if run_dir.is_dir() and any(run_dir.iterdir()):
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def model_dir(run_dir: str | Path, name: str) -> Path:
    """The folder of model `name` in a run (created)."""
    path = Path(run_dir) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_dirs(run_dir: str | Path) -> list[Path]:
    """Model sub-folders of a run (those holding a metadata.json), sorted by name."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise VirionError(f"{run_dir}: run folder not found; pass a folder written by `virion train` (runs/NAME)")
    found = sorted(p.parent for p in run_dir.glob(f"*/{METADATA_FILE}"))
    if not found:
        raise VirionError(
            f"{run_dir}: no trained models in this run folder (no */{METADATA_FILE}); train first with `virion train`"
        )
    return found


def model_file_stem(name: str) -> str:
    """`resnet50` -> `resnet50_virus_classification` (the reference's file names)."""
    return f"{name}{MODEL_FILE_SUFFIX}"


def data_slug(data: str | Path) -> str:
    """A folder-name-safe name for a dataset path: `/data/TEM virus/` -> `TEM-virus`."""
    name = Path(str(data).rstrip("/\\")).name or "data"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "data"


def tta_variant(tta: bool, configured: bool) -> str | None:
    """None when an evaluation's TTA is the run's own setting, else the side folders' suffix."""
    if bool(tta) == bool(configured):
        return None
    return TTA_VARIANT if tta else NO_TTA_VARIANT


def _suffix(data_name: str | None, variant: str | None) -> str:
    return "".join(f"-{part}" for part in (data_slug(data_name) if data_name else None, variant) if part)


def evaluation_dir(model_folder: str | Path, data_name: str | None = None, variant: str | None = None) -> Path:
    """`<model>/evaluation/` for the run's own test split, `<model>/evaluation-<data>/` for other data,
    `...-tta/` (`...-no-tta/`) for an evaluation whose TTA differs from the run's setting (`tta_variant`).

    Evaluating on other data, or with other TTA, never replaces the run's own evaluation.
    """
    return Path(model_folder) / f"{EVALUATION_DIR}{_suffix(data_name, variant)}"


def report_file(run_dir: str | Path, data_name: str | None = None, variant: str | None = None) -> Path:
    """`report.html`, or `report-<data>[-tta].html` for an evaluation on other data or with other TTA."""
    return Path(run_dir) / f"report{_suffix(data_name, variant)}.html"


def comparison_stem(data_name: str | None = None, variant: str | None = None) -> str:
    """`comparison` (the run's own test split) or `comparison-<data>[-tta]` (other data, other TTA)."""
    return f"{COMPARISON_STEM}{_suffix(data_name, variant)}"


def ensemble_dirs(run_dir: str | Path, data_name: str | None = None, variant: str | None = None) -> list[Path]:
    """The ensemble folders of a run that hold an evaluation (`ensemble/`, `ensemble-weighted/`), in that order."""
    run_dir = Path(run_dir)
    return [
        run_dir / name
        for name in ENSEMBLE_NAMES
        if (evaluation_dir(run_dir / name, data_name, variant) / SUMMARY_FILE).is_file()
    ]

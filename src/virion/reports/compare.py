"""One table of every model from one or more runs: quality, size and speed side by side.

Reads what training (`metadata.json`, the `.keras` file) and evaluation (`evaluation/summary.json`)
already wrote, so comparing is instant and never re-runs a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from virion.errors import VirionError
from virion.evaluation.evaluate import EVALUATION_DIR, model_dirs, model_file
from virion.evaluation.metrics import write_csv
from virion.reports import plots

COLUMNS = (
    ("run", "run"),
    ("model", "model"),
    ("accuracy", "accuracy"),
    ("macro_precision", "macro precision"),
    ("macro_recall", "macro recall"),
    ("macro_f1", "macro F1"),
    ("weighted_f1", "weighted F1"),
    ("params", "parameters"),
    ("size_mb", "size (MB)"),
    ("train_seconds", "training time (s)"),
    ("inference_images_per_second", "inference (images/s)"),
    ("weights", "weights"),
)


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise VirionError(f"{path}: cannot read it ({exc}); re-run `virion train` / `virion evaluate`") from None


def model_row(run_dir: Path, model_dir: Path) -> dict:
    """The comparison row of one trained and evaluated model."""
    meta = _load(model_dir / "metadata.json")
    summary_path = model_dir / EVALUATION_DIR / "summary.json"
    if not summary_path.is_file():
        raise VirionError(f"{model_dir}: not evaluated yet (no {EVALUATION_DIR}/summary.json); "
                          f"run `virion evaluate {run_dir}` first")
    summary = _load(summary_path)
    # The .h5 is the inference model (no optimizer state); the .keras also carries Adam's moments
    # for further training, which would triple the figure without saying anything about the model.
    h5_files = sorted(model_dir.glob("*.h5"))
    size_mb = (h5_files[0] if h5_files else model_file(model_dir)).stat().st_size / 1e6
    row = {
        "run": run_dir.name,
        "model": model_dir.name,
        "accuracy": float(summary["accuracy"]),
        "macro_precision": float(summary["macro_precision"]),
        "macro_recall": float(summary["macro_recall"]),
        "macro_f1": float(summary["macro_f1"]),
        "weighted_f1": float(summary["weighted_f1"]),
        "params": int(meta["params"]) if meta.get("params") is not None else None,
        "size_mb": float(size_mb),
        "train_seconds": float(meta["train_seconds"]) if meta.get("train_seconds") is not None else None,
        "inference_images_per_second": float(summary["inference_images_per_second"]),
        "weights": _weights_label(meta.get("weights")),
    }
    return row


def _weights_label(weights) -> str:
    if weights is None:
        return ""
    text = str(weights)
    return {"none": "random init", "imagenet": "ImageNet"}.get(text.lower(), Path(text).name if "/" in text else text)


def format_cell(key: str, value) -> str:
    if value is None:
        return "–"
    if key in ("params",):
        return f"{int(value):,}"
    if key == "size_mb":
        return f"{value:.2f}"
    if key == "inference_images_per_second":
        return f"{value:.1f}"
    if key == "train_seconds":
        return f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def markdown_table(rows: Sequence[dict]) -> str:
    """The comparison as a Markdown table (also what `virion compare` prints)."""
    header = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "|".join("---" if k in ("run", "model", "weights") else "---:" for k, _ in COLUMNS) + "|"
    body = ["| " + " | ".join(format_cell(k, row.get(k)).replace("|", "\\|") for k, _ in COLUMNS) + " |"
            for row in rows]
    return "\n".join([header, rule, *body]) + "\n"


def compare_runs(run_dirs: Sequence[Path], out_dir: Path | None = None) -> list[dict]:
    """Collect one row per model of every run; write comparison.md/.csv/.png into out_dir.

    out_dir defaults to the run folder when a single run is compared.
    """
    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise VirionError("compare needs at least one run folder (runs/NAME)")
    if out_dir is None:
        if len(run_dirs) != 1:
            raise VirionError("comparing several runs: say where to write the table with --out DIR")
        out_dir = run_dirs[0]
    out_dir = Path(out_dir)
    rows = [model_row(run_dir, model_dir) for run_dir in run_dirs for model_dir in model_dirs(run_dir)]
    several = len({r["run"] for r in rows}) > 1
    for row in rows:  # the chart's legend: the model alone unless several runs are mixed
        row["label"] = f"{row['run']}/{row['model']}" if several else row["model"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.md").write_text(markdown_table(rows), encoding="utf-8")
    write_csv([{k: row[k] for k, _ in COLUMNS} for row in rows], out_dir / "comparison.csv")
    plots.plot_comparison(rows, out_dir / "comparison.png")
    return rows

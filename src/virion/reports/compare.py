"""One table of every model from one or more runs: quality, size and speed side by side.

Reads what training (`metadata.json`, the model files) and evaluation (`evaluation/summary.json`)
already wrote, so comparing is instant and never re-runs a model. A run's ensembles
(`ensemble/`, `ensemble-weighted/`: evaluation only, no model files) come after its models. With
`data_name`, the evaluations on other data (`evaluation-<data>/`) are compared instead, into
`comparison-<data>.*`. With `variant` ("tta"/"no-tta", `layout.tta_variant`), the evaluations whose
test-time augmentation differs from the run's own setting are compared (`comparison[-<data>]-tta.*`).
Every row says in its TTA column how its probabilities were made.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from virion.atomic import atomic_write_text
from virion.errors import VirionError
from virion.evaluation.metrics import write_csv
from virion.reports import plots
from virion.run import layout, store
from virion.run.loading import TEXTURE_KIND, find_model_file

COLUMNS = (
    ("run", "run"),
    ("model", "model"),
    ("tta", "TTA"),  # "8-way": each image's probabilities are the mean over its 8 flips/90-degree turns; "none"
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
    ("status", "status"),  # "trained", or "FAILED: why" for a model whose training failed (no metrics)
)


def tta_label(summary: dict) -> str:
    """The TTA column of an evaluation: "8-way" or "none" (summaries older than the setting: none)."""
    return f"{int(summary.get('tta_views') or 8)}-way" if summary.get("tta") else "none"


def evaluate_hint(run_dir: Path, data_name: str | None = None, variant: str | None = None) -> str:
    """The `virion evaluate` command that writes the evaluation a comparison or report is missing."""
    return (
        f"virion evaluate {run_dir}"
        + (f" --data {data_name}" if data_name else "")
        + (f" --{variant}" if variant else "")  # layout's variants are the flags: --tta, --no-tta
    )


def model_row(run_dir: Path, model_dir: Path, data_name: str | None = None, variant: str | None = None) -> dict:
    """The comparison row of one trained and evaluated model."""
    meta = store.read_json(model_dir / layout.METADATA_FILE)
    if meta.get("status") == "failed":  # no model file and no evaluation: a row that says so
        return {
            "run": run_dir.name,
            "model": model_dir.name,
            "weights": weights_label(meta.get("weights")),
            "status": f"FAILED: {meta.get('failure') or 'training failed'}",
        }
    evaluation = layout.evaluation_dir(model_dir, data_name, variant)
    summary_path = evaluation / layout.SUMMARY_FILE
    if not summary_path.is_file():
        raise VirionError(
            f"{model_dir}: not evaluated yet (no {evaluation.name}/{layout.SUMMARY_FILE}); "
            f"run `{evaluate_hint(run_dir, data_name, variant)}` first"
        )
    summary = store.read_json(summary_path)
    size_mb = model_size_mb(model_dir, meta)
    row = {
        "run": run_dir.name,
        "model": model_dir.name,
        "tta": tta_label(summary),
        **_scores(summary),
        "params": int(meta["params"]) if meta.get("params") is not None else None,
        "size_mb": float(size_mb),
        "train_seconds": float(meta["train_seconds"]) if meta.get("train_seconds") is not None else None,
        "inference_images_per_second": float(summary["inference_images_per_second"]),
        "weights": weights_label(meta.get("weights")),
        "status": "trained",
    }
    return row


def _scores(summary: dict) -> dict[str, float]:
    """The comparison's score columns, read from an evaluation's summary.json."""
    keys = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1")
    return {key: float(summary[key]) for key in keys}


def model_size_mb(model_dir: Path, meta: dict) -> float:
    """What must be kept to use the model, in MB."""
    if meta.get("kind") == TEXTURE_KIND:  # JSON + arrays: every file metadata names
        files = [model_dir / f for k, f in (meta.get("files") or {}).items() if k != "history"]
        return sum(f.stat().st_size for f in files if f.is_file()) / 1e6
    # The .h5 is the inference model (no optimizer state); the .keras also carries Adam's moments
    # for further training, which would triple the figure without saying anything about the model.
    h5_files = sorted(model_dir.glob("*.h5"))
    return (h5_files[0] if h5_files else find_model_file(model_dir)).stat().st_size / 1e6


def ensemble_row(run_dir: Path, ensemble_dir: Path, data_name: str | None = None, variant: str | None = None) -> dict:
    """The comparison row of one of the run's ensembles (`virion evaluate` wrote its summary.json)."""
    summary = store.read_json(layout.evaluation_dir(ensemble_dir, data_name, variant) / layout.SUMMARY_FILE)
    members = [str(m) for m in summary.get("members") or []]
    weights = summary.get("weights")
    how = (
        "weighted " + ", ".join(f"{m} {float(w):.2f}" for m, w in zip(members, weights)) + " (fitted on validation)"
        if weights
        else f"mean of {', '.join(members)}"
    )
    return {
        "run": run_dir.name,
        "model": ensemble_dir.name,
        "tta": tta_label(summary),
        **_scores(summary),
        "params": None,
        "size_mb": None,
        "train_seconds": None,
        "inference_images_per_second": float(summary.get("inference_images_per_second") or 0.0),
        "weights": "",
        "status": how,
    }


def tta_title(rows: Sequence[dict]) -> str:
    """What a title says of TTA: " with 8-way TTA" when every row used it, a pointer to the column when rows differ."""
    used = {row.get("tta") for row in rows if row.get("tta")}
    if not used or used == {"none"}:
        return ""
    return f" with {used.pop()} TTA" if len(used) == 1 else " (TTA differs by row: see the TTA column)"


def weights_label(weights) -> str:
    if weights is None:
        return ""
    text = str(weights)
    return {"none": "random init", "imagenet": "ImageNet"}.get(text.lower(), Path(text).name if "/" in text else text)


def short_number(value: float, decimals: int = 4) -> str:
    """At most `decimals` decimals and 4 significant digits: 0.5455, 95.12, 123.5, 1,234, 12,346."""
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    whole_digits = len(str(int(abs(value)))) if abs(value) >= 1 else 0
    return f"{value:,.{max(0, min(decimals, 4 - whole_digits))}f}"


def format_cell(key: str, value) -> str:
    if value is None:
        return "–"
    if key in ("params",):
        return f"{int(value):,}"
    if key == "size_mb":
        return short_number(value, 2)
    if key == "inference_images_per_second":
        return short_number(value, 1)
    if key == "train_seconds":
        return f"{value:,.0f}"
    if isinstance(value, float):
        return short_number(value)
    return str(value)


def markdown_table(rows: Sequence[dict]) -> str:
    """The comparison as a Markdown table (also what `virion compare` prints)."""
    header = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "|".join("---" if k in ("run", "model", "weights") else "---:" for k, _ in COLUMNS) + "|"
    body = [
        "| " + " | ".join(format_cell(k, row.get(k)).replace("|", "\\|") for k, _ in COLUMNS) + " |" for row in rows
    ]
    return "\n".join([header, rule, *body]) + "\n"


def compare_runs(
    run_dirs: Sequence[Path], out_dir: Path | None = None, data_name: str | None = None, variant: str | None = None
) -> list[dict]:
    """Collect one row per model of every run; write comparison.md/.csv/.png into out_dir.

    out_dir defaults to the run folder when a single run is compared. data_name: compare the
    evaluations on that other data (written as comparison-<data>.*). variant: the evaluations with
    the other TTA setting (`layout.tta_variant`; written as comparison[-<data>]-tta.*).
    """
    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise VirionError("compare needs at least one run folder (runs/NAME)")
    if out_dir is None:
        if len(run_dirs) != 1:
            raise VirionError("comparing several runs: say where to write the table with --out DIR")
        out_dir = run_dirs[0]
    out_dir = Path(out_dir)
    rows = []
    for run_dir in run_dirs:
        rows += [model_row(run_dir, model_dir, data_name, variant) for model_dir in layout.model_dirs(run_dir)]
        rows += [
            ensemble_row(run_dir, folder, data_name, variant)
            for folder in layout.ensemble_dirs(run_dir, data_name, variant)
        ]
    several = len({r["run"] for r in rows}) > 1
    for row in rows:  # the chart's legend: the model alone unless several runs are mixed
        row["label"] = f"{row['run']}/{row['model']}" if several else row["model"]
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = layout.comparison_stem(data_name, variant)
    atomic_write_text(out_dir / f"{stem}.md", markdown_table(rows))
    write_csv([{k: row.get(k) for k, _ in COLUMNS} for row in rows], out_dir / f"{stem}.csv")
    shown = [r for r in rows if r["status"] == "trained" or r["model"] in layout.ENSEMBLE_NAMES]
    plots.plot_comparison(
        shown,
        out_dir / f"{stem}.png",
        title="Model comparison" + (f" on {data_name}" if data_name else "") + tta_title(shown),
    )
    return rows

"""Classification metrics: one-vs-rest counts, the reference formulas, and sklearn's report.

The reference formulas (Accuracy, Recall, Precision, F1 from TP/TN/FP/FN) are the ones the TEM
virus literature reports per class, so we compute them ourselves from the confusion matrix; a class
that is never predicted or never present has an empty denominator, and we give 0 with a warning
instead of NaN so that tables and plots stay usable. sklearn's `classification_report` is written
beside them (same numbers for precision/recall/F1, plus support and averages).
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix

COUNT_KEYS = ("TP", "TN", "FP", "FN")
MEASURE_KEYS = ("accuracy", "recall", "precision", "f1")


def confusion(y_true, y_pred, n: int) -> np.ndarray:
    """Confusion matrix (n, n) of counts: rows are true classes, columns predicted classes.

    `labels=range(n)` keeps absent classes as zero rows/columns, so the matrix always lines up
    with the class list.
    """
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= n):
            raise ValueError(f"{name} has labels outside 0..{n - 1}")
    if y_true.size == 0:
        return np.zeros((n, n), dtype=np.int64)
    return confusion_matrix(y_true, y_pred, labels=list(range(n))).astype(np.int64)


def per_class_counts(cm_or_y_true, y_pred=None, n: int | None = None) -> dict[str, np.ndarray]:
    """One-vs-rest TP, TN, FP, FN per class, as a dict of int64 arrays of length n.

    Call with a confusion matrix (`per_class_counts(cm)`) or with labels
    (`per_class_counts(y_true, y_pred, n)`).
    """
    if y_pred is None:
        cm = np.asarray(cm_or_y_true, dtype=np.int64)
        if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
            raise ValueError(f"expected a square confusion matrix, got shape {cm.shape}")
    else:
        if n is None:
            raise ValueError("per_class_counts(y_true, y_pred, n) needs n, the number of classes")
        cm = confusion(cm_or_y_true, y_pred, n)
    tp = np.diag(cm).astype(np.int64)
    fp = cm.sum(axis=0) - tp  # predicted as the class, but truly another
    fn = cm.sum(axis=1) - tp  # truly the class, but predicted as another
    tn = cm.sum() - tp - fp - fn
    return {"TP": tp, "TN": tn.astype(np.int64), "FP": fp.astype(np.int64), "FN": fn.astype(np.int64)}


def _safe_ratio(num: np.ndarray, den: np.ndarray, what: str, why: str, names: Sequence[str]) -> np.ndarray:
    """num/den elementwise, 0 where den == 0, with one warning naming the affected classes."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    ok = den != 0
    np.divide(num, den, out=out, where=ok)
    empty = np.flatnonzero(~ok)
    if empty.size:
        listed = ", ".join(repr(str(names[i])) for i in empty)
        warnings.warn(f"{what} set to 0 for class {listed}: {why}", RuntimeWarning, stacklevel=3)
    return out


def reference_measures(tp, tn, fp, fn, class_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The four reference measures per class, as float64 arrays; 0 (and a warning) if undefined.

    Accuracy = (TP+TN)/(TP+TN+FP+FN), Recall = TP/(TP+FN), Precision = TP/(TP+FP),
    F1 = 2·P·R/(P+R).
    """
    tp, tn, fp, fn = (np.atleast_1d(np.asarray(a, dtype=np.int64)) for a in (tp, tn, fp, fn))
    names = list(class_names) if class_names is not None else [str(i) for i in range(tp.size)]
    if len(names) != tp.size:
        raise ValueError(f"{len(names)} class names for {tp.size} classes")
    accuracy = _safe_ratio(tp + tn, tp + tn + fp + fn, "accuracy", "no samples at all", names)
    recall = _safe_ratio(tp, tp + fn, "recall", "never present in the true labels", names)
    precision = _safe_ratio(tp, tp + fp, "precision", "never predicted", names)
    f1 = _safe_ratio(2 * precision * recall, precision + recall, "F1", "precision and recall are both 0", names)
    return {"accuracy": accuracy, "recall": recall, "precision": precision, "f1": f1}


def per_class_table(cm: np.ndarray, class_names: Sequence[str]) -> list[dict]:
    """Rows of class, TP, TN, FP, FN, accuracy, recall, precision, f1: the per-class CSV."""
    counts = per_class_counts(cm)
    measures = reference_measures(*(counts[k] for k in COUNT_KEYS), class_names=class_names)
    rows = []
    for i, name in enumerate(class_names):
        row = {"class": name}
        row.update({k: int(counts[k][i]) for k in COUNT_KEYS})
        row.update({k: float(measures[k][i]) for k in MEASURE_KEYS})
        rows.append(row)
    return rows


def write_csv(rows: list[dict], path: Path) -> Path:
    """Write dict rows (same keys) as CSV; floats to 6 decimals so files diff cleanly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0].keys()) if rows else []
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return path


def report_dict(y_true, y_pred, class_names: Sequence[str]) -> dict:
    """sklearn's classification report as a dict (labels fixed to the class list, zero_division=0)."""
    return classification_report(
        y_true,
        y_pred,
        labels=list(range(len(class_names))),
        target_names=[str(c) for c in class_names],
        output_dict=True,
        zero_division=0,
    )


def report_text(y_true, y_pred, class_names: Sequence[str]) -> str:
    """sklearn's classification report as the familiar text table."""
    return classification_report(
        y_true,
        y_pred,
        labels=list(range(len(class_names))),
        target_names=[str(c) for c in class_names],
        digits=4,
        zero_division=0,
    )


def report_rows(report: dict) -> list[dict]:
    """Flatten sklearn's report dict into CSV rows: one per class, then accuracy and the averages."""
    rows = []
    for label, value in report.items():
        if isinstance(value, dict):
            rows.append(
                {
                    "label": label,
                    "precision": float(value["precision"]),
                    "recall": float(value["recall"]),
                    "f1-score": float(value["f1-score"]),
                    "support": int(value["support"]),
                }
            )
        else:  # "accuracy" is a bare float; support is the total, as in sklearn's text table
            total = int(report.get("macro avg", {}).get("support", 0))
            rows.append({"label": label, "precision": "", "recall": "", "f1-score": float(value), "support": total})
    return rows


def save_classification_report(y_true, y_pred, class_names: Sequence[str], out_dir: Path) -> dict:
    """Write classification_report.txt/.json/.csv into out_dir and return the report dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = report_dict(y_true, y_pred, class_names)
    (out_dir / "classification_report.txt").write_text(report_text(y_true, y_pred, class_names), encoding="utf-8")
    (out_dir / "classification_report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    write_csv(report_rows(report), out_dir / "classification_report.csv")
    return report


def log_loss(labels, probs, eps: float = 1e-15) -> float:
    """Mean negative log-probability of the true class (0 for no images): how well-calibrated and sure."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if labels.size == 0:
        return 0.0
    probs = np.asarray(probs, dtype=np.float64)
    return float(-np.mean(np.log(np.clip(probs[np.arange(labels.size), labels], eps, 1.0))))


def expected_calibration_error(labels, probs, bins: int = 10) -> float:
    """ECE: the confidence-weighted gap between top-class confidence and accuracy, over equal-width bins."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if labels.size == 0:
        return 0.0
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    gap = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            gap += mask.mean() * abs(confidence[mask].mean() - correct[mask].mean())
    return float(gap)

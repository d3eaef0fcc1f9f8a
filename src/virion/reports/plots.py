"""PNG figures people look at: confusion heatmaps, training curves, mistakes grid, comparison bars.

Matplotlib runs on the Agg backend (no display, works on servers and in CI). Each `*_figure`
function builds and returns the figure so tests can inspect it; each `plot_*` function saves
it, closes it (figures leak memory otherwise) and returns the path written.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI = 110


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def confusion_figure(cm: np.ndarray, class_names: Sequence[str], *, normalize: bool = False, title: str = ""):
    """Seaborn heatmap of a confusion matrix, rows = true class, columns = predicted class.

    The figure grows with the class count and the x labels are rotated, so 14 classes with long
    names ("Nipah virus", "Rift Valley") stay readable. `normalize` divides each row by its total
    (recall on the diagonal); an empty row stays 0.
    """
    cm = np.asarray(cm)
    n = len(class_names)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix shape {cm.shape} does not match {n} class names")
    if normalize:
        totals = cm.sum(axis=1, keepdims=True).astype(np.float64)
        data = np.divide(cm, totals, out=np.zeros(cm.shape, dtype=np.float64), where=totals != 0)
        fmt, vmax, cbar_label = ".2f", 1.0, "fraction of true class"
    else:
        data, fmt, vmax, cbar_label = cm, "d", None, "images"
    side = max(4.0, 0.6 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    annot_size = 10 if n <= 8 else (8 if n <= 16 else 6)
    sns.heatmap(
        data, annot=n <= 30, fmt=fmt, cmap="Blues", vmin=0, vmax=vmax, square=True, linewidths=0.5,
        linecolor="white", xticklabels=list(class_names), yticklabels=list(class_names), ax=ax,
        cbar_kws={"label": cbar_label, "shrink": 0.8}, annot_kws={"size": annot_size},
    )
    if not normalize:  # counts are whole numbers: no 0.25-step colour-bar ticks
        ax.collections[0].colorbar.locator = MaxNLocator(integer=True)
        ax.collections[0].colorbar.update_ticks()
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_xticklabels(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticklabels(ax.get_yticklabels(), rotation=0)
    ax.set_title(title or ("Confusion matrix (row-normalized)" if normalize else "Confusion matrix (counts)"))
    return fig


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: Path, *, normalize: bool = False,
                   title: str = "") -> Path:
    """Save the confusion heatmap as PNG; returns the path."""
    return _save(confusion_figure(cm, class_names, normalize=normalize, title=title), path)


def read_history(history_csv: Path) -> dict[str, list[float]]:
    """history.csv as column -> list of floats (missing or blank cells become NaN)."""
    with Path(history_csv).open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if key is None:
                continue
            try:
                columns.setdefault(key, []).append(float(value))
            except (TypeError, ValueError):
                columns.setdefault(key, []).append(float("nan"))
    return columns


def curves_figure(history: dict[str, list[float]], title: str = ""):
    """Accuracy and loss per epoch, training and validation, side by side."""
    epochs = history.get("epoch")
    n = max((len(v) for v in history.values()), default=0)
    x = np.asarray(epochs, dtype=float) if epochs and len(epochs) == n else np.arange(1, n + 1)
    if epochs and len(epochs) == n and x.size and x.min() == 0:
        x = x + 1  # Keras counts epochs from 0 in CSVLogger; people count from 1
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("accuracy", "loss")):
        for key, label, style in ((metric, "training", "-o"), (f"val_{metric}", "validation", "-s")):
            if key in history:
                ax.plot(x, history[key], style, markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.set_title(metric.capitalize())
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        else:
            ax.text(0.5, 0.5, f"no {metric} in history", ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(history: dict[str, list[float]] | Path | str, path: Path, *, title: str = "") -> Path:
    """Save the accuracy/loss curves (from a history dict or a history.csv path) as PNG."""
    if not isinstance(history, dict):
        history = read_history(Path(history))
    return _save(curves_figure(history, title=title), path)


def _as_display(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 3 and image.shape[-1] == 3 and np.array_equal(image[..., 0], image[..., 1]):
        image = image[..., 0]  # grayscale replicated to 3 channels
    return image.astype(np.uint8) if image.dtype != np.uint8 and image.max() > 1 else image


def mistakes_figure(images: Sequence[np.ndarray], true_names: Sequence[str], pred_names: Sequence[str],
                    confidences: Sequence[float], *, columns: int = 4, title: str = ""):
    """Grid of misclassified images, titled true / predicted / confidence; a placeholder if none."""
    count = len(images)
    if count == 0:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no mistakes on this set", ha="center", va="center", fontsize=14)
        if title:
            ax.set_title(title)
        return fig
    columns = min(columns, count)
    rows = int(np.ceil(count / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.8 * columns, 3.0 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, true, pred, conf in zip(axes.ravel(), images, true_names, pred_names, confidences):
        shown = _as_display(image)
        ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=255 if shown.dtype == np.uint8 else 1)
        ax.set_title(f"true: {true}\npred: {pred} ({conf:.0%})", fontsize=9, color="darkred")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_mistakes(images, true_names, pred_names, confidences, path: Path, *, columns: int = 4,
                  title: str = "") -> Path:
    """Save the mistakes grid as PNG; returns the path."""
    return _save(mistakes_figure(images, true_names, pred_names, confidences, columns=columns, title=title), path)


COMPARISON_METRICS = (
    ("accuracy", "accuracy"),
    ("macro_precision", "macro precision"),
    ("macro_recall", "macro recall"),
    ("macro_f1", "macro F1"),
    ("weighted_f1", "weighted F1"),
)


def comparison_figure(rows: Sequence[dict], *, label_key: str = "label"):
    """Grouped bars: one group per metric, one bar per model, values printed on the bars."""
    count = max(len(rows), 1)
    width = 0.8 / count
    x = np.arange(len(COMPARISON_METRICS))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(COMPARISON_METRICS) + 0.5 * count), 4.5))
    for i, row in enumerate(rows):
        values = [float(row.get(key) or 0.0) for key, _ in COMPARISON_METRICS]
        bars = ax.bar(x + (i - (count - 1) / 2) * width, values, width, label=str(row.get(label_key, i)))
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x, [name for _, name in COMPARISON_METRICS])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score on the test set")
    ax.set_title("Model comparison")
    ax.grid(axis="y", alpha=0.3)
    if rows:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(count, 3), fontsize=8)
    fig.tight_layout()
    return fig


def plot_comparison(rows: Sequence[dict], path: Path, *, label_key: str = "label") -> Path:
    """Save the comparison bar chart as PNG; returns the path."""
    return _save(comparison_figure(rows, label_key=label_key), path)

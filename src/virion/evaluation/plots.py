"""PNG figures of one model's evaluation: confusion heatmaps, training curves, mistakes grid.

Drawn on `matplotlib.figure.Figure` through `virion.figures` (no pyplot, no backend forced at
import). Each `*_figure` function returns the figure so tests can inspect it; each `plot_*`
saves a PNG and returns its path.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from virion.figures import new_figure, save_figure

ANNOTATION_PT = 10  # cell numbers: 10 pt at virion.figures.DPI draws digits about 11 px tall
MAX_HEATMAP_IN = 7.5  # with labels and colour bar the PNG stays narrower than the report's column
MAX_CELL_IN = 0.5


def text_size_in(text: str, size_pt: float) -> tuple[float, float]:
    """(width, height) in inches of the ink of `text` in the default font at size_pt."""
    from matplotlib.textpath import TextPath

    extents = TextPath((0, 0), text, size=size_pt).get_extents()
    return extents.width / 72, extents.height / 72


def confusion_figure(cm: np.ndarray, class_names: Sequence[str], *, normalize: bool = False, title: str = ""):
    """Seaborn heatmap of a confusion matrix, rows = true class, columns = predicted class.

    Cells have a fixed size in inches (smaller only past 15 classes), so the PNG is displayed at its
    natural size in report.html and the cell numbers stay 10 pt (digits about 11 px tall); when a
    number no longer fits its cell the numbers are left out and the title says where they are.
    `normalize` divides each row by its total (recall on the diagonal); an empty row stays 0.
    """
    from virion.figures import DPI

    cm = np.asarray(cm)
    n = len(class_names)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix shape {cm.shape} does not match {n} class names")
    if normalize:
        totals = cm.sum(axis=1, keepdims=True).astype(np.float64)
        data = np.divide(cm, totals, out=np.zeros(cm.shape, dtype=np.float64), where=totals != 0)
        fmt, vmax, cbar_label, widest = ".2f", 1.0, "fraction of true class", "0.00"
    else:
        data, fmt, vmax, cbar_label = cm, "d", None, "images"
        widest = "8" * len(str(int(cm.max()) if cm.size else 0))
    cell = min(max(3.0 / max(n, 1), MAX_CELL_IN), MAX_HEATMAP_IN / max(n, 1))
    annotate = bool(text_size_in(widest, ANNOTATION_PT)[0] <= 0.85 * cell)
    side = cell * n
    longest = max((len(str(c)) for c in class_names), default=1)
    label_in = 0.4 + 0.075 * longest  # y tick labels + axis label; rotated x labels below need about as much
    width, height = label_in + side + 1.3, 0.6 + side + 0.75 * label_in
    fig = new_figure((width, height))
    ax = fig.add_axes((label_in / width, 0.75 * label_in / height, side / width, side / height))
    cax = fig.add_axes(((label_in + side + 0.2) / width, 0.75 * label_in / height, 0.18 / width, side / height))
    import seaborn as sns

    sns.heatmap(
        data,
        annot=annotate,
        fmt=fmt,
        cmap="Blues",
        vmin=0,
        vmax=vmax,
        square=True,
        linewidths=0.5,
        linecolor="white",
        xticklabels=list(class_names),
        yticklabels=list(class_names),
        ax=ax,
        cbar_ax=cax,
        cbar_kws={"label": cbar_label},
        annot_kws={"size": ANNOTATION_PT},
    )
    if not normalize:  # counts are whole numbers: no 0.25-step colour-bar ticks
        ax.collections[0].colorbar.locator = MaxNLocator(integer=True)
        ax.collections[0].colorbar.update_ticks()
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_xticklabels(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticklabels(ax.get_yticklabels(), rotation=0)
    title = title or ("Confusion matrix (row-normalized)" if normalize else "Confusion matrix (counts)")
    if not annotate:
        title += "\n(too many classes for numbers in the cells: see confusion_matrix.csv)"
    fig.suptitle(title, x=(label_in + side / 2) / width, y=1 - 0.15 / height, va="top")
    fig.dpi = DPI
    return fig


def plot_confusion(
    cm: np.ndarray, class_names: Sequence[str], path: Path, *, normalize: bool = False, title: str = ""
) -> Path:
    """Save the confusion heatmap as PNG; returns the path."""
    return save_figure(confusion_figure(cm, class_names, normalize=normalize, title=title), path)


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


def curves_figure(history: dict[str, list[float]], title: str = "", best_epoch: int | None = None):
    """Accuracy and loss per epoch, training and validation, side by side; the kept epoch marked."""
    epochs = history.get("epoch")
    n = max((len(v) for v in history.values()), default=0)
    x = np.asarray(epochs, dtype=float) if epochs and len(epochs) == n else np.arange(1, n + 1)
    if epochs and len(epochs) == n and x.size and x.min() == 0:
        x = x + 1  # Keras counts epochs from 0 in CSVLogger; people count from 1
    fig = new_figure((11, 4))
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("accuracy", "loss")):
        for key, label, style in ((metric, "training", "-o"), (f"val_{metric}", "validation", "-s")):
            if key in history:
                ax.plot(x, history[key], style, markersize=3, label=label)
        if best_epoch is not None and ax.get_legend_handles_labels()[0]:
            ax.axvline(
                best_epoch, color="tab:green", linestyle="--", linewidth=1, label=f"best epoch ({best_epoch}, kept)"
            )
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


def plot_curves(
    history: dict[str, list[float]] | Path | str, path: Path, *, title: str = "", best_epoch: int | None = None
) -> Path:
    """Save the accuracy/loss curves (from a history dict or a history.csv path) as PNG."""
    if not isinstance(history, dict):
        history = read_history(Path(history))
    return save_figure(curves_figure(history, title=title, best_epoch=best_epoch), path)


def _as_display(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 3 and image.shape[-1] == 3 and np.array_equal(image[..., 0], image[..., 1]):
        image = image[..., 0]  # grayscale replicated to 3 channels
    return image.astype(np.uint8) if image.dtype != np.uint8 and image.max() > 1 else image


def mistakes_figure(
    images: Sequence[np.ndarray],
    true_names: Sequence[str],
    pred_names: Sequence[str],
    confidences: Sequence[float],
    *,
    columns: int = 4,
    title: str = "",
):
    """Grid of misclassified images, titled true / predicted / confidence; a placeholder if none."""
    count = len(images)
    if count == 0:
        fig = new_figure((5, 2))
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "no mistakes on this set", ha="center", va="center", fontsize=14)
        if title:
            ax.set_title(title)
        return fig
    columns = min(columns, count)
    rows = int(np.ceil(count / columns))
    fig = new_figure((2.8 * columns, 3.0 * rows))
    fig.set_layout_engine("constrained")  # two-line titles never run into the row above
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, true, pred, conf in zip(axes.ravel(), images, true_names, pred_names, confidences):
        shown = _as_display(image)
        ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=255 if shown.dtype == np.uint8 else 1)
        ax.set_title(f"true: {true}\npred: {pred} ({conf:.0%})", fontsize=9, color="darkred")
    if title:
        fig.suptitle(title)
    return fig


def plot_mistakes(
    images, true_names, pred_names, confidences, path: Path, *, columns: int = 4, title: str = ""
) -> Path:
    """Save the mistakes grid as PNG; returns the path."""
    return save_figure(mistakes_figure(images, true_names, pred_names, confidences, columns=columns, title=title), path)


def gradcam_grid_figure(
    images: Sequence[np.ndarray],
    class_names: Sequence[str],
    confidences: Sequence[float],
    *,
    columns: int = 7,
    title: str = "",
):
    """One Grad-CAM overlay (uint8 RGB) per class, titled with the class and the model's confidence."""
    count = max(len(images), 1)
    columns = min(columns, count)
    rows = int(np.ceil(count / columns))
    fig = new_figure((2.3 * columns, 2.9 * rows))
    fig.set_layout_engine("constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, name, conf in zip(axes.ravel(), images, class_names, confidences):
        ax.imshow(image)
        ax.set_title(f"{name}\nprobability {conf:.0%}", fontsize=9)
    if title:
        fig.suptitle(title)
    return fig

"""The comparison bar chart (one group per metric, one bar per model); pyplot-free like evaluation's plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from virion.figures import new_figure, save_figure

COMPARISON_METRICS = (
    ("accuracy", "accuracy"),
    ("macro_precision", "macro precision"),
    ("macro_recall", "macro recall"),
    ("macro_f1", "macro F1"),
    ("weighted_f1", "weighted F1"),
)


def comparison_figure(rows: Sequence[dict], *, label_key: str = "label", title: str = ""):
    """Grouped bars: one group per metric, one bar per model, values printed on the bars."""
    count = max(len(rows), 1)
    width = 0.8 / count
    x = np.arange(len(COMPARISON_METRICS))
    fig = new_figure((max(7.0, 1.6 * len(COMPARISON_METRICS) + 0.5 * count), 4.5))
    ax = fig.subplots()
    for i, row in enumerate(rows):
        values = [float(row.get(key) or 0.0) for key, _ in COMPARISON_METRICS]
        bars = ax.bar(x + (i - (count - 1) / 2) * width, values, width, label=str(row.get(label_key, i)))
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x, [name for _, name in COMPARISON_METRICS])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score on the test set")
    import textwrap

    labels = ", ".join(str(row.get(label_key, i)) for i, row in enumerate(rows))  # the title names the models
    heading = f"{title or 'Model comparison'}: {labels}" if labels else (title or "Model comparison")
    ax.set_title(textwrap.fill(heading, 80))
    ax.grid(axis="y", alpha=0.3)
    if rows:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(count, 3), fontsize=8)
    fig.tight_layout()
    return fig


def plot_comparison(rows: Sequence[dict], path: Path, *, label_key: str = "label", title: str = "") -> Path:
    """Save the comparison bar chart as PNG; returns the path."""
    return save_figure(comparison_figure(rows, label_key=label_key, title=title), path)

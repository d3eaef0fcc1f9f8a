"""Matplotlib without pyplot: a Figure on an Agg canvas, saved atomically.

No backend is forced at import (a notebook's inline plots keep working), figures are freed with
their last reference, and drawing is safe in threads and on headless servers.
"""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from virion.atomic import atomic_write

DPI = 110


def new_figure(figsize) -> Figure:
    """A Figure with an Agg canvas attached (so text sizes can be measured before saving)."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def figure_title(fig: Figure) -> str:
    """The title a person reads on the figure: its suptitle, else its first axes title."""
    suptitle = getattr(fig, "_suptitle", None)
    if suptitle is not None and suptitle.get_text():
        return suptitle.get_text()
    return next((ax.get_title() for ax in fig.axes if ax.get_title()), "")


def save_figure(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Render to PNG and write it atomically; returns the path.

    The drawn title also goes into the PNG's Title field, so image viewers, and the report's
    browser test, can tell which model a figure belongs to without reading pixels.
    """
    buffer = io.BytesIO()
    title = " ".join(figure_title(fig).split())
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", metadata={"Title": title} if title else None)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(buffer.getvalue())

    return atomic_write(path, write)

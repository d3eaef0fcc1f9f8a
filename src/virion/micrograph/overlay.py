"""The picture of a scan: the micrograph, one box per accepted particle coloured by class, a legend,
a scale bar in nm and the verdict in the title (matplotlib Figure on Agg, never pyplot)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.patches import Rectangle

from virion.figures import new_figure, save_figure

# Scale-bar lengths tried (nm): the largest that fits in a fifth of the image width is drawn.
_BAR_STEPS_NM = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


def class_colours(class_names: list[str]) -> dict[str, tuple]:
    """One fixed colour per class (tab20 in class order), so every overlay of a run agrees."""
    from matplotlib import colormaps

    cmap = colormaps["tab20" if len(class_names) > 10 else "tab10"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(class_names)}


def scale_bar_nm(width_px: int, nm_per_px: float) -> float:
    """A round length (nm) no longer than a fifth of the image width."""
    limit = width_px * nm_per_px / 5
    fitting = [s for s in _BAR_STEPS_NM if s <= limit]
    return float(fitting[-1] if fitting else limit)


def _display(pixels: np.ndarray) -> np.ndarray:
    """uint8 for display: 0.5-99.5 percentile stretch (16-bit micrographs are rarely full range)."""
    values = pixels.astype(np.float32)
    lo, hi = np.percentile(values, (0.5, 99.5)) if values.size else (0.0, 1.0)
    return np.clip((values - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)


def draw_overlay(
    pixels: np.ndarray,
    particles: list[dict],
    class_names: list[str],
    *,
    nm_per_px: float,
    title: str,
    max_side: int = 1000,
):
    """A Figure of the micrograph with each particle row's box (`xmin..ymax`, `class`) drawn."""
    h, w = pixels.shape
    step = max(1, int(np.ceil(max(h, w) / max_side)))
    shown = _display(pixels[::step, ::step])
    fig = new_figure((8, 8 * h / w + 0.6))
    ax = fig.add_axes((0, 0, 1, 1 - 0.6 / (8 * h / w + 0.6)))
    ax.imshow(shown, cmap="gray", vmin=0, vmax=255, extent=(0, w, h, 0), interpolation="antialiased")
    ax.set_axis_off()
    colours = class_colours(class_names)
    seen: dict[str, int] = {}
    for p in particles:
        x0, y0, x1, y1 = (float(p[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
        colour = colours.get(p["class"], (1, 0, 0, 1))
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.5))
        seen[p["class"]] = seen.get(p["class"], 0) + 1
    handles = [Rectangle((0, 0), 1, 1, fill=False, edgecolor=colours.get(c, "red"), linewidth=2) for c in seen]
    if handles:
        ax.legend(handles, [f"{c} ({n})" for c, n in seen.items()], loc="upper right", fontsize=8, framealpha=0.8)
    bar = scale_bar_nm(w, nm_per_px)
    bar_px = bar / nm_per_px
    x0, y0 = 0.04 * w, 0.95 * h
    ax.add_patch(Rectangle((x0, y0), bar_px, 0.012 * h, color="white", ec="black", lw=0.5))
    ax.text(x0 + bar_px / 2, y0 - 0.01 * h, f"{bar:g} nm", color="white", ha="center", va="bottom", fontsize=9,
            bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "edgecolor": "none"})  # fmt: skip
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_title(title, fontsize=10)
    return fig


def save_overlay(path: str | Path, pixels: np.ndarray, particles: list[dict], class_names: list[str], **kwargs) -> Path:
    fig = draw_overlay(pixels, particles, class_names, **kwargs)
    return save_figure(fig, path)

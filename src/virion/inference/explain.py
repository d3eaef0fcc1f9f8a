"""Grad-CAM PNGs for files: image and overlay side by side, titled with the prediction (`virion explain`)."""

from __future__ import annotations

import re
from pathlib import Path

from virion.errors import VirionError
from virion.inference.classifier import Classifier, Explanation

DISPLAY_SIZE = 256  # pixels per side of the image shown in the PNG


def save_explanation(explanation: Explanation, path: str | Path, title: str = "") -> Path:
    """Image and overlay side by side as PNG (Figure + Agg canvas: no pyplot, safe headless)."""
    from virion.figures import new_figure, save_figure  # matplotlib only when drawing

    fig = new_figure((8, 4.4))
    axes = fig.subplots(1, 2)
    axes[0].imshow(explanation.image, cmap="gray", vmin=0, vmax=255)
    axes[0].set_title("image")
    axes[1].imshow(explanation.overlay)
    axes[1].set_title("Grad-CAM")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, Path(path))


def _safe_stem(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("_") or "image"


def explain_files(
    clf: Classifier, files: list[Path], out: Path, *, class_name: str | None = None, layer: str | None = None
) -> tuple[int, list[tuple[Path, str]], dict[str, str]]:
    """One PNG per file and model into `out`; returns (written, unreadable files, layer per model)."""
    out.mkdir(parents=True, exist_ok=True)
    written, bad, used, layers = 0, {}, set(), {}
    for name in clf.model_names:
        m = clf.get(name)
        for f in files:
            try:
                e = clf.explain(
                    f, model=name, class_index=class_name, layer=layer, size=max(DISPLAY_SIZE, m.input_size)
                )
            except VirionError as exc:
                if "cannot be decoded" not in str(exc):
                    raise
                bad.setdefault(f, str(exc).split(": ", 1)[-1])
                continue
            layers[name] = e.layer
            title = f"{f.name} | {name}: {e.predicted} ({e.probabilities.max():.1%})"
            if e.class_name != e.predicted:
                title += f"\nexplaining {e.class_name} ({e.confidence:.1%})"
            stem = _safe_stem(f) + (f"_{name}" if len(clf.model_names) > 1 else "")
            file_name, n = f"{stem}.png", 2
            while file_name in used:
                file_name, n = f"{stem}_{n}.png", n + 1
            used.add(file_name)
            save_explanation(e, out / file_name, title)
            written += 1
    return written, list(bad.items()), layers

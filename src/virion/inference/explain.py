"""Grad-CAM PNGs for files: image and overlay side by side, titled with the prediction (`virion explain`)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

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
) -> tuple[int, list[tuple[Path, str]], dict[str, str], dict[str, str]]:
    """One PNG per file and model into `out`.

    Returns (written, unreadable files, layer per model, {model: why skipped}): a model that is
    not a network (the texture model) has no Grad-CAM; it gets its radial-profile figure when it
    offers `explain_profile`, else it is skipped with one line saying so.
    """
    out.mkdir(parents=True, exist_ok=True)
    written, bad, used, layers, skipped = 0, {}, set(), {}, {}
    for name in clf.model_names:
        m = clf.get(name)
        if not m.is_network:
            if callable(getattr(m.model, "explain_profile", None)):
                count, unread = _profile_files(clf, name, files, out, used)
                written += count
                for f, why in unread:
                    bad.setdefault(f, why)
                layers[name] = "radial profile"
            else:
                skipped[name] = f"the {m.kind or 'non-network'} model has no Grad-CAM (it is not a network)"
            continue
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
    return written, list(bad.items()), layers, skipped


def _profile_files(clf: Classifier, name: str, files: list[Path], out: Path, used: set) -> tuple[int, list]:
    """What drives the texture model for each file: its own `explain_profile` figure, one PNG per file."""
    written, bad = 0, []
    m = clf.get(name)
    for f in files:
        try:
            image = clf.decode([f], model=name)[0]
        except VirionError as exc:
            bad.append((f, str(exc).split(": ", 1)[-1]))
            continue
        probs = clf.predictor(name).predict_proba(image[None])[0]
        predicted = m.class_names[int(probs.argmax())]
        title = f"{f.name} | {name}: {predicted} ({probs.max():.1%})"
        stem = _safe_stem(f) + f"_{name}"
        file_name, n = f"{stem}.png", 2
        while file_name in used:
            file_name, n = f"{stem}_{n}.png", n + 1
        used.add(file_name)
        save_profile(m.model.explain_profile(image), out / file_name, title)
        written += 1
    return written, bad


def save_profile(profile, path: Path, title: str = "") -> Path:
    """The texture model's `explain_profile`: the crop's radial intensity profile against each class's mean.

    profile: {"radius_px": (R,), "profile": (R,), "class_profiles": {class name: (R,)}}.
    """
    from virion.figures import new_figure, save_figure

    fig = new_figure((7.5, 4.4))
    ax = fig.subplots()
    radius = np.asarray(profile["radius_px"], dtype=float)
    for name, values in (profile.get("class_profiles") or {}).items():
        ax.plot(radius, np.asarray(values, dtype=float), linewidth=1, alpha=0.7, label=str(name))
    ax.plot(radius, np.asarray(profile["profile"], dtype=float), color="black", linewidth=2.5, label="this image")
    ax.set_xlabel("distance from the crop centre (px)")
    ax.set_ylabel("mean intensity in the ring (relative)")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, Path(path))

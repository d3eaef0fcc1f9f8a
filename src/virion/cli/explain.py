"""`virion explain`: Grad-CAM heatmaps that show where a model looked, one PNG per image."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from virion.errors import VirionError

DISPLAY_SIZE = 256  # pixels per side of the image shown in the PNG


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="write Grad-CAM heatmaps over images for a saved model",
        description="For each image, write a PNG with the image and its Grad-CAM heatmap overlay side by "
        "side, titled with the predicted class and confidence. The last convolutional feature map is "
        "found automatically. MODEL is a .keras/.h5 file, a model folder or a run folder.",
    )
    parser.add_argument("model_path", metavar="MODEL",
                        help="a .keras/.h5 model file, a model folder, or a run folder from `virion train`")
    parser.add_argument("images", metavar="IMAGE", nargs="+",
                        help="image files or folders of images (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder for the PNG files (created; must be empty unless --overwrite)")
    parser.add_argument("--model", dest="model_name", metavar="NAME", default=None,
                        help="with a run folder: explain only this model; default: every model in the run")
    parser.add_argument("--class", dest="class_name", metavar="NAME", default=None,
                        help="explain this class instead of the predicted one (a name from the model's class list)")
    parser.add_argument("--layer", default=None, metavar="LAYER",
                        help="feature-map layer to explain (default: the last convolutional one, found automatically)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    parser.set_defaults(func=run)


def _preferred_layer(loaded) -> str | None:
    """The architecture's known last conv layer (registry or metadata), if anyone recorded it."""
    if loaded.metadata.get("last_conv_layer"):
        return str(loaded.metadata["last_conv_layer"])
    try:
        from virion.models.registry import model_info

        return getattr(model_info(loaded.name), "last_conv_layer", None)
    except Exception:  # unknown architecture name or registry not available: search instead
        return None


def _safe_stem(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("_") or "image"


def write_explanation(path: Path, image, heatmap, title: str) -> None:
    """Image and overlay side by side, saved as PNG (no pyplot: safe in threads and headless)."""
    from matplotlib.figure import Figure

    from virion.evaluation.gradcam import overlay

    fig = Figure(figsize=(8, 4.4), dpi=100)
    axes = fig.subplots(1, 2)
    axes[0].imshow(image, cmap="gray" if image.ndim == 2 else None)
    axes[0].set_title("image")
    axes[1].imshow(overlay(image, heatmap))
    axes[1].set_title("Grad-CAM")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, format="png")


def run(args) -> int:
    from virion.data.decode import DecodeError, decode_rgb
    from virion.evaluation.gradcam import find_last_conv_layer, gradcam_with_probabilities
    from virion.inference.loading import load_predictor
    from virion.inference.predict import collect_inputs

    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise VirionError(f"--out {out}: is a file; give a folder for the PNGs")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise VirionError(f"--out {out}: folder is not empty; choose a new folder or pass --overwrite")
    files = collect_inputs(args.images)
    if not files:
        raise VirionError(f"no image files found in {' '.join(map(str, args.images))}; pass image files or folders")
    models = load_predictor(args.model_path, args.model_name)
    for m in models:
        if args.class_name is not None and args.class_name not in m.class_names:
            raise VirionError(f"--class {args.class_name}: not a class of model {m.name}; "
                              f"choose one of: {', '.join(m.class_names)}")
    out.mkdir(parents=True, exist_ok=True)

    written, unreadable, used = 0, [], set()
    for m in models:
        layer = args.layer or find_last_conv_layer(m.model, preferred=_preferred_layer(m))
        class_index = m.class_names.index(args.class_name) if args.class_name is not None else None
        for f in files:
            try:
                image = decode_rgb(f, m.decode)
                # Shown larger than the model sees it; the heatmap is upsampled onto it.
                shown = decode_rgb(f, dataclasses.replace(m.decode, size=max(DISPLAY_SIZE, m.input_size)))
            except (DecodeError, OSError, ValueError) as exc:
                if len(models) == 1 or m is models[0]:
                    unreadable.append((f, str(exc)))
                continue
            heatmap, index, confidence, probs = gradcam_with_probabilities(m.model, image, class_index, layer)
            predicted = int(probs.argmax())
            title = f"{f.name} | {m.name}: {m.class_names[predicted]} ({probs[predicted]:.1%})"
            if index != predicted:
                title += f"\nexplaining {m.class_names[index]} ({confidence:.1%})"
            stem = _safe_stem(f) + (f"_{m.name}" if len(models) > 1 else "")
            name, n = f"{stem}.png", 2
            while name in used:
                name, n = f"{stem}_{n}.png", n + 1
            used.add(name)
            write_explanation(out / name, shown, heatmap, title)
            written += 1
    for f, reason in unreadable:
        print(f"virion: warning: skipped unreadable {f}: {reason}")
    if not written:
        raise VirionError(f"none of the {len(files)} input file(s) could be read as an image; check paths and formats")
    print(f"{written} Grad-CAM image(s) written to {out} (layer {'per model' if len(models) > 1 else layer})")
    return 0

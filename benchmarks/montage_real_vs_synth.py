"""Real crops beside synthetic ones, one row per class, plus the image statistics that differ.

The synthetic generator is only useful as far as it looks like the real thing; this puts both
side by side (left: real, right: `virion synth` renders of the same class) and prints per-class
statistics of what the eye compares: mean and spread of intensity, the share of fine-grain
(pixel-scale) energy, and the contrast at the scale of stain texture (~8 nm).

    .venv/bin/python benchmarks/montage_real_vs_synth.py ../shared/real_tem_dev --per-class 4 \
        --out benchmarks/results/montage_real_vs_synth.png
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]


def real_images(folder: Path, per_class: int, seed: int) -> dict[str, list[np.ndarray]]:
    """A seeded sample of real crops per class, from distinct micrographs where possible."""
    manifest = folder / "micrographs.csv" if folder.is_dir() else folder
    if not manifest.is_file():
        sys.exit(f"montage: {manifest}: no such file; give the real_tem_dev folder (not part of the repo)")
    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {}
    for label in sorted({r["label"] for r in rows}):
        mine = [r for r in rows if r["label"] == label]
        order = rng.permutation(len(mine))
        picked, seen = [], set()
        for i in list(order) + list(order):  # first pass: one per micrograph; second: fill up
            r = mine[i]
            if len(picked) == per_class:
                break
            if (r["micrograph"] in seen and len(seen) < len({m["micrograph"] for m in mine})) or r in picked:
                continue
            seen.add(r["micrograph"])
            picked.append(r)
        out[label] = [np.asarray(Image.open(manifest.parent / r["path"]).convert("L"), dtype=np.uint8) for r in picked]
    return out


def synth_images(classes, per_class: int, seed: int, difficulty: float, size: int) -> dict[str, list[np.ndarray]]:
    from virion.data.synth import CLASS_NAMES, image_rng, render_image, to_pixels

    return {
        c: [
            to_pixels(render_image(c, image_rng(seed, CLASS_NAMES.index(c), i), size, difficulty), 8)
            for i in range(per_class)
        ]
        for c in classes
    }


def stats(images: list[np.ndarray]) -> dict:
    """Intensity mean/sd, fine-grain share (1-px Laplacian vs total sd), ~8 px texture contrast."""
    from virion.data.synth.render import gaussian_blur

    rows = []
    for im in images:
        x = im.astype(np.float32) / 255.0
        lap = 4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]
        band = gaussian_blur(x, 2.0) - gaussian_blur(x, 8.0)
        rows.append((x.mean(), x.std(), lap.std() / (x.std() + 1e-6), band.std()))
    a = np.asarray(rows)
    return {k: float(v) for k, v in zip(("mean", "sd", "fine_grain", "texture_8px"), a.mean(0))}


def montage(real, synth, tile: int) -> Image.Image:
    classes = list(real)
    n_real = max(len(v) for v in real.values())
    n_synth = max(len(v) for v in synth.values())
    label_w, gap = 120, 12
    w = label_w + tile * (n_real + n_synth) + gap
    h = 20 + tile * len(classes)
    canvas = Image.new("L", (w, h), 255)
    draw = ImageDraw.Draw(canvas)
    draw.text((label_w, 4), "real", fill=0)
    draw.text((label_w + tile * n_real + gap, 4), "synthetic", fill=0)
    for row, c in enumerate(classes):
        y = 20 + row * tile
        draw.text((4, y + tile // 2 - 6), c, fill=0)
        for i, im in enumerate(real[c]):
            canvas.paste(Image.fromarray(im).resize((tile, tile), Image.BILINEAR), (label_w + i * tile, y))
        for i, im in enumerate(synth[c]):
            canvas.paste(
                Image.fromarray(im).resize((tile, tile), Image.BILINEAR), (label_w + tile * n_real + gap + i * tile, y)
            )
    return canvas


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("real", type=Path, help="real_tem_dev folder (or its micrographs.csv)")
    p.add_argument("--per-class", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--difficulty", type=float, default=1.0, help="synthetic difficulty (as `virion synth`)")
    p.add_argument("--tile", type=int, default=128, help="pixels per image in the montage")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "montage_real_vs_synth.png")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    real = real_images(args.real, args.per_class, args.seed)
    synth = synth_images(list(real), args.per_class, args.seed, args.difficulty, 256)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    montage(real, synth, args.tile).save(args.out)
    table = {c: {"real": stats(real[c]), "synth": stats(synth[c])} for c in real}
    print(
        f"{'class':<12} " + "  ".join(f"{k:>18}" for k in ("mean r/s", "sd r/s", "fine_grain r/s", "texture_8px r/s"))
    )
    for c, t in table.items():
        print(
            f"{c:<12} "
            + "  ".join(
                f"{t['real'][k]:>8.3f} /{t['synth'][k]:>8.3f}" for k in ("mean", "sd", "fine_grain", "texture_8px")
            )
        )
    args.out.with_suffix(".json").write_text(json.dumps(table, indent=2), encoding="utf-8")
    print(f"montage -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

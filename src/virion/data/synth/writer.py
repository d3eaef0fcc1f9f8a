"""Write the synthetic dataset to disk: split layout, PNG/TIFF files, a labelled montage, a README.

Each image has its own seed derived from (seed, class index, image index), so the output does
not depend on the order or the number of processes that render it.
"""

from __future__ import annotations

import json
import math
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from virion.data.layout import SYNTH_MARKER
from virion.data.synth.morphology import CLASS_NAMES
from virion.data.synth.render import render_image
from virion.errors import VirionError

SPLIT_NAMES = ("train", "validation", "test")
MARKER = SYNTH_MARKER  # says "this folder was written by virion synth", so it may be rewritten
OWN_FILES = ("README.txt", "montage.png", MARKER)  # written beside the split folders; listed in MARKER
FORMATS = {"png": ".png", "tif": ".tif", "tiff": ".tif"}
MONTAGE_PER_CLASS = 4
# 16-bit output spans most of the range, with a margin like a real detector's offset and headroom
U16_LOW, U16_HIGH = 2000, 60000


def image_rng(seed: int, class_index: int, index: int) -> np.random.Generator:
    """The generator for one image: independent of every other image and of the process count."""
    return np.random.default_rng([seed, class_index, index])


def split_counts(per_class: int, splits) -> list[int]:
    """Images per split for one class: largest remainders, at least one in every non-zero split."""
    fractions = [float(f) for f in splits]
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise VirionError(
            f"splits={tuple(splits)}: give three non-negative fractions (train, validation, test) "
            "that sum to 1, e.g. (0.6, 0.2, 0.2)"
        )
    needed = sum(f > 0 for f in fractions)
    if per_class < needed:
        raise VirionError(
            f"per_class={per_class}: need at least {needed} images per class so that every split "
            "gets one; raise --per-class"
        )
    raw = [f * per_class for f in fractions]
    counts = [int(math.floor(r)) for r in raw]
    for i in sorted(range(3), key=lambda i: raw[i] - counts[i], reverse=True)[: per_class - sum(counts)]:
        counts[i] += 1
    for i in range(3):  # a non-empty split must not end up with an empty class folder
        if fractions[i] > 0 and counts[i] == 0:
            counts[i] = 1
            counts[int(np.argmax(counts))] -= 1
    return counts


def to_pixels(img: np.ndarray, bit_depth: int) -> np.ndarray:
    """Quantize a 0..1 image: 8-bit full range, or 16-bit between U16_LOW and U16_HIGH, so the
    16-bit files carry real sub-8-bit detail instead of 8-bit values times 257."""
    if bit_depth == 8:
        return np.rint(img * 255.0).astype(np.uint8)
    return np.rint(U16_LOW + img * (U16_HIGH - U16_LOW)).astype(np.uint16)


def write_image(path: Path, pixels: np.ndarray) -> None:
    """PNG through Pillow (16-bit PNG is grayscale I;16), TIFF through tifffile, uncompressed."""
    if path.suffix == ".png":
        Image.fromarray(pixels).save(path, compress_level=1)
    else:
        tifffile.imwrite(path, pixels, photometric="minisblack")


def _file_name(class_name: str, index: int, ext: str) -> str:
    return f"{class_name.lower().replace(' ', '_')}_{index:05d}{ext}"


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse to mix our files into someone else's folder; clear our own earlier output."""
    if out.exists() and not out.is_dir():
        raise VirionError(f"{out} is a file; give --out a folder path (new or empty)")
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file() and not overwrite:
            raise VirionError(
                f"{out} is not empty and was not written by `virion synth`; choose a new or empty "
                "folder, or pass --overwrite to replace its train/validation/test folders"
            )
        for name in SPLIT_NAMES:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        for name in OWN_FILES:
            if (out / name).is_file():
                (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)


def _render_and_write(task):
    """Worker: render one image, write it, and return it small for the montage if asked."""
    path, class_name, class_index, index, seed, size, difficulty, bit_depth, keep = task
    img = render_image(class_name, image_rng(seed, class_index, index), size, difficulty)
    write_image(Path(path), to_pixels(img, bit_depth))
    return (class_index, index, to_pixels(img, 8)) if keep else None


def generate_dataset(
    out,
    *,
    per_class: int = 60,
    seed: int = 0,
    size: int = 256,
    fmt: str = "png",
    bit_depth: int = 8,
    difficulty: float = 1.0,
    splits=(0.6, 0.2, 0.2),
    progress: bool = True,
    overwrite: bool = False,
    workers: int = 1,
    extra_own_files: tuple[str, ...] = (),
) -> Path:
    """Write the synthetic TEM virus dataset to `out` and return `out`.

    Layout: out/{train,validation,test}/<Class>/<class>_<index>.png|tif for the 14 classes, plus
    out/montage.png, out/README.txt and out/synth.json (the settings). `per_class` is the total per
    class, divided by `splits` (train, validation, test). `bit_depth=16` writes 16-bit PNG or TIFF.
    synth.json's "own_files" lists the files at `out` that are virion's (these three and
    `extra_own_files`, e.g. the demo's marker), so listing the dataset does not call them ignored.
    """
    out = Path(out)
    fmt = str(fmt).lower()
    if fmt not in FORMATS:
        raise VirionError(f"format {fmt!r}: choose png or tif")
    if bit_depth not in (8, 16):
        raise VirionError(f"bit depth {bit_depth}: choose 8 or 16")
    if not 16 <= int(size) <= 4096:
        raise VirionError(f"size {size}: choose an image size between 16 and 4096 pixels (256 = 1 nm per pixel)")
    if not 0.0 <= float(difficulty) <= 3.0:
        raise VirionError(f"difficulty {difficulty}: choose a value from 0 (easy) to 3 (1 is the default, 2 is hard)")
    if int(seed) < 0:
        raise VirionError(f"seed {seed}: choose a non-negative integer")
    if int(workers) < 1:
        raise VirionError(f"workers {workers}: choose 1 or more processes")
    counts = split_counts(int(per_class), splits)
    ext = FORMATS[fmt]
    _prepare_out(out, overwrite)
    settings = {
        "generator": "virion synth",
        "per_class": int(per_class),
        "seed": int(seed),
        "size": int(size),
        "format": fmt,
        "bit_depth": int(bit_depth),
        "difficulty": float(difficulty),
        "splits": [float(f) for f in splits],
        "classes": list(CLASS_NAMES),
        "own_files": sorted(set(OWN_FILES) | {Path(n).name for n in extra_own_files}),
        "complete": False,
    }
    (out / MARKER).write_text(json.dumps(settings, indent=2))  # first, so an interrupted run may be rewritten

    tasks = []
    for ci, name in enumerate(CLASS_NAMES):
        index = 0
        for split, n in zip(SPLIT_NAMES, counts):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(n):
                tasks.append(
                    (
                        str(folder / _file_name(name, index, ext)),
                        name,
                        ci,
                        index,
                        int(seed),
                        int(size),
                        float(difficulty),
                        int(bit_depth),
                        index < MONTAGE_PER_CLASS,
                    )
                )
                index += 1

    bar = tqdm(total=len(tasks), desc="virion synth", unit="img", disable=not progress)
    samples: dict[int, list[tuple[int, np.ndarray]]] = {}
    try:
        if workers == 1:
            results = map(_render_and_write, tasks)
            pool = None
        else:
            pool = ProcessPoolExecutor(max_workers=int(workers))
            results = pool.map(_render_and_write, tasks, chunksize=16)
        for res in results:
            bar.update(1)
            if res is not None:
                samples.setdefault(res[0], []).append((res[1], res[2]))
    finally:
        bar.close()
        if workers != 1 and pool is not None:
            pool.shutdown()

    write_montage(
        out / "montage.png",
        [[img for _, img in sorted(samples.get(ci, []), key=lambda t: t[0])] for ci in range(len(CLASS_NAMES))],
    )
    _write_readme(out, settings, counts)
    settings["complete"] = True
    settings["counts_per_class"] = dict(zip(SPLIT_NAMES, counts))
    (out / MARKER).write_text(json.dumps(settings, indent=2))
    return out


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def write_montage(path: Path, per_class: list[list[np.ndarray]], tile: int = 192) -> Path:
    """A labelled grid: two columns of classes, a few uint8 samples per class, the name above each."""
    first = next((imgs[0] for imgs in per_class if imgs), None)
    if first is None:
        raise ValueError("montage needs at least one image")
    tile = min(tile, first.shape[0])
    k = max(len(imgs) for imgs in per_class)
    label_h, gap, cols = max(14, tile // 8), 8, 2
    rows = math.ceil(len(per_class) / cols)
    cell_w, cell_h = k * tile + (k - 1) * 2, label_h + tile
    canvas = Image.new("L", (cols * cell_w + (cols + 1) * gap, rows * (cell_h + gap) + gap), 255)
    draw = ImageDraw.Draw(canvas)
    font = _font(max(10, label_h - 4))
    for ci, imgs in enumerate(per_class):
        x0 = gap + (ci // rows) * (cell_w + gap)
        y0 = gap + (ci % rows) * (cell_h + gap)
        draw.text((x0, y0), CLASS_NAMES[ci] if ci < len(CLASS_NAMES) else str(ci), fill=0, font=font)
        for j, img in enumerate(imgs):
            t = (
                Image.fromarray(img).resize((tile, tile), Image.LANCZOS)
                if img.shape[0] != tile
                else Image.fromarray(img)
            )
            canvas.paste(t, (x0 + j * (tile + 2), y0 + label_h))
    canvas.save(path)
    return path


def _write_readme(out: Path, settings: dict, counts: list[int]) -> None:
    fmt = "TIFF" if settings["format"] != "png" else "PNG"
    text = f"""SYNTHETIC DATA - not real electron micrographs.

Written by `virion synth` (the built-in synthetic TEM virus dataset of virion) with
per_class={settings["per_class"]} seed={settings["seed"]} size={settings["size"]} format={settings["format"]}
bit_depth={settings["bit_depth"]} difficulty={settings["difficulty"]}; the same settings give the same files.

Each image is a {settings["size"]}x{settings["size"]} {settings["bit_depth"]}-bit grayscale {fmt} of a 256 nm field
of view (1 nm per pixel at 256 px), drawn from the morphology of one of the 14 classes of the TEM
virus dataset (Matuszewski & Sintorn 2021) with a negative-stain imaging model: dark stain,
bright particles with dark rims, uneven background, debris, defocus blur and shot noise.

Use it to try out, test and demonstrate the pipeline. A model trained here has not learned
to recognise real viruses: train and evaluate on real micrographs for that.

Layout: train/<Class>/, validation/<Class>/, test/<Class>/ with {counts[0]} / {counts[1]} / {counts[2]}
images per class. montage.png shows a few samples per class; synth.json holds the settings.
Classes: {", ".join(CLASS_NAMES)}.
"""
    (out / "README.txt").write_text(text)

"""Turn what a user hands to `Classifier.predict` into named images: paths, folders, arrays, PIL images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from virion.data.layout import IMAGE_EXTENSIONS
from virion.errors import VirionError


def collect_inputs(inputs) -> list[Path]:
    """Image files named directly or found (recursively) in folders: sorted, no hidden files, no repeats.

    A file named directly is kept whatever its extension, so that a bad file is reported as
    unreadable rather than silently dropped; in folders only image extensions count.
    """
    extensions = {e.lower() for e in IMAGE_EXTENSIONS}
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = [
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in extensions
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            ]
            files.extend(sorted(found))
        else:
            raise VirionError(f"{path}: no such file or folder; pass image files or folders of images")
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _is_pil(obj: Any) -> bool:
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "mode") and hasattr(obj, "size")


def pil_to_array(image) -> np.ndarray:
    """A PIL image as the array its file would decode from (the same modes as `decode_image`)."""
    mode = image.mode
    if mode in ("L", "1"):
        return np.asarray(image.convert("L"))
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(image)
        if arr.dtype.kind in "iu" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
            arr = arr.astype(np.uint16)
        return arr
    if mode in ("LA", "La"):
        return np.asarray(image.getchannel(0))
    return np.asarray(image.convert("RGB").convert("L"))


def as_items(inputs) -> list[tuple[str, Any]]:
    """(name, path-or-array) pairs in order: one image, a list of them, a batch array or folders."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    elif isinstance(inputs, np.ndarray) or _is_pil(inputs):
        inputs = split_array(inputs) if isinstance(inputs, np.ndarray) else [inputs]
    items: list[tuple[str, Any]] = []
    paths: list = []

    def flush():
        items.extend((str(p), p) for p in collect_inputs(paths))
        paths.clear()

    for k, item in enumerate(inputs):
        if isinstance(item, (str, Path)):
            paths.append(item)
            continue
        flush()
        if _is_pil(item):
            items.append((f"image[{k}]", pil_to_array(item)))
        elif isinstance(item, np.ndarray):
            items.append((f"array[{k}]", item))
        else:
            raise VirionError(
                f"input {k}: {type(item).__name__} is not an image; pass file paths, folders, "
                "NumPy arrays or PIL images"
            )
    flush()
    return items


def split_array(array: np.ndarray) -> list[np.ndarray]:
    """One image (H, W) / (H, W, 1|3|4), or a batch (N, H, W) / (N, H, W, C), as a list of images."""
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3, 4)):
        return [array]
    if array.ndim in (3, 4):
        return list(array)
    raise VirionError(f"array of shape {array.shape}: expected (H, W), (H, W, 3), (N, H, W) or (N, H, W, 3)")

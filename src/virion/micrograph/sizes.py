"""Per-class particle sizes: a size prior that turns several detections of one particle into one.

Why: the blob detector answers a large particle (Cowpox, Orf, CCHF: 150-350 nm) at small scales
all over its textured interior and rim, and a run trained on the detector's windows
(`crops.cut_crops(detected=True)`) rightly calls each of them by the particle's class: one particle
then gives several accepted rows, and precision (one-to-one matching) falls. The detected diameter
cannot say how big the particle is (it is the interior blob's), but the class can: its annotated
boxes have a typical size. `suppress_by_class_size` keeps, of accepted candidates of one class whose
centres lie closer than `SIZE_NMS_FRACTION` x that class's size, only the strongest (detector
score). Measured in docs/micrographs.md (precision 0.34 -> ~0.55 at a small loss of recall).

Where the sizes come from: `virion crops` writes `class_sizes.json` beside its manifest (per class,
the median of its boxes' shorter side, in nm at the crops' scale; boxes only, points have no size).
`virion scan` reads `RUN/class_sizes.json`, else the one in the folder of the dataset the run was
trained on (`RUN/config.json`'s `data`), else uses none: runs without sizes (older runs, runs not
trained on `virion crops` output) scan exactly as before. Plain JSON:

    {"unit": "nm", "statistic": "median shorter box side", "classes": {"Adenovirus": 80.0, ...}}
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from virion.atomic import atomic_write_text
from virion.errors import VirionError

CLASS_SIZES_FILE = "class_sizes.json"
# Two accepted candidates of one class are one particle when their centres are closer than this
# fraction of the class's size (0.5: within the particle's radius).
SIZE_NMS_FRACTION = 0.5


def class_sizes_from_boxes(labels, widths, heights) -> dict[str, float]:
    """Per class, the median of its boxes' shorter side (same unit as the boxes)."""
    per: dict[str, list[float]] = defaultdict(list)
    for label, w, h in zip(labels, widths, heights):
        side = min(float(w), float(h))
        if side > 0:
            per[str(label)].append(side)
    return {label: float(np.median(v)) for label, v in sorted(per.items())}


def class_sizes_json(sizes: dict[str, float]) -> str:
    body = {"unit": "nm", "statistic": "median shorter box side", "classes": {k: round(v, 2) for k, v in sizes.items()}}
    return json.dumps(body, indent=1) + "\n"


def read_class_sizes(path: str | Path) -> dict[str, float]:
    """The `classes` mapping of a class_sizes.json (nm); a clear error when it is not one."""
    path = Path(path)
    try:
        body = json.loads(path.read_text())
        sizes = {str(k): float(v) for k, v in body["classes"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise VirionError(f"{path}: not a class sizes file ({exc}); expected {{'classes': {{name: nm}}}}") from None
    return {k: v for k, v in sizes.items() if v > 0}


def dataset_folder(data: str | Path | None) -> Path | None:
    """The folder of a dataset (the folder itself, or a manifest's folder): where `virion crops` puts
    what travels with its crops (class_sizes.json, detector/); None when no dataset is named."""
    if not data:
        return None
    data = Path(str(data)).expanduser()
    return data if data.is_dir() else data.parent


def training_data(run: str | Path) -> str | None:
    """The dataset a run was trained on (RUN/config.json's `data`), or None."""
    try:
        return json.loads((Path(run) / "config.json").read_text()).get("data")
    except (OSError, ValueError, AttributeError):
        return None


def _data_sizes_file(data: str | Path | None) -> Path | None:
    """The class_sizes.json beside a dataset, if any."""
    folder = dataset_folder(data)
    f = folder / CLASS_SIZES_FILE if folder is not None else None
    return f if f is not None and f.is_file() else None


def find_class_sizes(run: str | Path) -> dict[str, float] | None:
    """A run's class sizes: RUN/class_sizes.json, else its training data folder's; None when neither exists."""
    run = Path(run)
    if not run.is_dir():
        return None
    if (run / CLASS_SIZES_FILE).is_file():
        return read_class_sizes(run / CLASS_SIZES_FILE)
    found = _data_sizes_file(training_data(run))
    return read_class_sizes(found) if found else None


def keep_class_sizes(data: str | Path | None, run_dir: str | Path) -> Path | None:
    """Copy the training data's class_sizes.json into the run folder (if it has none), so the run keeps
    its size prior when the crops folder moves or is deleted; returns the run's copy, or None."""
    source = _data_sizes_file(data)
    target = Path(run_dir) / CLASS_SIZES_FILE
    if source is None or target.exists() or not Path(run_dir).is_dir():
        return None
    sizes = read_class_sizes(source)  # checked: a broken file is reported, not copied
    return atomic_write_text(target, class_sizes_json(sizes))


def suppress_by_class_size(x, y, labels, score, sizes_px: dict[str, float], fraction: float = SIZE_NMS_FRACTION):
    """Indices to keep (strongest first): a candidate goes when a stronger kept one of the same label
    lies closer than `fraction` x that label's size (px). Labels without a size are all kept."""
    x, y, score = (np.asarray(a, float) for a in (x, y, score))
    labels = list(labels)
    kept: list[int] = []
    for i in np.argsort(-score, kind="stable"):
        radius = fraction * sizes_px.get(labels[i], 0.0)
        if radius > 0 and any(labels[j] == labels[i] and np.hypot(x[j] - x[i], y[j] - y[i]) < radius for j in kept):
            continue
        kept.append(int(i))
    return np.asarray(sorted(kept), dtype=int)

"""`virion detector`: train the learned particle detector (`micrograph.heatmap`) on annotated micrographs.

Reads the annotations `virion crops` reads (a boxes CSV, or YOLO labels + images + class list:
`crops.read_annotations`), each micrograph once, at its own pixel size (the file's, else
`nm_per_px`, else the 1 nm/px `virion scan` assumes too), and trains on the boxes. The detector is
class-agnostic: labels only say where particles are.

What is left out, and why: a point (x, y without a box) has no size, and the detector learns sizes
too, so points are skipped (counted); a micrograph whose particles are all points is skipped
whole, since training on it would call its particles background. A YOLO image with an empty label
file is kept: the annotator said it has no particle. Unreadable micrographs are listed, not fatal,
unless none is left.

Output: DIR/detector.json + DIR/detector.weights.h5 (`HeatmapDetector.save`), written in a
temporary folder beside DIR and renamed into place when complete; `virion crops --detector DIR`
carries it to the crops and on to the runs trained on them.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from virion.data.decode import DecodeError
from virion.errors import VirionError
from virion.fs import publish_output_dir, start_output_dir
from virion.micrograph.crops import read_annotations, shown_path
from virion.micrograph.heatmap import (
    DEFAULT_BATCH,
    DEFAULT_EPOCHS,
    META_FILE,
    TrainingMicrograph,
    train_detector,
)
from virion.micrograph.io import pixel_size, plausible_nm_per_px, read_micrograph
from virion.micrograph.scan import DEFAULT_NM_PER_PX


@dataclass
class DetectorTrainingResult:
    """What `train_from_boxes` trained on and wrote; `summary()` is what the CLI prints."""

    out: Path
    micrographs: int = 0
    boxes: int = 0
    points: int = 0  # annotations without a box: skipped
    points_only: int = 0  # micrographs skipped because all their particles are points
    unreadable: list[str] = field(default_factory=list)  # "file: reason"
    bad: list[str] = field(default_factory=list)  # rejected annotation rows, one line each
    scale_sources: Counter = field(default_factory=Counter)  # "metadata" / "--nm-per-px" / "assumed"
    epochs: int = 0
    final_loss: float = float("nan")
    seconds: float = 0.0

    def summary(self, max_lines: int = 10) -> str:
        lines = [
            f"virion detector: trained on {self.boxes:,} boxes in {self.micrographs} micrographs, {self.epochs} "
            f"epochs (final loss {self.final_loss:.3f}) in {self.seconds:.0f} s -> {self.out}"
        ]
        scale = ", ".join(f"{n} {src}" for src, n in sorted(self.scale_sources.items()))
        lines.append(f"Pixel size: {scale}.")
        if self.points:
            lines.append(
                f"Points skipped: {self.points:,} (no box, no size); {self.points_only} micrograph(s) with only points."
            )
        for title, items in (("Unreadable micrographs", self.unreadable), ("Bad rows", self.bad)):
            if items:
                lines.append(f"{title}: {len(items):,} skipped:")
                lines += [f"  {line}" for line in items[:max_lines]]
                if len(items) > max_lines:
                    lines.append(f"  ... and {len(items) - max_lines:,} more")
        lines.append(f"Use it: virion crops BOXES.csv --out CROPS --detected --detector {self.out} (runs keep it).")
        return "\n".join(lines)


def train_from_boxes(
    boxes=None,
    out=None,
    *,
    yolo=None,
    images=None,
    classes=None,
    nm_per_px: float | None = None,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> DetectorTrainingResult:
    """Train a heat-map detector on annotated micrographs and save it into `out` (module docstring).

    boxes: a boxes CSV, or yolo (labels folder) + images + classes, as `cut_crops`. nm_per_px: the
    pixel size of micrographs whose file states none. An existing non-empty `out` is refused unless
    `overwrite` (and then only an earlier detector).
    """
    started = time.perf_counter()
    if out is None:
        raise VirionError("--out: give the folder to save the detector in")
    out = Path(out).expanduser()
    if nm_per_px is not None and plausible_nm_per_px(nm_per_px) is None:
        raise VirionError(f"--nm-per-px {nm_per_px}: give a pixel size from 0.005 to 500 nm")
    if int(epochs) < 1:
        raise VirionError(f"--epochs {epochs}: must be at least 1")
    annotations = read_annotations(boxes, yolo, images, classes)
    result = DetectorTrainingResult(out, bad=list(annotations.bad), epochs=int(epochs))
    tmp = start_output_dir(out, overwrite, META_FILE, "virion detector")  # a bad --out fails before training
    try:
        micrographs = _training_micrographs(annotations, nm_per_px, result)
        if not micrographs:
            raise VirionError(
                f"{annotations.source}: no micrograph with boxes to train on ({len(result.unreadable)} unreadable, "
                f"{result.points_only} with points only, {len(result.bad)} bad rows)"
            )
        detector = train_detector(
            micrographs, epochs=int(epochs), batch_size=int(batch_size), seed=seed, progress=progress
        )
        detector.info["annotations"] = str(annotations.source)
        detector.save(tmp)
        publish_output_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.final_loss = float(detector.info.get("final_loss", float("nan")))
    result.seconds = time.perf_counter() - started
    return result


def _training_micrographs(annotations, nm_per_px, result: DetectorTrainingResult) -> list[TrainingMicrograph]:
    """One TrainingMicrograph per usable micrograph (boxes in its own pixels); the rest counted in `result`."""
    by_micrograph: dict[Path, list] = {p: [] for p in annotations.micrographs}
    for a in annotations.items:
        by_micrograph[a.micrograph].append(a)
    base = annotations.base or annotations.source.parent
    out = []
    for path, items in by_micrograph.items():
        boxed = [a for a in items if a.box is not None]
        result.points += len(items) - len(boxed)
        if items and not boxed:
            result.points_only += 1
            continue
        try:
            micrograph = read_micrograph(path)
        except DecodeError as exc:
            result.unreadable.append(f"{shown_path(path, base)}: {exc.reason}")
            continue
        nm, how = pixel_size(micrograph, nm_per_px, DEFAULT_NM_PER_PX)
        result.scale_sources[how] += 1
        h, w = micrograph.shape
        kept = []
        for a in (a.in_pixels(w, h) for a in boxed):
            if 0 <= a.x < w and 0 <= a.y < h:
                kept.append(a.box)
            else:
                result.bad.append(f"{a.where}: centre ({a.x:g}, {a.y:g}) is outside the image ({w} x {h} px)")
        out.append(TrainingMicrograph(micrograph.pixels, nm, np.asarray(kept, float).reshape(-1, 4)))
        result.micrographs += 1
        result.boxes += len(kept)
    return out

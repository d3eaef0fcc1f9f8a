"""Which particle detector a scan uses, and how a learned one travels from annotations to a run.

Why: the learned heat-map detector (`micrograph.heatmap`) finds far more of the particles, far more
precisely, than the Laplacian-of-Gaussian blobs (`micrograph.detect`), so a run that has one should
scan with it without anyone asking. It travels as the class sizes do (`micrograph.sizes`):
`virion detector` writes it, `virion crops --detector` copies it to CROPS/detector/, `virion train`
copies that into RUN/detector/ (`keep_detector`), and `virion scan` / `virion serve` find it there,
else beside the run's training data (`find_detector`). A run without one scans with LoG, as before.

Both detectors answer one interface (`detect(image, nm_per_px, *, threshold, max_candidates, mask,
filled) -> Candidates`, `.threshold`, `.no_background_min_score`, `.min_confidence`), so the scanner and
`virion crops --detected` never ask which kind they hold. Their scores differ in kind (LoG: a
z-score; heat map: a probability), which is why each carries its own default thresholds.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from virion.errors import VirionError
from virion.micrograph import detect as detection
from virion.micrograph.heatmap import DETECTOR_DIR, META_FILE, WEIGHTS_FILE, is_detector, load_detector
from virion.micrograph.sizes import dataset_folder, training_data

LOG = "log"  # `--detector log`: the blob detector, even when the run has a learned one


@dataclass(frozen=True)
class LogDetector:
    """The Laplacian-of-Gaussian blob detector (`detect.detect`) behind the learned detector's interface."""

    threshold: float = detection.DEFAULT_THRESHOLD  # z-score
    # Runs without a `_background` class cannot reject stain: LoG candidates must be this strong.
    no_background_min_score: float = 6.0
    # A scan keeps a candidate whose best class has at least this probability: more than all other
    # classes together, because most LoG candidates are stain and debris forced into some class.
    min_confidence: float = 0.5

    def detect(self, image, nm_per_px: float = 1.0, *, threshold: float | None = None,
               max_candidates: int = detection.DEFAULT_MAX_CANDIDATES, mask=None, filled=None):  # fmt: skip
        threshold = self.threshold if threshold is None else float(threshold)
        return detection.detect(
            image, nm_per_px, threshold=threshold, max_candidates=max_candidates, mask=mask, filled=filled
        )


def find_detector(run: str | Path) -> Path | None:
    """A run's learned detector: RUN/detector, else its training data folder's; None when neither exists."""
    run = Path(run)
    if not run.is_dir():
        return None
    data = dataset_folder(training_data(run))
    for folder in (run / DETECTOR_DIR, data / DETECTOR_DIR if data else None):
        if folder is not None and is_detector(folder):
            return folder
    return None


def keep_detector(data: str | Path | None, run_dir: str | Path) -> Path | None:
    """Copy the training data's detector/ into the run folder (if it has none), so the run keeps its
    detector when the crops folder moves or is deleted; returns the run's copy, or None."""
    folder = dataset_folder(data)
    source = folder / DETECTOR_DIR if folder is not None else None
    target = Path(run_dir) / DETECTOR_DIR
    if source is None or not is_detector(source) or target.exists() or not Path(run_dir).is_dir():
        return None
    load_detector(source)  # checked: a broken detector is reported, not copied
    tmp = target.parent / f".{DETECTOR_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name in (META_FILE, WEIGHTS_FILE):
            shutil.copy2(source / name, tmp / name)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_detector_option(path: str | Path):
    """The learned detector in `path` (`--detector DIR`), or in `path`/detector (a crops or run folder)."""
    folder = Path(path).expanduser()
    if not is_detector(folder) and is_detector(folder / DETECTOR_DIR):
        folder = folder / DETECTOR_DIR
    if not folder.is_dir():
        raise VirionError(f"--detector {path}: no such folder; give a folder written by `virion detector`, or `log`")
    if not is_detector(folder):
        raise VirionError(
            f"--detector {path}: not a virion detector (needs {META_FILE} and {WEIGHTS_FILE}); give a folder "
            f"written by `virion detector`, or `log`"
        )
    return load_detector(folder)


def choose_detector(detector=None, run=None) -> tuple[object, str]:
    """(the detector to use, one line saying which): `detector` None = the run's learned one
    (`find_detector`), else LoG; "log" = LoG; a folder = the detector in it; an object with `detect`
    = itself. `run` is the run folder, when scanning with one."""
    if detector is None:
        found = find_detector(run) if isinstance(run, (str, Path)) else None
        if found is not None:
            return load_detector(found), f"learned heat map ({found})"
        why = (
            "; the run has no detector/: `virion detector BOXES --out DET` trains one, which finds far more "
            "of the particles, and `--detector DET` scans with it"
            if isinstance(run, (str, Path))
            else ""
        )
        return LogDetector(), f"LoG blobs{why}"
    if isinstance(detector, str) and detector.strip().lower() == LOG:
        return LogDetector(), "LoG blobs (--detector log)"
    if hasattr(detector, "detect"):
        kind = "LoG blobs" if isinstance(detector, LogDetector) else "learned heat map"
        return detector, f"{kind} (given)"
    return load_detector_option(detector), f"learned heat map ({detector})"

"""`virion scan`: find the particles in whole micrographs, classify each, give a verdict per micrograph.

Per micrograph: read it at full resolution (`micrograph.io`), resample it to the run's pixel size
(the crops' scale, 1 nm/px unless the models' metadata says `nm_per_px`), find particle candidates
with the run's learned heat-map detector when it has one, else the Laplacian-of-Gaussian blobs
(`micrograph.detector_files.choose_detector`; `detector="log"` forces LoG), cut a 256-px window
around each exactly as `virion crops` cut the training crops (`micrograph.crops.cut_window`:
mirror-filled at edges and padding), classify the windows with the run's recommended classifier
(`Classifier.predict`, no TTA by default), and keep a candidate only when its best class is not
`_background` and its probability is at least `min_confidence`. Runs without a `_background` class
rely on the detector's score instead: their candidates must also reach the detector's
`no_background_min_score`. The verdict rule is `micrograph.verdict`'s.

What a particle is for filaments (Ebola, Marburg): one filament, as the annotations box it. The
blob detector answers a filament's ridge at its width all along it; accepted candidates of one
class that link up into an elongated chain (`detect.filament_groups`) become one particle row
(`merge_filaments`): centre on the filament nearest its bounding-box centre, box = the chain's
bounding box, diameter = the filament's width. Round particles, even packed, are not elongated
and stay one row each.

Default `min_confidence`: the detector's own (`.min_confidence`): 0.5 for the LoG blobs (a particle
is kept only when the classifier gives its class more probability than all other classes together;
below that, crops of stain and debris, forced into some virus class, would outvote the real
particles), 0.3 for the learned heat map, whose candidates are mostly particles (both measured in
docs/micrographs.md).
"""

from __future__ import annotations

import csv
import io
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from virion.atomic import atomic_write_text
from virion.data.decode import DecodeError
from virion.data.layout import BACKGROUND_CLASS
from virion.data.padding import padding_mask
from virion.errors import VirionError
from virion.micrograph import detect as detection
from virion.micrograph.crops import _to_dtype, cut_window, mirror_fill
from virion.micrograph.detector_files import choose_detector
from virion.micrograph.io import read_micrograph
from virion.micrograph.sizes import find_class_sizes, read_class_sizes, suppress_by_class_size
from virion.micrograph.verdict import (
    DEFAULT_MARGIN,
    DEFAULT_MIN_PARTICLES,
    DEFAULT_WEIGHT_BY,
    Verdict,
    decide,
    particle_weights,
)

WINDOW_PX = 256  # the crops' window (virion crops --size default), in run pixels
DEFAULT_NM_PER_PX = 1.0
# A run's pixel size when its metadata does not state one: the public crops' 1 nm/px.
RUN_NM_PER_PX = 1.0

PARTICLE_COLUMNS = (
    "micrograph",
    "x",
    "y",
    "xmin",
    "ymin",
    "xmax",
    "ymax",
    "diameter_nm",
    "class",
    "probability",
    "score",
)
VERDICT_COLUMNS = ("micrograph", "verdict", "probability", "runner_up", "particles", "counts", "leading", "error")
SPECIMEN_COLUMNS = ("specimen", "micrographs", "verdict", "probability", "runner_up", "particles", "counts", "leading")
OVERLAY_DIR = "overlays"


@dataclass
class MicrographScan:
    """One micrograph's result: accepted particle rows (input pixels), their probabilities, the verdict."""

    micrograph: str
    particles: list[dict]
    probabilities: np.ndarray  # (n accepted, C)
    verdict: Verdict
    candidates: int = 0
    nm_per_px: float = DEFAULT_NM_PER_PX
    overlay: Path | None = None
    weights: np.ndarray | None = None  # (n accepted,) each particle's weight in the verdict; None: 1 each


@dataclass
class ScanResult:
    """Everything `scan` found; `out` is None when nothing was written."""

    micrographs: list[MicrographScan]
    class_names: list[str]
    failures: list[tuple[str, str]] = field(default_factory=list)  # (file, why unreadable)
    specimens: dict[str, Verdict] = field(default_factory=dict)
    specimen_members: dict[str, list[str]] = field(default_factory=dict)
    out: Path | None = None
    model: str = ""
    class_sizes: dict[str, float] | None = None  # the size prior used (nm per class); None: none
    detector: str = ""  # which detector proposed the candidates (`detector_files.choose_detector`)

    @property
    def particles(self) -> list[dict]:
        return [p for m in self.micrographs for p in m.particles]

    def verdict_rows(self) -> list[dict]:
        rows = [{"micrograph": m.micrograph, **m.verdict.row(), "error": ""} for m in self.micrographs]
        rows += [dict(dict.fromkeys(VERDICT_COLUMNS, ""), micrograph=f, verdict="unreadable", error=why)
                 for f, why in self.failures]  # fmt: skip
        return rows

    def specimen_rows(self) -> list[dict]:
        return [
            {"specimen": s, "micrographs": len(self.specimen_members[s]), **v.row()} for s, v in self.specimens.items()
        ]

    def summary(self) -> str:
        lines = [f"Scanned {len(self.micrographs)} micrograph(s) with {self.model}: {len(self.particles)} particles."]
        if self.detector:
            lines.append(f"Detector: {self.detector}.")
        if self.class_sizes:
            lines.append(
                f"Size prior: sizes of {len(self.class_sizes)} classes; particles of one class closer than half its "
                "size are counted once."
            )
        for m in self.micrographs[:20]:
            v = m.verdict
            lines.append(
                f"  {m.micrograph}: {v.verdict}" + (f" ({v.probability:.2f}, {v.counts_text()})" if v.particles else "")
            )
        if len(self.micrographs) > 20:
            lines.append(f"  ... and {len(self.micrographs) - 20} more")
        for s, v in self.specimens.items():
            lines.append(f"  specimen {s}: {v.verdict} ({v.particles} particles)")
        if self.failures:
            lines.append(f"Unreadable: {len(self.failures)} file(s), listed in verdicts.csv:")
            lines += [f"  {f}: {why}" for f, why in self.failures[:10]]
        if self.out:
            lines.append(f"Wrote {self.out}/particles.csv, verdicts.csv and {OVERLAY_DIR}/.")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------- helpers


def run_nm_per_px(classifier) -> float:
    """The run's pixel size: a model's metadata `nm_per_px` when stated, else RUN_NM_PER_PX."""
    for meta in classifier.metadata.values():
        value = (getattr(meta, "extra", None) or {}).get("nm_per_px")
        if value:
            return float(value)
    return RUN_NM_PER_PX


def resample(pixels: np.ndarray, factor: float) -> np.ndarray:
    """`pixels` scaled by `factor` (output px per input px), antialiased Lanczos, same dtype."""
    if abs(factor - 1.0) < 0.02:
        return pixels
    h, w = pixels.shape
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    out = np.asarray(Image.fromarray(pixels.astype(np.float32)).resize(size, Image.Resampling.LANCZOS))
    top = np.iinfo(pixels.dtype).max
    return np.clip(np.rint(out), 0, top).astype(pixels.dtype)


def _load_classifier(run_or_classifier, models=None):
    if hasattr(run_or_classifier, "predict") and hasattr(run_or_classifier, "class_names"):
        return run_or_classifier
    from virion.inference.classifier import Classifier

    return Classifier.load(run_or_classifier, models=models)


def specimen_of(path: str, specimen_by: str) -> str:
    """`folder`: the micrograph's folder name; else a regex searched in the path (group 1 if any)."""
    if specimen_by == "folder":
        return Path(path).parent.name or "."
    m = re.search(specimen_by, str(path))
    if m is None:
        raise VirionError(f"--specimen-by {specimen_by!r}: does not match {path}; fix the pattern or use `folder`")
    return m.group(1) if m.re.groups else m.group(0)


def _check_specimen_by(specimen_by: str | None) -> None:
    if specimen_by and specimen_by != "folder":
        try:
            re.compile(specimen_by)
        except re.error as exc:
            raise VirionError(f"--specimen-by {specimen_by!r}: not a regular expression ({exc})") from None


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise VirionError(f"--out {out}: is a file; name a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise VirionError(f"--out {out}: exists and is not empty; choose a new folder or pass --overwrite")
        for name in ("particles.csv", "verdicts.csv", "specimens.csv"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / OVERLAY_DIR, ignore_errors=True)
    (out / OVERLAY_DIR).mkdir(parents=True, exist_ok=True)


def _csv_text(rows: list[dict], columns) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _overlay_names(paths: list[str]) -> dict[str, str]:
    """A unique, file-system-safe PNG name per micrograph (its stem; parent folders added on clashes)."""
    names: dict[str, str] = {}
    used: set[str] = set()
    for p in paths:
        parts = Path(p).with_suffix("").parts
        for k in range(1, len(parts) + 1):
            name = re.sub(r"[^A-Za-z0-9._-]+", "_", "__".join(parts[-k:])) + ".png"
            if name not in used:
                break
        else:
            name = f"{len(used)}_{name}"
        used.add(name)
        names[p] = name
    return names


# ------------------------------------------------------------------------------------ the scanner


def cut_windows(pixels: np.ndarray, valid: np.ndarray, xs, ys, size: int = WINDOW_PX) -> np.ndarray:
    """(N, size, size) windows centred on (xs, ys), filled as `virion crops` fills them.

    The micrograph is mirror-filled once (padding: `crops.mirror_fill`; past the border: reflected,
    as `cut_window` reflects) and each window is then a plain slice: the same pixels as
    `crops.cut_window` at scale 1, without redoing the fill for every window.
    """
    if (~valid).any():
        filled = _to_dtype(mirror_fill(pixels.astype(np.float32), valid), pixels.dtype)
    else:
        filled = pixels
    half = size  # enough reflection for any window whose centre is inside the image
    big = np.pad(filled, half, mode="reflect") if min(filled.shape) > half else None
    out = np.empty((len(xs), size, size), dtype=pixels.dtype)
    for i, (x, y) in enumerate(zip(xs, ys)):
        x0, y0 = int(np.floor(x - size / 2 + 0.5)), int(np.floor(y - size / 2 + 0.5))
        if big is not None:
            out[i] = big[y0 + half : y0 + half + size, x0 + half : x0 + half + size]
        else:  # a micrograph smaller than the window: the general path
            out[i] = cut_window(pixels, valid, x, y, size)[0]
    return out


def merge_filaments(x, y, d, boxes, probs, score, contrast=None):
    """One row per filament: accepted candidates that `detect.filament_groups` joins become one particle.

    Its centre is the member nearest the group's bounding-box centre (a point on the filament, as
    the annotations' box centres are), its box the members' bounding box, its diameter their median
    (the filament's width), its probabilities their mean, its score their best.
    """
    groups = detection.filament_groups(x, y, d, np.argmax(probs, axis=1) if len(probs) else [], contrast)
    if not groups:
        return x, y, d, boxes, probs, score
    grouped = np.concatenate(groups)
    single = np.setdiff1d(np.arange(len(x)), grouped)
    out = [[x[single]], [y[single]], [d[single]], [boxes[single]], [probs[single]], [score[single]]]
    for g in groups:
        box = np.array([boxes[g, 0].min(), boxes[g, 1].min(), boxes[g, 2].max(), boxes[g, 3].max()])
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        c = g[np.argmin(np.hypot(x[g] - cx, y[g] - cy))]
        for lst, value in zip(out, (x[c], y[c], np.median(d[g]), box, probs[g].mean(axis=0), score[g].max())):
            lst.append(np.asarray(value)[None])
    return tuple(np.concatenate(parts) for parts in out)


def scan_pixels(
    classifier,
    pixels: np.ndarray,
    nm_per_px: float = DEFAULT_NM_PER_PX,
    *,
    name: str = "micrograph",
    model: str | None = None,
    min_confidence: float | None = None,
    min_particles: int = DEFAULT_MIN_PARTICLES,
    margin: float = DEFAULT_MARGIN,
    min_score: float | None = None,
    threshold: float | None = None,
    max_candidates: int = detection.DEFAULT_MAX_CANDIDATES,
    tta: bool = False,
    batch_size: int = 32,
    weight_by: str = DEFAULT_WEIGHT_BY,
    class_sizes: dict[str, float] | None = None,
    detector=None,
) -> MicrographScan:
    """Scan one micrograph given as a 2-D array at `nm_per_px`; particle rows are in its own pixels.

    detector: a loaded detector (`detector_files.choose_detector`; load it once for many micrographs),
    a detector folder, or None / "log" for the LoG blobs. threshold (candidates), min_confidence
    (accepted particles) and min_score (runs without `_background`) default to the detector's own.
    weight_by: how particles weigh in the verdict (`verdict.particle_weights`: "score", the
    detector's score, or "none"). class_sizes: nm
    per class (`micrograph.sizes`); accepted particles of one class closer than half its size become
    one (the strongest); None: no size prior.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 2:
        raise VirionError(f"{name}: a micrograph must be a 2-D grayscale image, got shape {pixels.shape}")
    if pixels.dtype not in (np.uint8, np.uint16):
        pixels = np.clip(pixels, 0, 65535).astype(np.uint16)
    run_nm = run_nm_per_px(classifier)
    factor = float(nm_per_px) / run_nm  # run px per input px
    work = resample(pixels, factor)
    factor = work.shape[1] / pixels.shape[1] if work is not pixels else 1.0
    valid = ~padding_mask(work)
    filled = detection.fill_padding(work, valid)
    detector = choose_detector(detector)[0]
    threshold = detector.threshold if threshold is None else float(threshold)
    min_confidence = detector.min_confidence if min_confidence is None else float(min_confidence)
    cands = detector.detect(
        work, run_nm, mask=~valid, filled=filled, threshold=threshold, max_candidates=max_candidates
    )
    names = list(classifier.class_names)
    has_background = BACKGROUND_CLASS in names
    if min_score is None:
        min_score = threshold if has_background else max(threshold, detector.no_background_min_score)
    cands = cands.take(cands.score >= min_score)
    probs = np.zeros((0, len(names)))
    if len(cands):
        windows = cut_windows(work, valid, cands.x, cands.y, WINDOW_PX)
        preds = classifier.predict(windows, model=model, tta=tta, batch_size=batch_size)
        probs = np.asarray(preds.probabilities, dtype=float)
        names = list(preds.class_names)
    best = np.argmax(probs, axis=1) if len(probs) else np.zeros(0, int)
    conf = probs.max(axis=1) if len(probs) else np.zeros(0)
    background = names.index(BACKGROUND_CLASS) if BACKGROUND_CLASS in names else -1
    accept = (best != background) & (conf >= min_confidence)
    index = np.flatnonzero(accept)
    kept = probs[index]
    x, y, d, score = cands.x[index], cands.y[index], cands.diameter[index], cands.score[index]
    boxes = detection.square_boxes(x, y, d)
    if len(index) >= detection.FILAMENT_MIN_MEMBERS:
        polarity = int(np.sign(np.sum(cands.polarity[index]))) or 1
        contrast = detection.particle_contrast(filled, valid, polarity, float(np.median(d)) / 4)
        x, y, d, boxes, kept, score = merge_filaments(x, y, d, boxes, kept, score, contrast)
    if class_sizes and len(x) > 1:
        sizes_px = {c: float(v) / run_nm for c, v in class_sizes.items()}
        one = suppress_by_class_size(x, y, [names[i] for i in np.argmax(kept, axis=1)], score, sizes_px)
        x, y, d, boxes, kept, score = x[one], y[one], d[one], boxes[one], kept[one], score[one]
    # back to the input micrograph's pixels
    x, y, d, boxes = x / factor, y / factor, d / factor, boxes / factor
    rows = []
    for i in range(len(x)):
        rows.append(
            {
                "micrograph": name,
                "x": round(float(x[i]), 1),
                "y": round(float(y[i]), 1),
                "xmin": round(float(boxes[i, 0]), 1),
                "ymin": round(float(boxes[i, 1]), 1),
                "xmax": round(float(boxes[i, 2]), 1),
                "ymax": round(float(boxes[i, 3]), 1),
                "diameter_nm": round(float(d[i] * factor * run_nm), 1),
                "class": names[int(np.argmax(kept[i]))],
                "probability": round(float(kept[i].max()), 4),
                "score": round(float(score[i]), 3),
            }
        )
    weights = particle_weights(score, weight_by)
    verdict = decide(kept, names, weights=weights, min_particles=min_particles, margin=margin)
    return MicrographScan(name, rows, kept, verdict, candidates=len(cands), nm_per_px=float(nm_per_px), weights=weights)


def scan(
    run_or_classifier,
    paths,
    out: str | Path | None = None,
    *,
    nm_per_px: float | None = None,
    model: str | None = None,
    min_confidence: float | None = None,
    min_particles: int = DEFAULT_MIN_PARTICLES,
    margin: float = DEFAULT_MARGIN,
    specimen_by: str | None = None,
    threshold: float | None = None,
    detector=None,
    tta: bool = False,
    batch_size: int = 32,
    weight_by: str = DEFAULT_WEIGHT_BY,
    class_sizes: dict[str, float] | str | Path | None = None,
    size_prior: bool = True,
    overlays: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> ScanResult:
    """Scan micrograph files/folders (folders searched recursively) with a run folder or a Classifier.

    nm_per_px: the pixel size of files whose metadata states none (default 1 nm/px). With `out`,
    writes particles.csv, verdicts.csv, specimens.csv (with `specimen_by`) and overlays/*.png;
    an existing non-empty `out` is refused unless `overwrite`. Unreadable files are listed, not fatal.
    Size prior (`micrograph.sizes`): `class_sizes` (nm per class, or a class_sizes.json), else the
    run folder's (or its training data's) class_sizes.json; none for a Classifier object or an older
    run; `size_prior=False` turns it off. Detector (`micrograph.detector_files`): None = the run
    folder's learned detector (RUN/detector, else its training data's), else LoG; "log"; a detector
    folder; or a loaded detector. `threshold`, `min_confidence`: default the detector's own.
    """
    from tqdm.auto import tqdm

    from virion.inference.inputs import collect_inputs

    if min_confidence is not None and not 0 <= min_confidence <= 1:
        raise VirionError(f"--min-confidence {min_confidence}: must be between 0 and 1")
    if nm_per_px is not None and not nm_per_px > 0:
        raise VirionError(f"--nm-per-px {nm_per_px}: must be a positive number of nanometres per pixel")
    _check_specimen_by(specimen_by)
    files = collect_inputs([paths] if isinstance(paths, (str, Path)) else list(paths))
    if not files:
        raise VirionError(f"{paths}: no micrograph found; pass image files or folders holding them")
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        _prepare_out(out_dir, overwrite)
    classifier = _load_classifier(run_or_classifier)
    detector, detector_text = choose_detector(detector, run_or_classifier)
    sizes = None
    if size_prior:
        if isinstance(class_sizes, (str, Path)):
            sizes = read_class_sizes(class_sizes)
        elif class_sizes is not None:
            sizes = {str(k): float(v) for k, v in class_sizes.items()}
        elif isinstance(run_or_classifier, (str, Path)):
            sizes = find_class_sizes(run_or_classifier)
    chosen = model or getattr(classifier, "default_model", None)
    result = ScanResult(
        [], list(classifier.class_names), model=str(chosen or ""), class_sizes=sizes, detector=detector_text
    )
    names = _overlay_names([str(f) for f in files])
    for path in tqdm(files, desc="virion scan", unit="micrograph", disable=not progress):
        shown = str(path)
        try:
            mic = read_micrograph(path)
        except (DecodeError, VirionError, OSError, ValueError) as exc:
            result.failures.append((shown, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
            continue
        size = mic.nm_per_px or nm_per_px or DEFAULT_NM_PER_PX
        one = scan_pixels(
            classifier, mic.pixels, size, name=shown, model=model, min_confidence=min_confidence,
            min_particles=min_particles, margin=margin, threshold=threshold, tta=tta, batch_size=batch_size,
            weight_by=weight_by, class_sizes=sizes, detector=detector,
        )  # fmt: skip
        if out_dir is not None and overlays:
            v = one.verdict
            title = f"{Path(shown).name}: {v.verdict}" + (
                f" ({v.probability:.2f}; {v.counts_text()})" if v.particles else ""
            )
            from virion.micrograph.overlay import save_overlay

            one.overlay = save_overlay(
                out_dir / OVERLAY_DIR / names[shown], mic.pixels, one.particles, result.class_names,
                nm_per_px=size, title=title,
            )  # fmt: skip
        result.micrographs.append(one)
    if specimen_by:
        groups: dict[str, list[MicrographScan]] = {}
        for m in result.micrographs:
            groups.setdefault(specimen_of(m.micrograph, specimen_by), []).append(m)
        for s, members in sorted(groups.items()):
            stacked = np.concatenate([m.probabilities for m in members]) if members else np.zeros((0, 0))
            weights = [np.ones(len(m.probabilities)) if m.weights is None else m.weights for m in members]
            result.specimens[s] = decide(
                stacked.reshape(-1, len(result.class_names)), result.class_names,
                weights=np.concatenate(weights) if weights else None, min_particles=min_particles, margin=margin,
            )  # fmt: skip
            result.specimen_members[s] = [m.micrograph for m in members]
    if out_dir is not None:
        atomic_write_text(out_dir / "particles.csv", _csv_text(result.particles, PARTICLE_COLUMNS))
        atomic_write_text(out_dir / "verdicts.csv", _csv_text(result.verdict_rows(), VERDICT_COLUMNS))
        if specimen_by:
            atomic_write_text(out_dir / "specimens.csv", _csv_text(result.specimen_rows(), SPECIMEN_COLUMNS))
        result.out = out_dir
    return result

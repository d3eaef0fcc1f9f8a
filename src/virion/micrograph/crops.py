"""Cut a classification dataset from annotated micrographs, the way the public TEM virus crops were cut.

Each annotation gives one window of `size` px centred on its box centre (or point), at
`target_nm_per_px` (1 nm/px by default, the scale of the public crops): at the micrograph's own
scale the window is the array slice itself; otherwise the window's area is resampled (Pillow's
antialiased Lanczos on float data). Pixel size: the file's own metadata when it states one, else
`nm_per_px`, else the target (no resampling; the summary says how many micrographs that was).

Filling (why mirror): a window that reaches past the image edge or into black padding
(`data.padding`) needs values there. Black or a constant leaks the padded fraction through the
crop's minimum and its count of dark pixels; noise matched to the valid pixels' mean and sd keeps
the histogram but not the texture (flat white noise next to stained, correlated structure is easy
to see). Each missing pixel takes the valid pixel mirrored across the nearest valid one (reflect
about the boundary, as `np.pad(mode="reflect")` does at a straight edge, a point reflection at a
corner; reflected again when the mirror is missing too): every filled value is a real value of the
same micrograph at the same scale, with its texture and grain, so the histogram, minimum, dark-pixel
count and local statistics stay those of data (measured in docs/micrographs.md).

Background windows (`background=N`): up to N per micrograph, entirely inside the image, with no
padding pixel, not within `background_margin` target px of any box (a point counts as a box of
half the window), and not overlapping each other; chosen at random, seeded by the micrograph's
name, so runs repeat. Labelled `_background`.

Detector windows (`detected=True`): the windows `virion scan` shows the classifier are centred on
the detector's candidates (`micrograph.detect`, run as the scanner runs it, at the target scale),
not on box centres: off-centre, and for large particles often on their textured interior or rim
(the LoG answers those at small scales). With `detected`, every candidate whose centre lies inside
an annotated box also gives a window of that box's class (the box whose centre is nearest when it is
in several), besides the box-centred window, and the `_background` windows (`background=N`) are up to
N candidates whose centre is inside no box (hard negatives: the stain, debris and edges the scanner
actually proposes; their windows may show particles off-centre, as the scanner's do), chosen at
random with the same seed. This is how `benchmarks/bench_scan.py --detected-positives` trains
(measured in docs/micrographs.md). `detector` (a folder from `virion detector`, or a loaded one):
the learned detector proposes those candidates instead of the LoG blobs, and is copied to
`out/detector/` (with or without `detected`), so that a run trained on these crops keeps it and
`virion scan` uses it (`micrograph.detector_files`).

Output: `out/<Class>/<group>__<micrograph>_<i>.png` (uint8 or uint16 as the micrograph) and
`out/manifest.csv` (`path,label,group,micrograph,x,y,filled`), `out/class_sizes.json` (per class,
the median shorter side of its boxes in nm at the target scale: `micrograph.sizes`, the size prior
`virion scan` uses), written in a temporary folder beside `out` and renamed into place when complete.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import shutil
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from virion.atomic import atomic_write_text
from virion.data.decode import DecodeError
from virion.data.layout import BACKGROUND_CLASS, group_of
from virion.data.padding import padding_mask
from virion.errors import VirionError
from virion.fs import publish_output_dir, start_output_dir
from virion.micrograph.boxes import Annotation, Annotations, read_boxes_csv, read_class_list, read_yolo
from virion.micrograph.detector_files import LogDetector, choose_detector
from virion.micrograph.heatmap import DETECTOR_DIR
from virion.micrograph.io import pixel_size, plausible_nm_per_px, read_micrograph
from virion.micrograph.sizes import CLASS_SIZES_FILE, class_sizes_from_boxes, class_sizes_json

MANIFEST = "manifest.csv"
BAD_ROWS = "bad_rows.txt"
MANIFEST_COLUMNS = ("path", "label", "group", "micrograph", "x", "y", "filled")
# Reflections tried before a missing pixel takes its nearest valid pixel's value.
_MAX_REFLECTIONS = 4
# Lanczos reaches 3 source pixels (times the shrink factor) beyond the window's box.
_LANCZOS_SUPPORT = 3
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class CropsResult:
    """What `cut_crops` wrote and what it skipped; `summary()` is the screen the CLI prints."""

    out: Path
    size: int
    target_nm_per_px: float
    counts: Counter = field(default_factory=Counter)  # crops per class (background included)
    filled: Counter = field(default_factory=Counter)  # filled windows per class
    filled_border: int = 0  # of those, reaching past the image edge
    filled_padding: int = 0  # of those, reaching into black padding
    background: int = 0
    detected: int = 0  # windows on the detector's candidates inside an annotated box (its class)
    detector: str = ""  # the learned detector copied to out/detector/ ("": none)
    bad: list[str] = field(default_factory=list)
    micrographs: int = 0
    groups: int = 0
    group_source: str = ""
    scale_sources: Counter = field(default_factory=Counter)  # "metadata" / "--nm-per-px" / "assumed"
    resampled: int = 0  # micrographs resampled to the target scale
    seconds: float = 0.0

    @property
    def manifest(self) -> Path:
        return self.out / MANIFEST

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self, max_bad_lines: int = 12) -> str:
        lines = [
            f"virion crops: {self.total:,} crops of {self.size} px at {self.target_nm_per_px:g} nm/px from "
            f"{self.micrographs} micrographs in {self.seconds:.1f} s -> {self.out}"
        ]
        width = max([len("class"), len("total")] + [len(c) for c in self.counts])
        lines.append(f"  {'class':<{width}} {'crops':>7} {'filled':>7}")
        for name in sorted(self.counts, key=lambda c: (c == BACKGROUND_CLASS, c)):
            lines.append(f"  {name:<{width}} {self.counts[name]:>7,} {self.filled[name]:>7,}")
        lines.append(f"  {'total':<{width}} {self.total:>7,} {sum(self.filled.values()):>7,}")
        n_filled = sum(self.filled.values())
        lines.append(
            f"Filled windows: {n_filled:,} ({self.filled_border:,} past the image edge, {self.filled_padding:,} into "
            f"black padding), filled by mirroring the valid pixels (see docs/micrographs.md)."
        )
        if self.detected:
            lines.append(f"Detector windows: {self.detected:,} (on candidates inside a box, of its class).")
        if self.detector:
            lines.append(
                f"Detector: {self.detector}, copied to {self.out / DETECTOR_DIR} (runs trained here scan with it)."
            )
        if self.background:
            how = "detector candidates on no box" if self.detected else "never filled"
            lines.append(f"Background windows: {self.background:,} (class {BACKGROUND_CLASS}, {how}).")
        scale = ", ".join(f"{n} {src}" for src, n in sorted(self.scale_sources.items()))
        lines.append(
            f"Pixel size: {scale}; {self.resampled} micrograph(s) resampled to {self.target_nm_per_px:g} nm/px."
        )
        if self.scale_sources.get("assumed"):
            lines.append(
                f"  'assumed': the file states no pixel size and --nm-per-px was not given, taken as "
                f"{self.target_nm_per_px:g} nm/px (no resampling)."
            )
        lines.append(f"Groups: {self.groups:,} from {self.group_source}.")
        if self.bad:
            lines.append(f"Bad rows: {len(self.bad):,} skipped (all listed in {self.out / BAD_ROWS}):")
            lines += [f"  {line}" for line in self.bad[:max_bad_lines]]
            if len(self.bad) > max_bad_lines:
                lines.append(f"  ... and {len(self.bad) - max_bad_lines:,} more")
        else:
            lines.append("Bad rows: 0.")
        lines.append(f"Train on it: virion train --data {self.manifest} (splits keep each group on one side).")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ windows


def mirror_fill(values: np.ndarray, valid: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """A copy of `values` whose invalid pixels (within `where`, default all) hold mirrored valid pixels.

    Each missing pixel p takes the value at 2q - p, q being its nearest valid pixel (the mirror
    across the valid region's edge); when that is missing too, the reflection is repeated from
    there, and after `_MAX_REFLECTIONS` tries the nearest valid value is used.
    """
    out = np.array(values, copy=True)
    missing = ~valid if where is None else (~valid & where)
    if not missing.any():
        return out
    if not valid.any():
        raise ValueError("no valid pixel to fill from")
    _, (iy, ix) = ndimage.distance_transform_edt(~valid, return_indices=True)
    h, w = valid.shape
    py, px = np.nonzero(missing)
    sy, sx = iy[py, px], ix[py, px]  # fallback: the nearest valid pixel
    cy, cx = py.copy(), px.copy()
    todo = np.ones(py.shape, dtype=bool)
    for _ in range(_MAX_REFLECTIONS):
        qy, qx = iy[cy[todo], cx[todo]], ix[cy[todo], cx[todo]]
        ry, rx = 2 * qy - cy[todo], 2 * qx - cx[todo]
        inside = (ry >= 0) & (ry < h) & (rx >= 0) & (rx < w)
        good = np.zeros(ry.shape, dtype=bool)
        good[inside] = valid[ry[inside], rx[inside]]
        idx = np.flatnonzero(todo)
        sy[idx[good]], sx[idx[good]] = ry[good], rx[good]
        # The next reflection starts from the (clipped) mirror point.
        cy[idx], cx[idx] = np.clip(ry, 0, h - 1), np.clip(rx, 0, w - 1)
        todo[idx[good]] = False
        if not todo.any():
            break
    out[py, px] = values[sy, sx]
    return out


def _context(pixels: np.ndarray, valid: np.ndarray, y0: int, x0: int, h: int, w: int):
    """The rectangle [y0, y0+h) x [x0, x0+w) of the micrograph as float32, with its validity (False outside)."""
    H, W = pixels.shape
    values = np.zeros((h, w), dtype=np.float32)
    ok = np.zeros((h, w), dtype=bool)
    ys, ye, xs, xe = max(y0, 0), min(y0 + h, H), max(x0, 0), min(x0 + w, W)
    if ys < ye and xs < xe:
        values[ys - y0 : ye - y0, xs - x0 : xe - x0] = pixels[ys:ye, xs:xe]
        ok[ys - y0 : ye - y0, xs - x0 : xe - x0] = valid[ys:ye, xs:xe]
    return values, ok


def _to_dtype(values: np.ndarray, dtype) -> np.ndarray:
    top = np.iinfo(dtype).max
    return np.clip(np.rint(values), 0, top).astype(dtype)


def _reach(scale: float) -> int:
    """Source pixels beyond a window's area that its resampling reads (none at the micrograph's scale)."""
    if abs(scale - 1.0) < 1e-9:
        return 0
    return int(np.ceil(_LANCZOS_SUPPORT * max(scale, 1.0))) + 1


def cut_window(
    pixels: np.ndarray, valid: np.ndarray, cx: float, cy: float, size: int, scale: float = 1.0
) -> tuple[np.ndarray, float, bool, bool]:
    """One `size` x `size` window centred on (cx, cy) (micrograph pixels), `scale` source px per output px.

    Returns (window in the micrograph's dtype, fraction of the window's source area that was filled,
    whether it reached past the edge, whether it reached into padding). At scale 1 a window inside
    the valid area is exactly `pixels[y0:y0+size, x0:x0+size]` with x0 = round(cx - size/2).
    Raises ValueError when the window holds no valid pixel at all.
    """
    H, W = pixels.shape
    same = abs(scale - 1.0) < 1e-9
    if same:
        x0, y0 = int(np.floor(cx - size / 2 + 0.5)), int(np.floor(cy - size / 2 + 0.5))
        ix0, iy0, iw = x0, y0, size  # the source area the window shows
        reach = 0
    else:
        half = size * scale / 2
        ix0, iy0 = int(np.floor(cx - half)), int(np.floor(cy - half))
        iw = int(np.ceil(cx + half)) - ix0
        iw = max(iw, int(np.ceil(cy + half)) - iy0)
        reach = _reach(scale)
    # The area the result depends on: the window's source area plus the resampling kernel's reach.
    ay0, ax0, an = iy0 - reach, ix0 - reach, iw + 2 * reach
    inside = ay0 >= 0 and ax0 >= 0 and ay0 + an <= H and ax0 + an <= W
    if inside and valid[ay0 : ay0 + an, ax0 : ax0 + an].all():
        if same:
            return pixels[y0 : y0 + size, x0 : x0 + size].copy(), 0.0, False, False
        area = pixels[ay0 : ay0 + an, ax0 : ax0 + an].astype(np.float32)
        return _resample(area, cx - ax0, cy - ay0, size, scale, pixels.dtype), 0.0, False, False
    # Context around the area, so that mirrors have valid pixels to come from.
    margin = an
    values, ok = _context(pixels, valid, ay0 - margin, ax0 - margin, an + 2 * margin, an + 2 * margin)
    core = (slice(margin, margin + an), slice(margin, margin + an))
    shown = (slice(margin + reach, margin + reach + iw), slice(margin + reach, margin + reach + iw))
    missing_shown = ~ok[shown]
    filled = float(missing_shown.mean())
    in_image = np.zeros_like(ok)
    ys, xs = max(0, -(ay0 - margin)), max(0, -(ax0 - margin))
    in_image[ys : max(ys, H - (ay0 - margin)), xs : max(xs, W - (ax0 - margin))] = True
    past_edge = bool((~in_image[shown]).any())
    into_padding = bool((in_image[shown] & ~ok[shown]).any())
    if missing_shown.all():
        raise ValueError("the window holds no valid pixel (all outside the image or black padding)")
    where = np.zeros_like(ok)
    where[core] = True
    values = mirror_fill(values, ok, where)[core]
    if same:
        window = values[reach : reach + size, reach : reach + size]
        return _to_dtype(window, pixels.dtype), filled, past_edge, into_padding
    return _resample(values, cx - ax0, cy - ay0, size, scale, pixels.dtype), filled, past_edge, into_padding


def _resample(area: np.ndarray, cx: float, cy: float, size: int, scale: float, dtype) -> np.ndarray:
    """The window centred on (cx, cy) of `area` (coordinates local to it) resized to size x size."""
    half = size * scale / 2
    box = (cx - half, cy - half, cx + half, cy + half)
    image = Image.fromarray(np.ascontiguousarray(area, dtype=np.float32))
    out = np.asarray(image.resize((size, size), Image.Resampling.LANCZOS, box=box))
    return _to_dtype(out, dtype)


# ------------------------------------------------------------------------------ background windows


def background_centres(
    valid: np.ndarray,
    boxes: list[tuple[float, float, float, float]],
    count: int,
    size: int,
    scale: float,
    margin: float,
    rng: np.random.Generator,
) -> list[tuple[float, float]]:
    """Centres (x, y) of up to `count` windows of `size` px at `scale` source px per px: inside the
    image, all valid, at least `margin` source px from every box, not overlapping each other."""
    H, W = valid.shape
    # A few px of clearance, and what the resampler reads around the window stays valid too.
    side = int(np.ceil(size * scale)) + 2 * max(_LANCZOS_SUPPORT + 1, _reach(scale))
    if count <= 0 or side > min(H, W):
        return []
    blocked = ~valid
    blocked = blocked.copy()
    for x0, y0, x1, y1 in boxes:
        ys, ye = max(int(np.floor(y0 - margin)), 0), min(int(np.ceil(y1 + margin)), H)
        xs, xe = max(int(np.floor(x0 - margin)), 0), min(int(np.ceil(x1 + margin)), W)
        if ys < ye and xs < xe:
            blocked[ys:ye, xs:xe] = True
    stride = max(1, side // 8)
    centres: list[tuple[float, float]] = []
    for _ in range(count):
        table = np.zeros((H + 1, W + 1), dtype=np.int64)
        table[1:, 1:] = np.cumsum(np.cumsum(blocked, axis=0, dtype=np.int64), axis=1)
        ys = np.arange(0, H - side + 1, stride)
        xs = np.arange(0, W - side + 1, stride)
        Y, X = np.meshgrid(ys, xs, indexing="ij")
        sums = table[Y + side, X + side] - table[Y, X + side] - table[Y + side, X] + table[Y, X]
        free = np.flatnonzero(sums.ravel() == 0)
        if free.size == 0:
            break
        pick = free[rng.integers(free.size)]
        y, x = int(Y.ravel()[pick]), int(X.ravel()[pick])
        blocked[y : y + side, x : x + side] = True
        centres.append((x + side / 2, y + side / 2))
    return centres


# ---------------------------------------------------------------------------------------- the command


def _safe(text: str) -> str:
    """A file-name part: odd characters to '_', no '__' (it separates the group from the micrograph)."""
    text = _SAFE_NAME.sub("_", text).strip("._") or "_"
    while "__" in text:
        text = text.replace("__", "_")
    return text


def _micrograph_ids(paths: list[Path]) -> dict[Path, str]:
    """A short unique name per micrograph for file names: its stem, plus a hash where stems collide."""
    stems = Counter(_safe(p.stem) for p in paths)
    out = {}
    for p in paths:
        stem = _safe(p.stem)
        if stems[stem] > 1:
            stem = f"{stem}-{hashlib.sha1(str(p).encode()).hexdigest()[:6]}"
        out[p] = stem
    return out


def shown_path(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def _write_png(path: Path, window: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(window).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


def cut_crops(
    boxes=None,
    out=None,
    *,
    yolo=None,
    images=None,
    classes=None,
    size: int = 256,
    target_nm_per_px: float = 1.0,
    nm_per_px: float | None = None,
    background: int = 0,
    background_margin: float = 16.0,
    group_by: str | None = None,
    detected: bool = False,
    detector=None,
    overwrite: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> CropsResult:
    """Cut `size`-px windows around every annotated particle (and optional background windows) into `out`.

    boxes: a boxes CSV, or yolo (labels folder) + images (images folder) + classes (class list
    file). classes with a CSV keeps only the listed classes (other labels are bad rows).
    nm_per_px: the pixel size of micrographs whose file states none. background: windows per
    micrograph away from every box (margin in target px), class `_background`. group_by: a regular
    expression on the micrograph's file name, as `virion train --group-by` (only without a
    session/group column). detected: also a window on every detector candidate inside a box (of the
    box's class), and background windows from candidates in no box (module docstring). detector: a
    learned detector (folder or loaded) that proposes those candidates instead of LoG, copied to
    out/detector/ in any case. Returns a CropsResult; bad rows are listed in it and in out/bad_rows.txt.
    """
    start = time.perf_counter()
    if out is None:
        raise VirionError("--out: give the output folder for the crops")
    out = Path(out).expanduser()
    size = int(size)
    if not 8 <= size <= 4096:
        raise VirionError(f"--size {size}: give a window size from 8 to 4096 px")
    if plausible_nm_per_px(target_nm_per_px) is None:
        raise VirionError(f"--target-nm-per-px {target_nm_per_px}: give a pixel size from 0.005 to 500 nm")
    if nm_per_px is not None and plausible_nm_per_px(nm_per_px) is None:
        raise VirionError(f"--nm-per-px {nm_per_px}: give a pixel size from 0.005 to 500 nm")
    if int(background) < 0:
        raise VirionError(f"--background {background}: give a number of windows per micrograph (0 = none)")
    annotations = read_annotations(boxes, yolo, images, classes)
    regex = _group_regex(annotations, group_by)
    finder, finder_text = choose_detector("log" if detector is None else detector)
    tmp = start_output_dir(out, overwrite, MANIFEST, "virion crops")
    try:
        result = _cut_all(
            annotations, tmp, out, size, float(target_nm_per_px), nm_per_px, int(background),
            float(background_margin), regex, seed, progress, finder if detected else None,
        )  # fmt: skip
        if not isinstance(finder, LogDetector):
            finder.save(tmp / DETECTOR_DIR)
            result.detector = finder_text
        result.seconds = time.perf_counter() - start
        publish_output_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def read_annotations(boxes, yolo, images, classes) -> Annotations:
    """The annotations of a boxes CSV, or of YOLO labels + images + class list (one of the two): what
    `virion crops` and `virion detector` both read."""
    if (boxes is None) == (yolo is None):
        raise VirionError("give either a boxes CSV or --yolo LABELS_DIR (with --classes and --images), not both")
    if yolo is not None:
        if images is None or classes is None:
            raise VirionError("--yolo needs --classes CLASSES.txt and --images IMAGES_DIR too")
        return read_yolo(yolo, images, classes)
    boxes = Path(boxes).expanduser()
    if not boxes.is_file():
        raise VirionError(f"{boxes}: no such boxes CSV; give a CSV path,label,xmin,ymin,xmax,ymax (or x,y)")
    names = read_class_list(classes) if classes is not None else None
    return read_boxes_csv(boxes, classes=names)


def _group_regex(annotations: Annotations, group_by: str | None):
    if group_by is None:
        return None
    if annotations.group_column is not None:
        raise VirionError(
            f"{annotations.source}: the CSV has a '{annotations.group_column}' column and --group-by "
            f"{group_by!r} was given too; use one of them"
        )
    for path in annotations.micrographs:  # every name must match before anything is cut
        group_of(path, group_by)
    return group_by


def _cut_all(annotations, tmp, out, size, target, nm_per_px, background, margin, regex, seed, progress, detector):
    """Cut every micrograph's windows into `tmp`; `detector`: the one proposing detector windows (None: none)."""
    from tqdm import tqdm

    result = CropsResult(out, size, target, bad=list(annotations.bad))
    by_micrograph: dict[Path, list[Annotation]] = {p: [] for p in annotations.micrographs}
    for a in annotations.items:
        by_micrograph[a.micrograph].append(a)
    base = annotations.base or annotations.source.parent
    ids = _micrograph_ids(list(by_micrograph))
    if annotations.group_column is not None:
        result.group_source = f"the '{annotations.group_column}' column"
    elif regex is not None:
        result.group_source = f"--group-by {regex!r} on the micrograph file names"
    else:
        result.group_source = "the micrograph (one group each)"
    rows: list[tuple] = []
    box_sides: list[tuple[str, float, float]] = []  # (label, width, height) in nm at the target scale
    groups: set[str] = set()
    made_dirs: set[str] = set()
    todo = [p for p, items in by_micrograph.items() if items or background > 0]
    for path in tqdm(todo, desc="virion crops", unit="micrograph", disable=not progress):
        items = by_micrograph[path]
        try:
            micrograph = read_micrograph(path)
        except DecodeError as exc:
            reason = f"cannot read the micrograph ({exc.reason})"
            result.bad += [f"{a.where}: {reason}" for a in items] or [f"{shown_path(path, base)}: {reason}"]
            continue
        source_nm, how = pixel_size(micrograph, nm_per_px, target)
        result.scale_sources[how] += 1
        scale = target / source_nm
        if abs(scale - 1.0) >= 1e-9:
            result.resampled += 1
        pixels = micrograph.pixels
        valid = ~padding_mask(pixels)
        H, W = pixels.shape
        group = annotations.micrographs[path]
        if group is None:
            group = group_of(path, regex) if regex is not None else ids[path]
        shown = shown_path(path, base)
        prefix = f"{_safe(group)}__{ids[path]}"
        out_window = _WindowWriter(tmp, result, rows, made_dirs, prefix, group, shown).add
        kept: list[Annotation] = []  # this micrograph's particles that were cut, in its pixels
        for a in items:
            a = a.in_pixels(W, H)
            if not (0 <= a.x < W and 0 <= a.y < H):
                result.bad.append(
                    f"{a.where}: centre ({a.x:g}, {a.y:g}) is outside the image ({W} x {H} px) of {path.name}"
                )
                continue
            try:
                window, filled, past_edge, into_padding = cut_window(pixels, valid, a.x, a.y, size, scale)
            except ValueError as exc:
                result.bad.append(f"{a.where}: {exc}")
                continue
            out_window(a.label, a.x, a.y, window, filled, past_edge, into_padding)
            kept.append(a)
            if a.box is not None:
                nm = target / scale  # nm per source px
                box_sides.append((a.label, (a.box[2] - a.box[0]) * nm, (a.box[3] - a.box[1]) * nm))
        if detector is not None:
            positives, negatives = detector_windows(pixels, valid, kept, scale, size, detector)
            rng = np.random.default_rng([seed, zlib.crc32(shown.encode())])
            negatives = [negatives[i] for i in rng.permutation(len(negatives))[:background]]
            for label, x, y in positives:
                out_window(label, x, y, *cut_window(pixels, valid, x, y, size, scale))
                result.detected += 1
            for x, y in negatives:
                out_window(BACKGROUND_CLASS, x, y, *cut_window(pixels, valid, x, y, size, scale))
                result.background += 1
        elif background > 0:
            rng = np.random.default_rng([seed, zlib.crc32(shown.encode())])
            blocking = [_box_of(b.in_pixels(W, H), size * scale) for b in items]
            centres = background_centres(valid, blocking, background, size, scale, margin * scale, rng)
            for x, y in centres:
                out_window(BACKGROUND_CLASS, x, y, *cut_window(pixels, valid, x, y, size, scale))
                result.background += 1
        result.micrographs += 1
        groups.add(group)
    result.groups = len(groups)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows(rows)
    atomic_write_text(tmp / MANIFEST, text.getvalue())
    sizes = class_sizes_from_boxes(*zip(*box_sides)) if box_sides else {}
    if sizes:
        atomic_write_text(tmp / CLASS_SIZES_FILE, class_sizes_json(sizes))
    if result.bad:
        atomic_write_text(tmp / BAD_ROWS, "\n".join(result.bad) + "\n")
    return result


def detector_windows(pixels, valid, particles: list[Annotation], scale: float, size: int, detector=None):
    """The detector's view of one micrograph, in its own (source) pixels: ([(label, x, y)] of the
    candidates whose centre lies in a particle's box, with that particle's label; [(x, y)] of the
    candidates in no box).

    The detector (default: the LoG blobs; or a loaded learned one) runs as `virion scan` runs it: on
    the micrograph resampled to the target scale (`scale` source px per target px), padding
    mirror-filled, its default threshold and the candidate cap. A particle given as a point counts as
    a square of half a window around it (as `_box_of`).
    """
    from virion.micrograph import detect as detection
    from virion.micrograph.scan import resample

    work = resample(pixels, 1.0 / scale)
    factor = work.shape[1] / pixels.shape[1]  # target px per source px
    work_valid = ~padding_mask(work) if work is not pixels else valid
    filled = detection.fill_padding(work, work_valid)
    detector = LogDetector() if detector is None else detector
    cands = detector.detect(work, 1.0, mask=~work_valid, filled=filled, max_candidates=detection.DEFAULT_MAX_CANDIDATES)
    x, y = cands.x / factor, cands.y / factor
    boxes = [_box_of(a, size * scale) for a in particles]
    owner = detection.box_containing(boxes, x, y)
    positives = [(particles[i].label, float(x[j]), float(y[j])) for j, i in enumerate(owner) if i >= 0]
    negatives = [(float(x[j]), float(y[j])) for j, i in enumerate(owner) if i < 0]
    return positives, negatives


@dataclass
class _WindowWriter:
    """Writes the windows of one micrograph: the PNG, its manifest row, the counts."""

    tmp: Path
    result: CropsResult
    rows: list
    made_dirs: set
    prefix: str
    group: str
    shown: str
    index: int = 0

    def add(self, label, x, y, window, filled, past_edge, into_padding) -> None:
        """Background windows are never counted as filled: they lie inside the image, away from padding."""
        name = f"{label}/{self.prefix}_{self.index}.png"
        self.index += 1
        _save(self.tmp, name, window, self.made_dirs)
        self.rows.append((name, label, self.group, self.shown, f"{x:.1f}", f"{y:.1f}", f"{filled:.4f}"))
        self.result.counts[label] += 1
        if filled > 0 and label != BACKGROUND_CLASS:
            self.result.filled[label] += 1
            self.result.filled_border += past_edge
            self.result.filled_padding += into_padding


def _box_of(a: Annotation, window: float) -> tuple[float, float, float, float]:
    """The box that background windows keep away from: the annotated box, or for a point (its
    particle's size unknown) a square of half a window around it."""
    if a.box is not None:
        return a.box
    half = window / 4
    return (a.x - half, a.y - half, a.x + half, a.y + half)


def _save(tmp: Path, name: str, window: np.ndarray, made_dirs: set[str]) -> None:
    folder = name.split("/", 1)[0]
    if folder not in made_dirs:
        (tmp / folder).mkdir(parents=True, exist_ok=True)
        made_dirs.add(folder)
    _write_png(tmp / name, window)

"""How well `virion scan` finds particles and names micrographs, on real annotated micrographs.

Data: ../shared/real_micrographs_dev (micrographs.csv: path,label,session,boxes; boxes.csv:
path,label,session,xmin,ymin,xmax,ymax); when it is absent the benchmark says so and exits 0.

Matching is one-to-one: each annotated box matches at most one detection, whose centre lies within
half the box's shorter side of the box centre (Hungarian assignment on the centre distance).
Recall = matched boxes / boxes; precision = matched detections / detections.

1. The detector alone (always): recall and precision of every candidate `detect` proposes, per
   class and overall (the ceiling for the classifier stage's recall).
2. `--folds K`: session-grouped folds (StratifiedGroupKFold: no session on both sides). Per fold the
   texture model (its own standardisation, RBF SVM and temperature calibration) is trained on
   256-px windows of the training micrographs: one per annotated box (its class) and up to
   `--negatives` `_background` windows per micrograph, taken from the detector's candidates that
   match no box there (hard negatives: what the scanner will actually be shown). The held-out
   micrographs are then scanned exactly as `virion scan` does (`scan_pixels`' rule: not
   `_background`, probability >= --min-confidence; the filament merge; the size prior of
   `micrograph.sizes` with the training boxes' class sizes, as a run trained on `virion crops` output
   carries them, unless --no-size-prior; the verdict rule of `micrograph.verdict`, weighted as
   --weight-by, and the verdict accuracy under every weighting for paired comparisons):
   detection recall/precision after classification, crop accuracy of the matched particles,
   micrograph verdict accuracy and macro-F1, and the oracle verdict (the same classifier and rule on
   windows centred on the annotated boxes). Mean +- sd over folds.
   Each window's texture features are computed once (cached under --cache) and reused by all folds
   and thresholds; the classifier is `TextureModel` (its default classifier and hyper-parameters, no
   search, to keep the compute small) fitted on those features. `--detected-positives`: also train
   on the window of every detector candidate inside a box, as that box's class (what
   `crops.cut_crops(detected=True)` adds; its `_background` windows are the hard negatives above).
3. `--run RUN`: the same scan with a trained run's recommended classifier (`Classifier.predict`)
   on all micrographs: grouped only if the run was trained on other sessions (say so when quoting).

Overlays of the micrographs with the lowest precision (`--overlays N`) go to --out, boxes green,
accepted detections red, so a person can judge whether the annotations are incomplete there.

    nice -n 5 .venv/bin/python benchmarks/bench_scan.py --folds 5 --out /work/derived/scan/bench
    .venv/bin/python benchmarks/bench_scan.py --step 10            # detector only, every 10th micrograph
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "real_micrographs_dev"
DEFAULT_CACHE = Path(os.environ.get("VIRION_CACHE_DIR", Path.home() / ".cache" / "virion")) / "bench_scan"


# ------------------------------------------------------------------------------------------ data


def load_data(root: Path):
    mics = list(csv.DictReader(open(root / "micrographs.csv", newline="")))
    boxes: dict[str, list[list[float]]] = defaultdict(list)
    for b in csv.DictReader(open(root / "boxes.csv", newline="")):
        boxes[b["path"]].append([float(b[k]) for k in ("xmin", "ymin", "xmax", "ymax")])
    return mics, boxes


def match(boxes, x, y) -> list[tuple[int, int]]:
    """One-to-one (box index, detection index) pairs: centre within half the box's shorter side."""
    from virion.micrograph.detect import match_boxes

    return match_boxes(boxes, x, y)


# ----------------------------------------------------------------------------- per-micrograph cache


def _key(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def prepare(root: Path, mics, boxes, cache: Path, *, threshold, max_candidates, features: bool, progress=True):
    """Per micrograph: candidates (x, y, diameter, score) and, with `features`, texture features of the
    256-px window on every candidate and on every annotated box centre. Cached as .npz per micrograph."""
    from tqdm import tqdm

    from virion.data.padding import padding_mask
    from virion.micrograph import detect as detection
    from virion.micrograph.io import read_micrograph

    settings = {
        "threshold": threshold,
        "max": max_candidates,
        "diameters": list(detection.DEFAULT_DIAMETERS_NM),
        "grid": detection.GRID_PX,
        "edge": detection.EDGE_FRACTION,
        "ratio": detection.SCALE_RATIO,
        "v": 3,
    }
    if features:  # features of another version must not be read back as this version's
        from virion.models.texture.features import FEATURE_VERSION

        settings["features"] = FEATURE_VERSION
    folder = cache / f"det-{_key(settings)}"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    seconds = []
    for m in tqdm(mics, desc="micrographs", unit="mg", disable=not progress):
        f = folder / (hashlib.sha1(m["path"].encode()).hexdigest()[:16] + ".npz")
        if f.is_file():
            with np.load(f, allow_pickle=False) as z:
                got = {k: z[k] for k in z.files}
            if not features or "cand_feat" in got:
                out[m["path"]] = got
                continue
        mic = read_micrograph(root / m["path"])
        t0 = time.perf_counter()
        valid = ~padding_mask(mic.pixels)
        filled = detection.fill_padding(mic.pixels, valid)
        c = detection.detect(
            mic.pixels, 1.0, mask=~valid, filled=filled, threshold=threshold, max_candidates=max_candidates
        )
        seconds.append(time.perf_counter() - t0)
        got = {"x": c.x, "y": c.y, "d": c.diameter, "score": c.score, "pol": c.polarity}
        if features:
            b = np.asarray(boxes[m["path"]], float).reshape(-1, 4)
            bx, by = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
            feats = window_features(mic.pixels, valid, np.concatenate([c.x, bx]), np.concatenate([c.y, by]))
            got["cand_feat"], got["box_feat"] = feats[: len(c)], feats[len(c) :]
        np.savez(f, **got)
        out[m["path"]] = got
    if seconds:
        print(f"detector: {statistics.mean(seconds):.2f} s per micrograph ({len(seconds)} computed now)")
    return out


def window_features(pixels, valid, xs, ys) -> np.ndarray:
    """Texture features of the 256-px windows `virion scan` cuts at (xs, ys) (`scan.cut_windows`)."""
    from virion.data.decode import DecodeSettings, decode_array
    from virion.micrograph.scan import WINDOW_PX, cut_windows
    from virion.models.texture.features import texture_features

    if not len(xs):
        return np.zeros((0, 0), np.float32)
    decode = DecodeSettings(size=WINDOW_PX, stretch=(0.5, 99.5))
    wins = cut_windows(pixels, valid, np.asarray(xs, float), np.asarray(ys, float))
    dec = np.stack([decode_array(w, decode, "window") for w in wins])
    return texture_features(dec.astype(np.uint8), workers=1)


# ------------------------------------------------------------------------------- heat-map detector


def fold_detector(root: Path, train_mics, boxes, cache: Path, fold: int, args):
    """The heat-map detector `virion detector` would train on these micrographs (cached per fold)."""
    from virion.micrograph.heatmap import TrainingMicrograph, is_detector, load_detector, train_detector
    from virion.micrograph.io import read_micrograph

    key = _key({"paths": sorted(m["path"] for m in train_mics), "epochs": args.detector_epochs, "seed": args.seed,
                "v": 1})  # fmt: skip
    folder = cache / f"heatmap-{key}"
    if is_detector(folder):
        return load_detector(folder), 0.0, folder
    t0 = time.perf_counter()
    data = [TrainingMicrograph(read_micrograph(root / m["path"]).pixels, 1.0, np.asarray(boxes[m["path"]], float))
            for m in train_mics]  # fmt: skip
    det = train_detector(data, epochs=args.detector_epochs, seed=args.seed)
    seconds = time.perf_counter() - t0
    det.save(folder)
    print(f"fold {fold}: heat-map detector trained on {len(train_mics)} micrographs in {seconds:.0f} s", flush=True)
    return det, seconds, folder


# Candidates are cached at this low heat (and this many per micrograph); a run's --threshold and
# --max-candidates take the prefix (candidates are sorted by heat).
CACHED_HEAT, CACHED_MAX = 0.02, 200


def heatmap_candidates(root: Path, mics, det, folder: Path) -> dict:
    """Every micrograph's candidates from this fold's detector at CACHED_HEAT, cached beside it."""
    from tqdm import tqdm

    from virion.data.padding import padding_mask
    from virion.micrograph import detect as detection
    from virion.micrograph.io import read_micrograph

    f = folder / f"candidates-{CACHED_HEAT}-{CACHED_MAX}.npz"
    fields = ("x", "y", "d", "score", "pol")
    if f.is_file():
        with np.load(f, allow_pickle=False) as z:
            return {m["path"]: {k: z[f"{i}_{k}"] for k in fields} for i, m in enumerate(mics)}
    out, flat = {}, {}
    for i, m in enumerate(tqdm(mics, desc="heat-map candidates", unit="mg")):
        mic = read_micrograph(root / m["path"])
        valid = ~padding_mask(mic.pixels)
        filled = detection.fill_padding(mic.pixels, valid)
        c = det.detect(mic.pixels, 1.0, mask=~valid, filled=filled, threshold=CACHED_HEAT, max_candidates=CACHED_MAX)
        out[m["path"]] = dict(zip(fields, (c.x, c.y, c.diameter, c.score, c.polarity)))
        flat.update({f"{i}_{k}": v for k, v in out[m["path"]].items()})
    np.savez(f, **flat)
    return out


def heatmap_prepare(root: Path, mics, prepared, det, cache: Path, folder: Path, threshold: float, limit: int) -> dict:
    """`prepare`'s dict for the heat-map detector's candidates: box features reused from `prepared`,
    candidate features cached per micrograph and window centre (the detector's grid repeats across folds)."""
    from tqdm import tqdm

    from virion.data.padding import padding_mask
    from virion.micrograph.io import read_micrograph
    from virion.models.texture.features import FEATURE_VERSION

    points = cache / f"points-{FEATURE_VERSION}"
    points.mkdir(parents=True, exist_ok=True)
    assert threshold >= CACHED_HEAT and limit <= CACHED_MAX, "below the cached candidates"
    everything = heatmap_candidates(root, mics, det, folder)
    out = {}
    for m in tqdm(mics, desc="candidate features", unit="mg"):
        c = everything[m["path"]]
        n = min(int(np.sum(c["score"] > threshold)), limit)
        c = {k: v[:n] for k, v in c.items()}
        f = points / (hashlib.sha1(m["path"].encode()).hexdigest()[:16] + ".npz")
        known_xy, known_feat = np.zeros((0, 2)), None
        if f.is_file():
            with np.load(f, allow_pickle=False) as z:
                known_xy, known_feat = z["xy"], z["feat"]
        xy = np.stack([c["x"], c["y"]], axis=1) if n else np.zeros((0, 2))
        lookup = {tuple(np.round(p, 2)): i for i, p in enumerate(known_xy)}
        missing = [i for i, p in enumerate(xy) if tuple(np.round(p, 2)) not in lookup]
        if missing:
            pixels = read_micrograph(root / m["path"]).pixels
            new = window_features(pixels, ~padding_mask(pixels), xy[missing, 0], xy[missing, 1])
            known_feat = new if known_feat is None or not len(known_xy) else np.concatenate([known_feat, new])
            known_xy = np.concatenate([known_xy, xy[missing]])
            np.savez(f, xy=known_xy, feat=known_feat)
            lookup = {tuple(np.round(p, 2)): i for i, p in enumerate(known_xy)}
        rows = [lookup[tuple(np.round(p, 2))] for p in xy]
        base = prepared[m["path"]]
        feat = known_feat[rows] if rows else np.zeros((0, base["box_feat"].shape[1]), np.float32)
        out[m["path"]] = {**c, "cand_feat": feat, "box_feat": base["box_feat"]}
    return out


# ------------------------------------------------------------------------------------------ metrics


def pr_table(rows) -> dict:
    """rows: (label, matched, boxes, detections) per micrograph -> per class and overall R/P."""
    per = defaultdict(lambda: [0, 0, 0])
    for label, tp, nb, nd in rows:
        s = per[label]
        s[0] += tp
        s[1] += nb
        s[2] += nd
    table = {k: _rp(*v) for k, v in sorted(per.items())}
    table["ALL"] = _rp(*np.sum([v for v in per.values()], axis=0).tolist())
    return table


def _rp(tp, nb, nd) -> dict:
    return {"recall": tp / nb if nb else float("nan"), "precision": tp / nd if nd else float("nan"), "boxes": nb}


def detector_only(mics, boxes, prepared) -> dict:
    rows = []
    for m in mics:
        c = prepared[m["path"]]
        rows.append((m["label"], len(match(boxes[m["path"]], c["x"], c["y"])), len(boxes[m["path"]]), len(c["x"])))
    return pr_table(rows)


class FeatureTexture:
    """`TextureModel` fitted and applied on precomputed features (each window's computed once)."""

    def __init__(self):
        from virion.models.texture.model import TextureModel

        class _OnFeatures(TextureModel):
            def features(self, images, *, progress=False):
                return np.asarray(images, np.float64)

            def _check_images(self, images):
                return np.asarray(images)

        self.model = _OnFeatures(cache=False)  # its default classifier; no groups given: default C (no search)

    def fit(self, x, y, class_names, groups):
        self.model.fit(x, y, class_names=class_names, groups=None, progress=False)
        return self

    def proba(self, x):
        return self.model.predict_proba(x) if len(x) else np.zeros((0, len(self.model.class_names)))


def run_folds(mics, boxes, prepared, args) -> dict:
    from sklearn.model_selection import StratifiedGroupKFold

    from virion.data.layout import BACKGROUND_CLASS

    labels = sorted({m["label"] for m in mics})
    class_names = labels + [BACKGROUND_CLASS]
    index = {c: i for i, c in enumerate(class_names)}
    y_mic = np.array([index[m["label"]] for m in mics])
    groups = np.array([m["session"] for m in mics])
    splitter = StratifiedGroupKFold(n_splits=args.folds, shuffle=True, random_state=args.seed)
    folds = []
    base = prepared
    for k, (train, test) in enumerate(splitter.split(np.zeros(len(mics)), y_mic, groups)):
        assert not set(groups[train]) & set(groups[test])
        detector_s, negatives_from = None, None
        if args.detector == "heatmap":  # candidates of the detector trained on this fold's training micrographs
            det, detector_s, folder = fold_detector(args.data, [mics[i] for i in train], boxes, args.cache, k, args)
            prepared = heatmap_prepare(args.data, mics, base, det, args.cache, folder, args.heat_threshold,
                                       args.max_candidates)  # fmt: skip
            if args.negative_heat is not None:  # hard negatives mined from weaker candidates
                negatives_from = heatmap_prepare(args.data, mics, base, det, args.cache, folder, args.negative_heat,
                                                 args.max_candidates)  # fmt: skip
        t0 = time.perf_counter()
        rng = np.random.default_rng([args.seed, k])
        xs, ys, gs = [], [], []
        for i in train:
            m = mics[i]
            p = prepared[m["path"]]
            if len(p["box_feat"]):
                xs.append(p["box_feat"])
                ys += [index[m["label"]]] * len(p["box_feat"])
                gs += [m["session"]] * len(p["box_feat"])
            q = negatives_from[m["path"]] if negatives_from else p
            matched = {c for _, c in match(boxes[m["path"]], q["x"], q["y"])}
            outside = ~_near_any_box(boxes[m["path"]], q["x"], q["y"])
            free = [j for j in range(len(q["x"])) if j not in matched and outside[j]]
            pick = rng.permutation(free)[: args.negatives] if free else []
            near = _near_any_box(boxes[m["path"]], p["x"], p["y"])
            if args.detected_positives and near.any():  # as `crops.cut_crops(detected=True)`: candidates in a box
                xs.append(p["cand_feat"][near])
                ys += [index[m["label"]]] * int(near.sum())
                gs += [m["session"]] * int(near.sum())
            if len(pick):
                xs.append(q["cand_feat"][np.asarray(pick, int)])
                ys += [index[BACKGROUND_CLASS]] * len(pick)
                gs += [m["session"]] * len(pick)
        model = FeatureTexture().fit(np.concatenate(xs), np.asarray(ys), class_names, np.asarray(gs))
        # The size prior a run trained on these micrographs' crops carries (`crops` writes class_sizes.json).
        args.class_sizes = None if args.no_size_prior else fold_class_sizes([mics[i] for i in train], boxes)
        fit_s = time.perf_counter() - t0
        result = {"fold": k, "train_micrographs": len(train), "test_micrographs": len(test), "fit_s": fit_s}
        test_mics = [mics[i] for i in test]
        result["detector_only"] = detector_only(test_mics, boxes, prepared)  # held-out micrographs
        if detector_s is not None:
            result["detector_train_s"] = detector_s
        probs = {}
        for m in test_mics:
            p = prepared[m["path"]]
            probs[m["path"]] = (model.proba(p["cand_feat"]), model.proba(p["box_feat"]))
        for conf in args.min_confidence:
            result[f"conf={conf}"] = score_fold(test_mics, boxes, prepared, probs, class_names, conf, args)
        folds.append(result)
        head = result[f"conf={args.min_confidence[0]}"]
        print(
            f"fold {k}: train {len(train)} / test {len(test)} micrographs, fit {fit_s:.0f} s; "
            f"conf {args.min_confidence[0]}: recall {head['detection']['ALL']['recall']:.3f} "
            f"precision {head['detection']['ALL']['precision']:.3f} verdict {head['verdict_accuracy']:.3f} "
            f"oracle {head['oracle_verdict_accuracy']:.3f}",
            flush=True,
        )
    return {"folds": folds, "class_names": class_names}


def fold_class_sizes(train_mics, boxes) -> dict[str, float]:
    """`crops`' class_sizes.json for these micrographs (1 nm/px: box pixels are nm)."""
    from virion.micrograph.sizes import class_sizes_from_boxes

    rows = [(m["label"], b[2] - b[0], b[3] - b[1]) for m in train_mics for b in boxes[m["path"]]]
    return class_sizes_from_boxes(*zip(*rows)) if rows else {}


def _near_any_box(boxes, x, y) -> np.ndarray:
    """Candidates within a box (a hard negative must not be an annotated particle seen off-centre)."""
    from virion.micrograph.detect import inside_any_box

    return inside_any_box(boxes, x, y)


_IMAGES: dict = {}


def merged(root: Path, path: str, p: dict, keep: np.ndarray, kept_p: np.ndarray, args):
    """Accepted candidates after `virion scan`'s filament merge (`scan.merge_filaments`): x, y, d, probs, scores."""
    from virion.data.padding import padding_mask
    from virion.micrograph import detect as detection
    from virion.micrograph.io import read_micrograph
    from virion.micrograph.scan import merge_filaments

    x, y, d, score = p["x"][keep], p["y"][keep], p["d"][keep], p["score"][keep]
    if len(x) < detection.FILAMENT_MIN_MEMBERS:
        return x, y, d, kept_p, score
    if path not in _IMAGES:
        pixels = read_micrograph(root / path).pixels
        valid = ~padding_mask(pixels)
        _IMAGES.clear()  # one micrograph at a time: folds visit each once
        _IMAGES[path] = (detection.fill_padding(pixels, valid), valid)
    filled, valid = _IMAGES[path]
    sign = int(np.sign(np.sum(p["pol"][keep]))) or 1
    contrast = detection.particle_contrast(filled, valid, sign, float(np.median(d)) / 4)
    boxes = detection.square_boxes(x, y, d)
    x, y, d, _, kept_p, score = merge_filaments(x, y, d, boxes, kept_p, score, contrast)
    return x, y, d, kept_p, score


def score_fold(test_mics, boxes, prepared, probs, class_names, conf, args) -> dict:
    from sklearn.metrics import f1_score

    from virion.data.layout import BACKGROUND_CLASS
    from virion.micrograph.sizes import suppress_by_class_size
    from virion.micrograph.verdict import WEIGHT_BY, decide, particle_weights

    bg = class_names.index(BACKGROUND_CLASS)
    det_rows, crop_hits, crop_total, oracle_hit, oracle_total = [], 0, 0, 0, 0
    truth, said, said_oracle, per_mic, particles = [], [], [], [], {}
    said_by = {w: [] for w in WEIGHT_BY}  # the verdict under each weighting (paired comparisons)
    for m in test_mics:
        p = prepared[m["path"]]
        cand_p, box_p = probs[m["path"]]
        best = cand_p.argmax(1) if len(cand_p) else np.zeros(0, int)
        keep = (best != bg) & (cand_p.max(1) >= conf) if len(cand_p) else np.zeros(0, bool)
        keep &= p["score"] >= args.min_score
        x, y, d, kept_p, kept_score = merged(args.data, m["path"], p, keep, cand_p[keep], args)
        if args.class_sizes and len(x) > 1:  # as `scan_pixels`: after the filament merge
            labels = [class_names[i] for i in kept_p.argmax(1)]
            one = suppress_by_class_size(x, y, labels, kept_score, args.class_sizes)
            x, y, d, kept_p, kept_score = x[one], y[one], d[one], kept_p[one], kept_score[one]
        pairs = match(boxes[m["path"]], x, y)
        det_rows.append((m["label"], len(pairs), len(boxes[m["path"]]), len(x)))
        for _, j in pairs:
            crop_total += 1
            crop_hits += int(class_names[int(kept_p[j].argmax())] == m["label"])
        virus = [i for i in range(len(class_names)) if i != bg]
        if len(box_p):
            oracle_total += len(box_p)
            oracle_hit += int((np.array(virus)[box_p[:, virus].argmax(1)] == class_names.index(m["label"])).sum())
        for w in WEIGHT_BY:
            said_by[w].append(decide(kept_p, class_names, weights=particle_weights(kept_score, w),
                                     min_particles=args.min_particles, margin=args.margin).verdict)  # fmt: skip
        weights = particle_weights(kept_score, args.weight_by)  # as `scan_pixels` weighs them
        v = decide(kept_p, class_names, weights=weights, min_particles=args.min_particles, margin=args.margin)
        vo = decide(box_p, class_names, min_particles=args.min_particles, margin=args.margin)
        truth.append(m["label"])
        said.append(v.verdict)
        said_oracle.append(vo.verdict)
        accepted = [np.round(a, 1).tolist() for a in (x, y, d)]
        per_mic.append((m["path"], m["label"], len(pairs), len(boxes[m["path"]]), len(x), v.verdict, accepted))
        if args.dump_particles:  # for verdict rules studied offline: accepted and oracle probabilities
            particles[m["path"]] = {"p": np.round(kept_p, 4).tolist(), "score": np.round(kept_score, 4).tolist(),
                                    "oracle": np.round(box_p, 4).tolist()}  # fmt: skip
    labels = sorted(set(truth))
    return {
        "detection": pr_table(det_rows),
        "crop_accuracy_matched": crop_hits / crop_total if crop_total else float("nan"),
        "oracle_crop_accuracy": oracle_hit / oracle_total if oracle_total else float("nan"),
        "verdict_accuracy": float(np.mean([a == b for a, b in zip(truth, said)])),
        "verdict_macro_f1": float(f1_score(truth, said, labels=labels, average="macro", zero_division=0)),
        "verdict_accuracy_by_weight": {
            w: float(np.mean([a == b for a, b in zip(truth, v)])) for w, v in said_by.items()
        },
        "oracle_verdict_accuracy": float(np.mean([a == b for a, b in zip(truth, said_oracle)])),
        "oracle_verdict_macro_f1": float(f1_score(truth, said_oracle, labels=labels, average="macro", zero_division=0)),
        "none": int(sum(s == "none" for s in said)),
        "uncertain": int(sum(s == "uncertain" for s in said)),
        "micrographs": per_mic,
        **({"particles": particles} if args.dump_particles else {}),
    }


def mean_sd(values) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.3f} ± {sd:.3f}" if sd == sd else f"{values[0]:.3f}"


def summarise(folds: list[dict], key: str, class_names) -> list[str]:
    res = [f[key] for f in folds]
    lines = [f"### min confidence {key.split('=')[1]}", "", "| class | recall | precision |", "|---|---|---|"]
    for c in [c for c in class_names if not c.startswith("_")] + ["ALL"]:
        rs = [r["detection"][c]["recall"] for r in res if c in r["detection"]]
        ps = [r["detection"][c]["precision"] for r in res if c in r["detection"]]
        lines.append(f"| {c} | {mean_sd(rs)} | {mean_sd(ps)} |")
    lines += [
        "",
        f"- crop accuracy of matched particles: {mean_sd([r['crop_accuracy_matched'] for r in res])}"
        f" (all annotated boxes: {mean_sd([r['oracle_crop_accuracy'] for r in res])})",
        f"- verdict accuracy: {mean_sd([r['verdict_accuracy'] for r in res])}, macro-F1 "
        f"{mean_sd([r['verdict_macro_f1'] for r in res])}",
        f"- oracle verdict (annotated boxes) accuracy: {mean_sd([r['oracle_verdict_accuracy'] for r in res])}, "
        f"macro-F1 {mean_sd([r['oracle_verdict_macro_f1'] for r in res])}",
        f"- detected minus oracle verdict accuracy: "
        f"{mean_sd([r['verdict_accuracy'] - r['oracle_verdict_accuracy'] for r in res])}",
        f"- micrographs with verdict none / uncertain: {sum(r['none'] for r in res)} / "
        f"{sum(r['uncertain'] for r in res)}",
    ]
    by = [r["verdict_accuracy_by_weight"] for r in res]
    for w in by[0]:
        gain = [b[w] - b["none"] for b in by]
        lines.append(
            f"- verdict accuracy with particles weighted by `{w}`: {mean_sd([b[w] for b in by])}"
            + (f" (paired gain over `none` {mean_sd(gain)}, per fold {' '.join(f'{g:+.3f}' for g in gain)})"
               if w != "none" else "")
        )  # fmt: skip
    lines.append("")
    return lines


# ------------------------------------------------------------------------------------------ --run


def run_classifier(root, mics, boxes, prepared, args) -> dict:
    """Scan every micrograph with a trained run, as `virion scan` does (not grouped unless the run is)."""
    from virion.inference.classifier import Classifier
    from virion.micrograph.detector_files import choose_detector
    from virion.micrograph.io import read_micrograph
    from virion.micrograph.scan import scan_pixels
    from virion.micrograph.sizes import find_class_sizes

    clf = Classifier.load(args.run)
    sizes = None if args.no_size_prior else find_class_sizes(args.run)  # as `virion scan RUN` finds them
    detector = choose_detector(None, args.run)[0]  # and its learned detector, if it has one
    rows, truth, said = [], [], []
    for m in mics:
        mic = read_micrograph(root / m["path"])
        one = scan_pixels(
            clf, mic.pixels, 1.0, name=m["path"], min_confidence=args.min_confidence[0],
            weight_by=args.weight_by, class_sizes=sizes, detector=detector,
        )  # fmt: skip
        x = np.array([p["x"] for p in one.particles])
        y = np.array([p["y"] for p in one.particles])
        rows.append((m["label"], len(match(boxes[m["path"]], x, y)), len(boxes[m["path"]]), len(x)))
        truth.append(m["label"])
        said.append(one.verdict.verdict)
    return {"detection": pr_table(rows), "verdict_accuracy": float(np.mean([a == b for a, b in zip(truth, said)]))}


# ------------------------------------------------------------------------------------------ --speed


def speed(root: Path, mics, run: str, count: int, out: Path) -> dict:
    """Seconds for `virion.scan` on `count` micrographs (overlays and CSVs written), models loaded first."""
    import shutil
    import tempfile

    from virion.inference.classifier import Classifier
    from virion.micrograph.detector_files import choose_detector
    from virion.micrograph.scan import scan

    clf = Classifier.load(run)
    detector, detector_text = choose_detector(None, run)  # as `virion scan RUN`: its learned detector if any
    by_class = defaultdict(list)
    for m in mics:
        by_class[m["label"]].append(m)
    chosen = []
    while len(chosen) < count and any(by_class.values()):
        for label in sorted(by_class):
            if by_class[label] and len(chosen) < count:
                chosen.append(by_class[label].pop(0))
    paths = [root / m["path"] for m in chosen]
    scan(clf, paths[:1], progress=False, overlays=False, detector=detector)  # warm-up (first predict builds caches)
    tmp = Path(tempfile.mkdtemp(dir=out))
    load_before = open("/proc/loadavg").read().split()[:3]
    t0, c0 = time.perf_counter(), os.times()
    result = scan(clf, paths, tmp / "scan", progress=False, detector=detector)
    seconds, c1 = time.perf_counter() - t0, os.times()
    load_after = open("/proc/loadavg").read().split()[:3]
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "micrographs": len(paths),
        "seconds": seconds,
        # CPU time of this process (all threads): what the scan costs, whatever else loads the machine
        "cpu_seconds": (c1.user - c0.user) + (c1.system - c0.system),
        "classifier": result.model,
        "detector": detector_text,
        "particles": len(result.particles),
        "candidates": sum(m.candidates for m in result.micrographs),
        "load_before": load_before,
        "load_after": load_after,
    }


# ------------------------------------------------------------------------------------------ overlays


def save_overlays(root, worst, out: Path) -> None:
    from PIL import Image, ImageDraw

    out.mkdir(parents=True, exist_ok=True)
    for path, box_list, xs, ys, ds in worst:
        im = Image.open(root / path).convert("RGB")
        draw = ImageDraw.Draw(im)
        for b in box_list:
            draw.rectangle(b, outline=(0, 255, 0), width=3)
        for x, y, d in zip(xs, ys, ds):
            draw.ellipse([x - d / 2, y - d / 2, x + d / 2, y + d / 2], outline=(255, 0, 0), width=3)
        im.save(out / (Path(path).parent.name + "__" + Path(path).stem + ".png"))


# ------------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--step", type=int, default=1, help="use every STEP-th micrograph (quick looks)")
    parser.add_argument("--folds", type=int, default=0, help="session-grouped folds with the texture model")
    parser.add_argument("--run", default=None, help="also scan with this trained run (not grouped)")
    parser.add_argument("--speed", default=None, metavar="RUN", help="only time `virion.scan` with RUN")
    parser.add_argument("--speed-count", type=int, default=20, help="micrographs for --speed")
    parser.add_argument("--threshold", type=float, default=None, help="detector threshold (default: detect's)")
    parser.add_argument("--max-candidates", type=int, default=None)
    parser.add_argument("--negatives", type=int, default=8, help="_background windows per training micrograph")
    parser.add_argument(
        "--detected-positives", action="store_true",
        help="also train on the windows of the detector's candidates inside each box, as its class "
        "(crops.cut_crops(detected=True))",
    )  # fmt: skip
    parser.add_argument(
        "--detector", choices=("log", "heatmap"), default="log",
        help="candidates from the LoG blob detector, or from a heat-map detector trained per fold on the "
        "fold's training micrographs (`virion detector`)",
    )  # fmt: skip
    parser.add_argument("--detector-epochs", type=int, default=None, help="heat-map detector epochs (default: its)")
    parser.add_argument(
        "--negative-heat", type=float, default=None,
        help="heat-map detector: mine the hard negatives from candidates above this heat (default: --threshold's)",
    )  # fmt: skip
    parser.add_argument("--min-confidence", type=float, nargs="+", default=[0.5, 0.3, 0.7])
    parser.add_argument("--dump-particles", action="store_true", help="keep accepted and oracle probabilities")
    parser.add_argument("--min-score", type=float, default=-1e9, help="also require this detector score")
    parser.add_argument("--min-particles", type=int, default=1)
    parser.add_argument("--margin", type=float, default=None)
    parser.add_argument("--weight-by", default=None, help="particle weights in the verdict (default: scan's)")
    parser.add_argument(
        "--no-size-prior", action="store_true",
        help="scan without class sizes (as a run without class_sizes.json); default: the training boxes' sizes",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=None, help="results JSON/markdown and overlays go here")
    parser.add_argument("--overlays", type=int, default=6, help="overlays of the lowest-precision micrographs")
    args = parser.parse_args(argv)
    if not (args.data / "micrographs.csv").is_file() or not (args.data / "boxes.csv").is_file():
        print(f"bench_scan: no development micrographs at {args.data} (micrographs.csv, boxes.csv); nothing measured")
        return 0
    from virion.micrograph import detect as detection
    from virion.micrograph.verdict import DEFAULT_MARGIN, DEFAULT_WEIGHT_BY

    args.margin = DEFAULT_MARGIN if args.margin is None else args.margin
    args.weight_by = DEFAULT_WEIGHT_BY if args.weight_by is None else args.weight_by
    from virion.micrograph import heatmap

    if args.detector_epochs is None:
        args.detector_epochs = heatmap.DEFAULT_EPOCHS
    # --threshold is the chosen detector's: a z-score for LoG, a heat for the heat-map detector (the
    # LoG still runs at its default for the cached box-window features).
    args.heat_threshold = None
    if args.detector == "heatmap":
        args.heat_threshold = heatmap.DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    use_given = args.threshold is not None and args.detector == "log"
    threshold = args.threshold if use_given else detection.DEFAULT_THRESHOLD
    max_c = detection.DEFAULT_MAX_CANDIDATES if args.max_candidates is None else args.max_candidates
    args.threshold, args.max_candidates = threshold, max_c
    mics, boxes = load_data(args.data)
    if args.speed:
        cpu = os.popen("grep -o -w -E 'avx2|avx512f|avx512_bf16|amx_tile' /proc/cpuinfo | sort -u").read().split()
        args.out = args.out or Path(".")
        args.out.mkdir(parents=True, exist_ok=True)
        res = speed(args.data, mics, args.speed, args.speed_count, args.out)
        res["cpu_flags"] = cpu
        res["threads"] = len(os.sched_getaffinity(0))
        print(json.dumps(res))
        (args.out / "bench_scan_speed.json").write_text(json.dumps(res, indent=1))
        return 0
    mics = mics[:: args.step]
    print(f"{len(mics)} micrographs, {sum(len(boxes[m['path']]) for m in mics)} boxes; threshold {threshold}, "
          f"at most {max_c} candidates")  # fmt: skip
    cpu = os.popen("grep -o -w -E 'avx2|avx512f|avx512_bf16|amx_tile' /proc/cpuinfo | sort -u").read().split()
    load_before = open("/proc/loadavg").read().split()[:3]
    t0 = time.perf_counter()
    prepared = prepare(
        args.data, mics, boxes, args.cache, threshold=threshold, max_candidates=max_c, features=args.folds > 0
    )
    report = {"micrographs": len(mics), "threshold": threshold, "max_candidates": max_c, "cpu_flags": cpu,
              "detector_kind": args.detector, "heat_threshold": args.heat_threshold}  # fmt: skip
    report["detector"] = detector_only(mics, boxes, prepared)
    lines = ["## Detector alone (every candidate)", "", "| class | recall | precision | boxes |", "|---|---|---|---|"]
    lines += [
        f"| {c} | {v['recall']:.3f} | {v['precision']:.3f} | {v['boxes']} |" for c, v in report["detector"].items()
    ]
    lines.append("")
    if args.folds:
        res = run_folds(mics, boxes, prepared, args)
        report["folds"] = res["folds"]
        lines += [f"## Detector + texture classifier, {args.folds} session-grouped folds (mean ± sd)", ""]
        for conf in args.min_confidence:
            lines += summarise(res["folds"], f"conf={conf}", res["class_names"])
        key = f"conf={args.min_confidence[0]}"
        per_mic = [pm for f in res["folds"] for pm in f[key]["micrographs"]]
        worst = sorted(per_mic, key=lambda r: (r[2] / r[4] if r[4] else 1.0, -r[4]))[: args.overlays]
        lines += ["Lowest precision micrographs (matched / boxes / accepted, verdict):"]
        lines += [f"- {p}: {tp} / {nb} / {nd}, {v}" for p, _, tp, nb, nd, v, _ in worst]
        lines.append("")
        report["worst"] = worst
    if args.run:
        report["run"] = run_classifier(args.data, mics, boxes, prepared, args)
        d = report["run"]["detection"]["ALL"]
        lines += [f"## --run {args.run} (not grouped unless the run was trained on other sessions)", "",
                  f"recall {d['recall']:.3f}, precision {d['precision']:.3f}, verdict accuracy "
                  f"{report['run']['verdict_accuracy']:.3f}", ""]  # fmt: skip
    report["seconds"] = time.perf_counter() - t0
    report["load_before"], report["load_after"] = load_before, open("/proc/loadavg").read().split()[:3]
    lines.append(f"CPU flags {' '.join(cpu)}; load {' '.join(load_before)} -> {' '.join(report['load_after'])}; "
                 f"{report['seconds']:.0f} s")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_scan.json").write_text(json.dumps(report, indent=1, default=str))
        (args.out / "bench_scan.md").write_text(text + "\n")
        if args.folds and args.overlays:
            chosen = [(p, boxes[p], *accepted) for p, *_, accepted in report["worst"]]
            save_overlays(args.data, chosen, args.out / "low_precision")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The texture model: feature-extraction speed, and grouped cross-validation on real crops.

Speed (256-px crops, real ones when DATA is given, else synthetic; no cache):
    nice -n 5 .venv/bin/python benchmarks/bench_texture.py --speed [--data DATA] [--images 400]

Grouped 3-fold CV of /work/shared/real_tem_dev (the same folds as benchmarks/bench_real.py: test
folds by micrograph, a grouped validation split from the training micrographs). Each fold trains
`TextureModel` exactly as `virion train` would (by default: the validation images join the training
images, C and the LDA shrinkage by grouped CV over the pool, temperature on its grouped out-of-fold
scores, final fit on the pool; `--no-pool`: train on the training images only, temperature on the
validation images, `--refit` then trains again on training + validation) and scores the test
fold: accuracy, macro-F1 over the classes present in the test fold, balanced accuracy, log-loss and
expected calibration error (and both before calibration). Mean +- sd over folds; JSON in
benchmarks/results/. Features are cached ($VIRION_CACHE_DIR/features), so a second run takes seconds:
    nice -n 5 .venv/bin/python benchmarks/bench_texture.py --cv ../shared/real_tem_dev/micrographs.csv
The models before issue 16's second texture round: `--classifiers logistic --no-pool` (and `--refit`).
With crops cut from the annotated micrographs added to every training fold (path,label,group[,micrograph]; as in
bench_real.py, a crop whose session or micrograph the fold validates or tests on is left out of that fold):
    ... --cv ../shared/real_tem_dev/micrographs.csv --extra-train /work/derived/crops/mcrops/manifest.csv
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_real import BenchError, make_folds, read_extra, read_groups, session_of  # noqa: E402 (same folds)

from virion.data.decode import DecodeSettings, decode_image  # noqa: E402
from virion.models.texture import features as feat  # noqa: E402
from virion.models.texture.calibration import expected_calibration_error, log_loss, softmax  # noqa: E402
from virion.models.texture.model import TextureModel  # noqa: E402

RESULTS_DIR = ROOT / "benchmarks" / "results"
METRICS = ("accuracy", "macro_f1", "balanced_accuracy", "log_loss", "ece", "log_loss_uncalibrated", "ece_uncalibrated")


def cpu_note() -> str:
    flags = set()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("flags"):
                flags |= set(line.split(":", 1)[1].split()) & {"avx2", "avx512f", "avx512_bf16", "amx_tile"}
    except OSError:
        pass
    try:
        load = open("/proc/loadavg", encoding="utf-8").read().split()[:3]
    except OSError:
        load = ["?"]
    cpus = len(os.sched_getaffinity(0))
    flag_text = " ".join(sorted(flags)) or "-"
    return f"{platform.machine()}, {cpus} CPUs, flags {flag_text}, load {' '.join(load)}"


def decode_all(paths, settings: DecodeSettings, workers: int = 2) -> np.ndarray:
    with ThreadPoolExecutor(workers) as pool:
        return np.stack(list(pool.map(lambda p: decode_image(p, settings), paths)))


def extra_kept(extra: list[dict], held_groups: set[str]) -> np.ndarray:
    """Which extra crops may train a fold: none whose session or micrograph the fold validates or tests on
    (the rule of bench_real.add_extra; sessions on both sides of the development data exist)."""
    held = {session_of(g) for g in held_groups} | set(held_groups)
    return np.array(
        [
            not ({e["group"], e["micrograph"], session_of(e["group"]), session_of(e["micrograph"])} & held)
            for e in extra
        ],
        bool,
    )


def scores(y_true, proba, classes_present) -> dict:
    from sklearn.metrics import balanced_accuracy_score, f1_score

    pred = proba.argmax(1)
    return {
        "accuracy": float((pred == y_true).mean()),
        "macro_f1": float(f1_score(y_true, pred, labels=classes_present, average="macro", zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
        "log_loss": log_loss(proba, y_true),
        "ece": expected_calibration_error(proba, y_true),
    }


def run_speed(args) -> dict:
    if args.data:
        _, rows = read_groups(Path(args.data))
        rows = rows[: args.images]
        images = decode_all([r["path"] for r in rows], DecodeSettings(size=256, stretch=(0.5, 99.5)))
        source = f"{len(images)} real crops from {args.data}"
    else:
        rng = np.random.default_rng(0)
        images = rng.integers(20, 230, (args.images, 256, 256), dtype=np.uint8)
        source = f"{len(images)} synthetic 256-px noise crops"
    feat.texture_features(images[:8], workers=1)  # warm up (imports, ring tables)
    out = {"source": source, "feature_version": feat.FEATURE_VERSION, "n_features": len(feat.feature_names(256))}
    for workers in (1, 2):
        n = len(images) if workers > 1 else max(len(images) // 2, 1)
        t0, c0 = time.perf_counter(), time.process_time()
        feat.texture_features(images[:n], workers=workers)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out[f"workers_{workers}"] = {"images": n, "images_per_s": n / wall, "cpu_ms_per_image": 1e3 * cpu / n}
        print(f"{workers} worker(s): {n / wall:7.1f} img/s  ({1e3 * cpu / n:.1f} ms CPU per image)", flush=True)
    out["machine"] = cpu_note()
    print(out["machine"])
    return out


def _c(value: str):
    return value if value == "auto" else float(value)


def run_cv(args) -> dict:
    csv_path, rows = read_groups(Path(args.cv))
    stretch = None if args.stretch == "none" else (0.5, 99.5)
    settings = DecodeSettings(size=256, stretch=stretch)
    class_names = sorted({r["label"] for r in rows})
    index = {c: i for i, c in enumerate(class_names)}
    t0 = time.perf_counter()
    images = decode_all([r["path"] for r in rows], settings)
    labels = np.array([index[r["label"]] for r in rows])
    groups = np.array([r["group"] for r in rows])
    extra_images = extra_labels = extra_groups = None
    if args.extra_train:
        extra = [r for r in read_extra(Path(args.extra_train)) if r["label"] in index]
        extra_images = decode_all([r["path"] for r in extra], settings)
        extra_labels = np.array([index[r["label"]] for r in extra])
        extra_groups = np.array(["extra:" + r["group"] for r in extra])
        print(f"extra training crops: {len(extra)} from {args.extra_train}", flush=True)
    print(f"decoded {len(images)} crops in {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    TextureModel(input_size=256).features(images, progress=True)  # fill the feature cache once
    if extra_images is not None:
        TextureModel(input_size=256).features(extra_images, progress=True)
    feature_s = time.perf_counter() - t0
    print(f"features ready in {feature_s:.1f} s (cached after the first run)", flush=True)

    folds = make_folds(rows, args.folds, args.seed)
    results = {}
    for classifier in args.classifiers:
        per_fold = []
        for k, split in enumerate(folds):
            split = np.array(split)
            tr, va, te = split == "train", split == "validation", split == "test"
            x, y, g = images[tr], labels[tr], groups[tr]
            extra_note = {}
            if extra_images is not None:
                keep = extra_kept(extra, set(groups[~tr].tolist()))
                x, y, g = (
                    np.concatenate([x, extra_images[keep]]),
                    np.concatenate([y, extra_labels[keep]]),
                    np.concatenate([g, extra_groups[keep]]),
                )
                extra_note = {"extra_added": int(keep.sum()), "extra_left_out": int((~keep).sum())}
            t1 = time.perf_counter()
            model = TextureModel(
                classifier=classifier,
                input_size=256,
                stretch=stretch,
                seed=args.seed,
                refit=args.refit,
                C=_c(args.C),
                pool_validation=not args.no_pool,
            )
            model.fit(
                x,
                y,
                class_names=class_names,
                val_images=images[va],
                val_labels=labels[va],
                groups=g,
                val_groups=groups[va],
                progress=False,
            )
            fit_s = time.perf_counter() - t1
            proba = model.predict_proba(images[te])
            present = sorted(set(labels[te].tolist()))
            row = scores(labels[te], proba, present)
            raw = np.zeros_like(proba)
            raw[:, model.trained_classes] = softmax(model.decision_scores(images[te]))
            row["log_loss_uncalibrated"] = log_loss(raw, labels[te])
            row["ece_uncalibrated"] = expected_calibration_error(raw, labels[te])
            row.update(
                fold=k,
                train=int(len(y)),
                validation=int(va.sum()),
                test=int(te.sum()),
                fit_s=fit_s,
                C=model.C_,
                gamma=model.gamma_,
                pooled_validation=model.pooled_,
                temperature=model.temperature_,
                search=model.search_,
                **extra_note,
            )
            per_fold.append(row)
            print(
                f"{classifier:8s} fold {k}: acc {row['accuracy']:.3f}  macro-F1 {row['macro_f1']:.3f}  "
                f"bal-acc {row['balanced_accuracy']:.3f}  log-loss {row['log_loss']:.3f} "
                f"(uncal. {row['log_loss_uncalibrated']:.3f})  "
                f"ECE {row['ece']:.3f} (uncal. {row['ece_uncalibrated']:.3f})  "
                f"C={model.C_:g} T={model.temperature_:.3g}  fit {fit_s:.1f} s",
                flush=True,
            )
        summary = {}
        for m in METRICS:
            vals = [r[m] for r in per_fold]
            summary[m] = {"mean": statistics.mean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else None}
        results[classifier] = {"folds": per_fold, "summary": summary}
        print(
            f"{classifier:8s} mean +- sd over {len(per_fold)} folds: "
            + "  ".join(f"{m} {summary[m]['mean']:.3f} +- {summary[m]['sd'] or 0:.3f}" for m in METRICS),
            flush=True,
        )
    return {
        "data": str(csv_path),
        "extra_train": args.extra_train,
        "folds": args.folds,
        "seed": args.seed,
        "refit": args.refit,
        "pool_validation": not args.no_pool,
        "C": args.C,
        "decode": {"size": 256, "stretch": list(stretch) if stretch else None},
        "feature_version": feat.FEATURE_VERSION,
        "feature_s": feature_s,
        "results": results,
        "machine": cpu_note(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--speed", action="store_true", help="feature-extraction speed, 1 and 2 threads")
    mode.add_argument("--cv", metavar="CSV", help="grouped CV on a path,label,micrograph CSV")
    ap.add_argument("--data", help="--speed: real crops (a path,label,micrograph CSV) instead of synthetic ones")
    ap.add_argument("--images", type=int, default=400, help="--speed: number of crops (default 400)")
    ap.add_argument("--extra-train", metavar="MANIFEST", help="crops added to every training fold")
    ap.add_argument("--classifiers", nargs="+", default=["logistic+lda"], choices=["logistic+lda", "logistic", "svm"])
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--stretch", choices=["default", "none"], default="default", help="decode stretch (0.5, 99.5) or none"
    )
    ap.add_argument("--C", default="auto", help="classifier C (default: auto = grouped CV on the training folds)")
    ap.add_argument("--no-pool", action="store_true", help="train on the training images only (validation calibrates)")
    ap.add_argument("--refit", action="store_true", help="with --no-pool: refit on training + validation")
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    args = ap.parse_args(argv)
    try:
        result = run_speed(args) if args.speed else run_cv(args)
    except BenchError as exc:
        print(f"bench_texture: error: {exc}", file=sys.stderr)
        return 2
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    name = ("texture_speed" if args.speed else "texture_cv") + (f"_{args.tag}" if args.tag else "") + ".json"
    (RESULTS_DIR / name).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

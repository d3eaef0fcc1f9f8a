"""Does a filled crop give its filling away? Three fill rules for windows that reach past the image or into
black padding, judged by how well simple statistics tell filled windows from unfilled ones.

    .venv/bin/python benchmarks/bench_crops_fill.py /work/shared/real_micrographs_dev/boxes.csv

For every annotated box (256-px windows at the micrograph's scale) the window is cut three ways:
`none` (padding and out-of-image pixels left black, what a plain cutter gives), `noise` (missing
pixels drawn from a normal distribution with the window's valid pixels' mean and sd) and `mirror`
(`virion crops`' rule). Statistics per window: min, 1st percentile, count of pixels <= 8, mean, sd,
mean absolute horizontal gradient, fraction of flat 8x8 blocks (sd < 2). A logistic regression on
the statistics plus the class (one-hot; filled windows are not spread evenly over the classes)
predicts "filled", with 5-fold cross-validation grouped by session; the table gives its ROC AUC and
the AUC of the class alone. An AUC near the class-only one means the statistics add nothing: the
filling is not visible to them. Takes about a minute on 2 cores; needs the real micrographs (not in
the repository).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from virion.data.padding import padding_mask
from virion.micrograph.boxes import read_boxes_csv
from virion.micrograph.crops import cut_window
from virion.micrograph.io import read_micrograph

SIZE = 256


def stats(window: np.ndarray) -> list[float]:
    w = window.astype(np.float64)
    blocks = w[: SIZE // 8 * 8, : SIZE // 8 * 8].reshape(SIZE // 8, 8, SIZE // 8, 8).std(axis=(1, 3))
    return [
        w.min(),
        np.percentile(w, 1),
        float((window <= 8).sum()),
        w.mean(),
        w.std(),
        float(np.abs(np.diff(w, axis=1)).mean()),
        float((blocks < 2).mean()),
    ]


STAT_NAMES = ["min", "p1", "dark", "mean", "sd", "gradient", "flat"]


def plain_window(pixels, valid, cx, cy, rule, rng):
    """The window with missing pixels as they are (`none`: padding near-black, outside the image 0) or drawn
    as noise matched to the valid pixels' mean and sd (`noise`)."""
    H, W = pixels.shape
    x0, y0 = int(np.floor(cx - SIZE / 2 + 0.5)), int(np.floor(cy - SIZE / 2 + 0.5))
    out = np.zeros((SIZE, SIZE), dtype=np.float64)
    ok = np.zeros((SIZE, SIZE), dtype=bool)
    ys, ye, xs, xe = max(y0, 0), min(y0 + SIZE, H), max(x0, 0), min(x0 + SIZE, W)
    out[ys - y0 : ye - y0, xs - x0 : xe - x0] = pixels[ys:ye, xs:xe]
    ok[ys - y0 : ye - y0, xs - x0 : xe - x0] = valid[ys:ye, xs:xe]
    if rule == "noise" and (~ok).any() and ok.any():
        mean, sd = out[ok].mean(), out[ok].std()
        out[~ok] = rng.normal(mean, sd, int((~ok).sum()))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("boxes", type=Path)
    args = parser.parse_args(argv)
    if not args.boxes.is_file():
        print(f"{args.boxes}: not found (the real micrographs are not part of the repository)", file=sys.stderr)
        return 2
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    start = time.perf_counter()
    annotations = read_boxes_csv(args.boxes)
    by_micrograph: dict[Path, list] = {}
    for a in annotations.items:
        by_micrograph.setdefault(a.micrograph, []).append(a)
    rng = np.random.default_rng(0)
    rows = {"none": [], "noise": [], "mirror": []}
    labels, groups, filled = [], [], []
    for path, items in by_micrograph.items():
        m = read_micrograph(path)
        valid = ~padding_mask(m.pixels)
        for a in items:
            window, fraction, _, _ = cut_window(m.pixels, valid, a.x, a.y, SIZE)
            rows["mirror"].append(stats(window))
            for rule in ("none", "noise"):
                rows[rule].append(stats(plain_window(m.pixels, valid, a.x, a.y, rule, rng)))
            labels.append(a.label)
            groups.append(a.group or path.stem)
            filled.append(fraction > 0)
    y = np.asarray(filled)
    classes = sorted(set(labels))
    onehot = np.asarray([[lab == c for c in classes] for lab in labels], dtype=np.float64)
    cv = GroupKFold(n_splits=5)

    def auc(features):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
        p = cross_val_predict(model, features, y, groups=groups, cv=cv, method="predict_proba")[:, 1]
        return roc_auc_score(y, p)

    print(f"{len(y)} windows, {int(y.sum())} filled, {len(set(groups))} groups; {time.perf_counter() - start:.0f} s")
    print(f"class only: AUC {auc(onehot):.3f}")
    print("rule    AUC(class+stats)  per-statistic AUC (class + that statistic)")
    for rule, values in rows.items():
        values = np.asarray(values)
        each = " ".join(f"{n} {auc(np.hstack([onehot, values[:, [i]]])):.3f}" for i, n in enumerate(STAT_NAMES))
        print(f"{rule:<7} {auc(np.hstack([onehot, values])):.3f}             {each}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Verdict rules re-applied to the particles a `bench_scan.py --dump-particles` run kept.

Why: the verdict rule (`micrograph.verdict.decide`: summed probabilities, an `uncertain` margin,
optional detector-score weights) costs nothing to vary once each held-out micrograph's accepted
particles and its oracle windows are stored, so rules are compared on the very same particles,
paired per fold. Rules picked this way are chosen after looking: quote them as optimistic.
`--nested` gives the honest figure: for each held-out fold the rule (min-confidence, margin,
weights) is chosen on the other folds' micrographs only and then scored on that fold.

    .venv/bin/python benchmarks/bench_scan.py --step 1 --folds 5 --detector heatmap --detected-positives \\
        --dump-particles --cache CACHE --out DIR
    .venv/bin/python benchmarks/verdict_rules.py DIR/bench_scan.json --confidence 0.5
    .venv/bin/python benchmarks/verdict_rules.py DIR/bench_scan.json --nested
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import numpy as np

# The rule before this study (min confidence, margin, weights): the baseline of the paired gains.
BEFORE = ("0.5", 0.10, "none")


def accuracy(fold: dict, key: str, names: list[str], margin: float, weight: str, oracle: bool = False) -> float:
    """Verdict accuracy of one fold's micrographs under a rule (uncertain and none count as wrong)."""
    from virion.micrograph.verdict import decide, particle_weights

    hits = []
    for path, label, *_ in fold[key]["micrographs"]:
        kept = fold[key]["particles"][path]
        probs = np.asarray(kept["oracle" if oracle else "p"], float).reshape(-1, len(names))
        weights = None if oracle else particle_weights(np.asarray(kept["score"], float), weight)
        hits.append(decide(probs, names, weights=weights, min_particles=1, margin=margin).verdict == label)
    return float(np.mean(hits))


def mean_sd(values) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def nested(folds: list[dict], names: list[str], confidences: list[str], margins: list[float]) -> int:
    """Leave-one-fold-out rule choice: the rule with the best mean accuracy on the other folds (ties:
    the earlier rule in the grid, which starts at the defaults), scored on the held-out fold."""
    grid = [(c, m, w) for c in confidences for m in margins for w in ("none", "score")]
    default = BEFORE if BEFORE in grid else grid[0]
    grid.sort(key=lambda r: r != default)  # the earlier rule first: it wins ties
    table = {r: [accuracy(f, f"conf={r[0]}", names, r[1], r[2]) for f in folds] for r in grid}
    oracle = {m: [accuracy(f, f"conf={confidences[0]}", names, m, "none", oracle=True) for f in folds] for m in margins}
    print(
        "| held-out fold | rule chosen on the other folds (conf, margin, weights) | verdict acc. | earlier rule "
        "| oracle | detected - oracle |"
    )
    print("|---|---|---|---|---|---|")
    chosen, base, gap = [], [], []
    for k in range(len(folds)):
        rule = max(grid, key=lambda r: statistics.mean(a for j, a in enumerate(table[r]) if j != k))
        chosen.append(table[rule][k])
        base.append(table[default][k])
        gap.append(table[rule][k] - oracle[rule[1]][k])
        print(
            f"| {k} | {rule[0]}, {rule[1]}, {rule[2]} | {chosen[-1]:.3f} | {base[-1]:.3f} "
            f"| {oracle[rule[1]][k]:.3f} | {gap[-1]:+.3f} |"
        )
    gains = [a - b for a, b in zip(chosen, base)]
    print(f"| mean ± sd | | {mean_sd(chosen)} | {mean_sd(base)} | | {mean_sd(gap)} |")
    print(f"paired gain of the nested choice over the earlier rule {BEFORE}: {mean_sd(gains)}")
    best = max(grid, key=lambda r: statistics.mean(table[r]))
    print(f"rule chosen on all folds: conf {best[0]}, margin {best[1]}, weights {best[2]} ({mean_sd(table[best])})")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", help="bench_scan.json of a --dump-particles run")
    parser.add_argument("--confidence", default="0.5", help="which min-confidence rows (as run)")
    parser.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.05, 0.10, 0.20])
    parser.add_argument("--nested", action="store_true", help="choose the rule on the other folds, score on each fold")
    args = parser.parse_args(argv)
    report = json.load(open(args.results))
    key = f"conf={args.confidence}"
    folds = report["folds"]
    if "particles" not in folds[0].get(key, {}):
        print(f"{args.results}: no dumped particles for {key}; run bench_scan.py with --dump-particles")
        return 1
    from virion.data.layout import BACKGROUND_CLASS

    names = sorted({m[1] for f in folds for m in f[key]["micrographs"]}) + [BACKGROUND_CLASS]
    if args.nested:
        confidences = sorted({k.split("=", 1)[1] for k in folds[0] if k.startswith("conf=")}, reverse=True)
        return nested(folds, names, confidences, [m for m in args.margins if m <= 0.10])
    base = [accuracy(f, key, names, 0.10, "none") for f in folds]
    print("| margin | weights | verdict acc. | paired gain over margin 0.10, unweighted | oracle | detected - oracle |")
    print("|---|---|---|---|---|---|")
    for margin in args.margins:
        oracle = [accuracy(f, key, names, margin, "none", oracle=True) for f in folds]
        for weight in ("none", "score"):
            acc = [accuracy(f, key, names, margin, weight) for f in folds]
            gain = [a - b for a, b in zip(acc, base)]
            gap = [a - o for a, o in zip(acc, oracle)]
            print(f"| {margin} | {weight} | {mean_sd(acc)} | {mean_sd(gain)} | {mean_sd(oracle)} | {mean_sd(gap)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Grouped cross-validation of training recipes on real micrographs, through the real `virion train`.

Crops of one micrograph share stain, defocus and particles, so every split here is by source
micrograph: StratifiedGroupKFold (seeded) makes the test folds, and the validation split is taken
from the training micrographs by group as well. Each fold is a `path,label,split` manifest that the
`virion train` CLI trains on in a subprocess, exactly as a user would run it; the benchmark then
reads each model's `evaluation/predictions.csv` and scores the fold itself: accuracy, macro-F1
(the primary metric: classes are imbalanced ~10x; averaged over the classes present in the fold's
test split), balanced accuracy and wall time, plus the ensemble of the models when several are
trained (mean of their probabilities). Mean +- sd (over folds) per recipe x model, and the paired
difference of each recipe against the first one, are printed and written as JSON.

A recipe is `NAME` (a preset: `virion train --preset NAME`; `reference` works without presets) or
`LABEL=OPTIONS` (extra `virion train` options, e.g. `tem1=--rot90 --vertical-flip --zoom 0.1`).

`--extra-train MANIFEST` adds crops cut from other micrographs (`virion crops`' manifest.csv:
path,label,group[,micrograph]) to the training side of every fold; a crop whose session (group) or
micrograph also has crops on a fold's validation or test side is left out of that fold, so nothing
of a tested session is trained on. `--baseline-model texture` adds the paired difference of every
model (and the ensemble) to that model, fold by fold. Each fold records the CPU flags, the load
average before and after, and ONEDNN_MAX_CPU_ISA.

Each fold's JSON says whether the evaluations it scored used test-time augmentation (`"tta"`, per
row and per fold, from each evaluation's summary.json; a recipe with `--eval-tta` has it).
`--rescore-tta` trains nothing: it runs `virion evaluate RUN --tta` on every run kept (by
`--keep-runs`) in --workdir, scores those evaluations (`result-tta.json` beside each fold's
result.json) and aggregates them like --collect into `bench_real_<tag>_tta.json`.

Development data (not in the repo): ../shared/real_tem_dev/micrographs.csv (path,label,micrograph).

Reference vs a candidate, 3 folds, bf16 (about an hour per recipe on 2 quiet cores at 128 px):
    nice -n 19 .venv/bin/python benchmarks/bench_real.py ../shared/real_tem_dev/micrographs.csv \
        --folds 3 --recipes reference "tem1=--rot90 --vertical-flip" --extra=--bf16 --resume
The same folds re-scored with 8-way TTA (the runs must have been kept; minutes, no training):
    .venv/bin/python benchmarks/bench_real.py ../shared/real_tem_dev/micrographs.csv --folds 3 --recipes tem \
        --models tem_cnn texture --tag tem --rescore-tta
Smoke run (a minute):
    .venv/bin/python benchmarks/bench_real.py DATA --folds 2 --limit 12 --input-size 32 --epochs 1
The `tem` study (texture, the compact CNN, their ensemble; ~30 min on 2 cores), then with the
micrograph crops added to every training fold:
    nice -n -10 .venv/bin/python benchmarks/bench_real.py ../shared/real_tem_dev/micrographs.csv \
        --folds 3 --recipes tem --models tem_cnn texture --baseline-model texture --tag tem
    ... --extra-train /work/derived/crops/mcrops/manifest.csv --tag tem_mcrops
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
METRICS = ("accuracy", "macro_f1", "balanced_accuracy")
ENSEMBLE = "ensemble"


class BenchError(Exception):
    """A user mistake in the benchmark's arguments or data: printed as one line."""


@dataclass(frozen=True)
class Recipe:
    label: str
    args: tuple[str, ...]  # extra `virion train` options


# --------------------------------------------------------------------------- data and folds


def read_groups(path: Path) -> tuple[Path, list[dict]]:
    """Rows {path (absolute), label, group} of a path,label,micrograph CSV (or a folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "micrographs.csv"
    if not path.is_file():
        raise BenchError(
            f"{path}: no such file; give a path,label,micrograph CSV "
            f"(e.g. ../shared/real_tem_dev/micrographs.csv) - the real data is not part of the repo"
        )
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip().lower() for f in reader.fieldnames or []]
        group_key = next((k for k in ("micrograph", "group") if k in fields), None)
        if "path" not in fields or "label" not in fields or group_key is None:
            raise BenchError(f"{path}: needs a header 'path,label,micrograph' (or 'group'), found {','.join(fields)}")
        reader.fieldnames = fields
        rows = []
        for row in reader:
            p = Path(row["path"].strip())
            rows.append(
                {
                    "path": str(p if p.is_absolute() else (path.parent / p).resolve()),
                    "label": row["label"].strip(),
                    "group": row[group_key].strip(),
                }
            )
    if not rows:
        raise BenchError(f"{path}: no rows")
    missing = [r["path"] for r in rows if not Path(r["path"]).is_file()]
    if missing:
        raise BenchError(f"{path}: {len(missing)} listed image(s) missing, first {missing[0]}")
    return path, rows


def session_of(group: str) -> str:
    """The session of a micrograph name: all before a trailing _N ("B2-65k-071019_18" -> "B2-65k-071019")."""
    head, sep, tail = group.rpartition("_")
    return head if sep and tail.isdigit() and head else group


def read_extra(path: Path) -> list[dict]:
    """Rows {path, label, group, micrograph} of a `virion crops` manifest (path,label,group[,micrograph])."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise BenchError(f"--extra-train {path}: no such file; give the manifest.csv `virion crops` wrote")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip().lower() for f in reader.fieldnames or []]
        if not {"path", "label"} <= set(fields) or not {"group", "micrograph", "session"} & set(fields):
            raise BenchError(f"--extra-train {path}: needs a header path,label,group[,micrograph]; found {fields}")
        reader.fieldnames = fields
        rows = []
        for row in reader:
            p = Path(row["path"].strip())
            group = (row.get("group") or row.get("session") or row.get("micrograph") or "").strip()
            rows.append(
                {
                    "path": str(p if p.is_absolute() else (path.parent / p).resolve()),
                    "label": row["label"].strip(),
                    "group": group,
                    "micrograph": Path((row.get("micrograph") or group).strip()).stem,  # a name, not a path
                }
            )
    if not rows:
        raise BenchError(f"--extra-train {path}: no rows")
    return rows


def add_extra(rows: list[dict], split: list[str], extra: list[dict]) -> tuple[list[dict], list[str], int]:
    """The fold plus the extra crops on its training side; returns (rows, split, crops left out).

    An extra crop is left out when its session or micrograph has crops on the fold's validation or
    test side (sessions on both sides of the development data exist), or its class is not one of
    the fold's classes.
    """
    held = {r["group"] for r, s in zip(rows, split) if s != "train"}
    held_sessions = {session_of(g) for g in held} | held
    classes = {r["label"] for r in rows}
    kept, dropped = [], 0
    for e in extra:
        names = {e["group"], e["micrograph"], session_of(e["group"]), session_of(e["micrograph"])}
        if names & held_sessions or e["label"] not in classes:
            dropped += 1
            continue
        kept.append(e)
    return rows + kept, split + ["train"] * len(kept), dropped


def limit_rows(rows: list[dict], per_class: int, seed: int) -> list[dict]:
    """At most `per_class` rows per class (seeded), for smoke runs."""
    rng = np.random.default_rng(seed)
    by_class = defaultdict(list)
    for r in rows:
        by_class[r["label"]].append(r)
    kept = []
    for label in sorted(by_class):
        items = by_class[label]
        idx = sorted(rng.permutation(len(items))[:per_class])
        kept += [items[i] for i in idx]
    return kept


def _grouped_split(labels, groups, n_splits: int, seed: int):
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(set(groups))
    if n_groups < n_splits:
        raise BenchError(f"only {n_groups} micrographs for {n_splits} folds; use --folds {max(2, n_groups)} or less")
    skf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "least populated class has fewer members than n_splits": expected here
        warnings.simplefilter("ignore", UserWarning)
        return list(skf.split(np.zeros(len(labels)), labels, groups))


def make_folds(rows: list[dict], n_folds: int, seed: int, val_fraction: float = 0.2) -> list[list[str]]:
    """Split name ('train'/'validation'/'test') per row for each fold; no micrograph on two sides.

    Validation micrographs come from the training side (a grouped, stratified draw of about
    `val_fraction`); a class never loses its last training micrograph to validation, since
    `virion train` cannot learn a class it does not see.
    """
    labels = [r["label"] for r in rows]
    groups = [r["group"] for r in rows]
    group_label = {}
    for lab, g in zip(labels, groups):
        if group_label.setdefault(g, lab) != lab:
            raise BenchError(
                f"micrograph {g!r} holds two labels ({group_label[g]!r}, {lab!r}); one label per micrograph expected"
            )
    folds = []
    for k, (train_idx, test_idx) in enumerate(_grouped_split(labels, groups, n_folds, seed)):
        split = ["train"] * len(rows)
        for i in test_idx:
            split[i] = "test"
        train_idx = list(train_idx)
        for lab in sorted({labels[i] for i in test_idx} - {labels[i] for i in train_idx}):
            # every micrograph of this class fell in the test fold: `virion train` cannot learn a class
            # it never sees, so its smallest test micrograph trains instead (it is then tested in no fold)
            gs = sorted({groups[i] for i in test_idx if labels[i] == lab})
            moved = min(gs, key=groups.count)
            for i in range(len(rows)):
                if groups[i] == moved:
                    split[i] = "train"
                    train_idx.append(i)
        n_val = max(2, round(1 / val_fraction))
        tl = [labels[i] for i in train_idx]
        tg = [groups[i] for i in train_idx]
        try:
            _, val_local = _grouped_split(tl, tg, n_val, seed + 1000 + k)[0]
        except BenchError:
            val_local = []
        val_groups = {tg[i] for i in val_local}
        train_groups_of = defaultdict(set)
        for lab, g in zip(tl, tg):
            train_groups_of[lab].add(g)
        for gs in train_groups_of.values():
            if gs and gs <= val_groups:  # keep one micrograph (the largest) of this class in training
                val_groups.discard(max(sorted(gs), key=tg.count))
        for i in train_idx:
            if groups[i] in val_groups:
                split[i] = "validation"
        folds.append(split)
    return folds


def check_fold(rows: list[dict], split: list[str]) -> None:
    """Invariants every fold must meet (also the benchmark's own test)."""
    sides = defaultdict(set)
    for r, s in zip(rows, split):
        sides[r["group"]].add(s)
    leaked = [g for g, s in sides.items() if len(s) > 1]
    if leaked:
        raise AssertionError(f"micrograph(s) on two sides: {leaked[:3]}")
    train_labels = {r["label"] for r, s in zip(rows, split) if s == "train"}
    absent = {r["label"] for r, s in zip(rows, split) if s != "train"} - train_labels
    if absent:
        raise AssertionError(f"class(es) without training images: {sorted(absent)}")


def write_manifest(path: Path, rows: list[dict], split: list[str]) -> Path:
    from virion.atomic import atomic_write_text

    lines = ["path,label,split,group"]  # group: any split virion makes itself is by micrograph too
    for r, s in zip(rows, split):
        lines.append(",".join(_csv_field(v) for v in (r["path"], r["label"], s, r["group"])))
    return atomic_write_text(path, "\n".join(lines) + "\n")


def _csv_field(value: str) -> str:
    return f'"{value}"' if ("," in value or '"' in value) else value


# --------------------------------------------------------------------------- scoring


def scores(y_true: list[str], y_pred: list[str]) -> dict:
    """Accuracy, macro-F1 and balanced accuracy over the classes present in y_true."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score, f1_score

    present = sorted(set(y_true))
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": expected in a fold
        warnings.simplefilter("ignore", UserWarning)
        balanced = float(balanced_accuracy_score(y_true, y_pred)) if y_true else 0.0
    return {
        "accuracy": float(np.mean([t == p for t, p in zip(y_true, y_pred)])) if y_true else 0.0,
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "balanced_accuracy": balanced,
        "n_test": len(y_true),
        "n_test_classes": len(present),
    }


def read_predictions(path: Path, class_names: list[str]) -> tuple[list[str], list[str], np.ndarray, bool]:
    """files, true classes, (N, C) probabilities, exact? from an evaluation predictions.csv.

    Uses per-class probability columns when the CSV has them (named by the class, or p_/prob_ +
    class); otherwise rebuilds the top-3 probabilities from the `top3` column (the rest 0: an
    approximation, flagged, good enough for an ensemble's argmax in most rows).
    """
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    files = [r["file"] for r in rows]
    truth = [r["true_class"] for r in rows]
    probs = np.zeros((len(rows), len(class_names)), dtype=np.float64)
    fields = set(rows[0]) if rows else set()
    cols = []
    for c in class_names:
        col = next((x for x in (f"p_{c}", f"prob_{c}", f"probability_{c}", c) if x in fields), None)
        cols.append(col)
    if rows and all(cols):
        for i, r in enumerate(rows):
            probs[i] = [float(r[col]) for col in cols]
        return files, truth, probs, True
    index = {c: j for j, c in enumerate(class_names)}
    for i, r in enumerate(rows):
        for item in filter(None, (r.get("top3") or "").split(";")):
            name, _, value = item.rpartition(":")
            if name in index:
                probs[i, index[name]] = float(value)
        if not probs[i].any() and r.get("predicted_class") in index:
            probs[i, index[r["predicted_class"]]] = float(r.get("confidence") or 1.0)
    return files, truth, probs, False


def _summary_tta(evaluation_dir: Path) -> bool | None:
    """An evaluation's summary.json "tta" (False for summaries older than the setting; None: no summary)."""
    path = evaluation_dir / "summary.json"
    if not path.is_file():
        return None
    return bool(json.loads(path.read_text(encoding="utf-8")).get("tta", False))


def run_tta(scored: dict) -> bool | str | None:
    """A fold's "tta": True / False when every scored row agrees, "mixed" otherwise, None when unknown."""
    seen = {sc.get("tta") for sc in scored.values() if isinstance(sc, dict) and sc.get("tta") is not None}
    return seen.pop() if len(seen) == 1 else ("mixed" if seen else None)


def score_run(run_dir: Path, models: list[str], evaluation: str = "evaluation") -> dict:
    """Scores per model (and the ensemble) of one trained fold's run folder.

    evaluation: the folder of each model's evaluation to score (`evaluation-tta` after
    `virion evaluate RUN --tta` on a run trained without --eval-tta). Each row records "tta".
    """
    out: dict = {}
    per_model = {}
    for name in models:
        model_dir = run_dir / name
        meta = json.loads((model_dir / "metadata.json").read_text(encoding="utf-8"))
        class_names = list(meta["class_names"])
        pred_csv = model_dir / evaluation / "predictions.csv"
        if not pred_csv.is_file():
            raise BenchError(f"{pred_csv}: missing; did `virion train` (or `virion evaluate`) evaluate the model?")
        files, truth, probs, exact = read_predictions(pred_csv, class_names)
        per_model[name] = (files, truth, probs, exact, class_names)
        out[name] = scores(truth, [class_names[j] for j in probs.argmax(axis=1)])
        summary = model_dir / evaluation / "summary.json"
        if summary.is_file():  # virion's own figure, kept beside ours as a cross-check
            out[name]["virion_accuracy"] = json.loads(summary.read_text(encoding="utf-8")).get("accuracy")
        out[name]["tta"] = _summary_tta(model_dir / evaluation)
    # virion's own ensemble rows (exact probabilities) and the run's recommended classifier, when written
    for folder in ("ensemble", "ensemble-weighted"):
        pred_csv = run_dir / folder / evaluation / "predictions.csv"
        if pred_csv.is_file():
            with open(pred_csv, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
            out[folder] = scores([r["true_class"] for r in rows], [r["predicted_class"] for r in rows])
            out[folder]["exact_probabilities"] = True
            out[folder]["tta"] = _summary_tta(run_dir / folder / evaluation)
    recommended = run_dir / "recommended.json"
    if recommended.is_file():
        chosen = json.loads(recommended.read_text(encoding="utf-8")).get("classifier")
        if chosen in out:
            out["recommended"] = {**out[chosen], "classifier": chosen}
    if len(per_model) > 1 and ENSEMBLE not in out:
        first = next(iter(per_model.values()))
        files, truth, class_names = first[0], first[1], first[4]
        stack = []
        for f, _, p, _, cn in per_model.values():
            if f != files or cn != class_names:
                raise BenchError(f"{run_dir}: models were evaluated on different files or classes")
            stack.append(p)
        mean = np.mean(stack, axis=0)
        out[ENSEMBLE] = scores(truth, [class_names[j] for j in mean.argmax(axis=1)])
        out[ENSEMBLE]["exact_probabilities"] = all(v[3] for v in per_model.values())
        out[ENSEMBLE]["tta"] = run_tta({n: out[n] for n in per_model})
    return out


def summarize(values: list[float]) -> dict:
    """Mean, sd and n; sd is None (JSON null, printed "n/a") for a single fold: no spread is known."""
    return {
        "mean": float(statistics.fmean(values)) if values else float("nan"),
        "sd": float(statistics.stdev(values)) if len(values) > 1 else None,
        "n": len(values),
    }


def _sd_text(sd: float | None, spec: str) -> str:
    return "n/a" if sd is None else format(sd, spec)


def aggregate(results: dict[str, dict[int, dict]], baseline_model: str | None = None) -> dict:
    """{recipe: {model: {metric: mean/sd/n}}}, paired differences against the first recipe and,
    with `baseline_model`, of every other model (and the ensemble) against it, fold by fold."""
    table: dict = {}
    for recipe, folds in results.items():
        per = defaultdict(lambda: defaultdict(list))
        for fold in sorted(folds):
            res = folds[fold]
            for model, sc in res["scores"].items():
                for m in METRICS:
                    per[model][m].append(sc[m])
                per[model]["wall_s"].append(res["wall_s"])
        table[recipe] = {model: {m: summarize(v) for m, v in ms.items()} for model, ms in per.items()}
    diffs: dict = {}
    recipes = list(results)
    if len(recipes) > 1:
        base = results[recipes[0]]
        for recipe in recipes[1:]:
            common = sorted(set(base) & set(results[recipe]))
            diffs[recipe] = {}
            for model in results[recipe][common[0]]["scores"] if common else []:
                if all(model in base[f]["scores"] for f in common):
                    diffs[recipe][model] = {
                        m: summarize(
                            [results[recipe][f]["scores"][model][m] - base[f]["scores"][model][m] for f in common]
                        )
                        for m in METRICS
                    }
    out = {"table": table, "paired_difference_vs_" + (recipes[0] if recipes else "none"): diffs}
    if baseline_model:
        out["paired_difference_vs_model_" + baseline_model] = model_differences(results, baseline_model)
    return out


def model_differences(results: dict[str, dict[int, dict]], baseline: str) -> dict:
    """{recipe: {model: {metric: mean/sd/n of (model - baseline) over the folds where both ran}}}."""
    diffs: dict = {}
    for recipe, folds in results.items():
        paired = [folds[f]["scores"] for f in sorted(folds) if baseline in folds[f]["scores"]]
        models = sorted({m for sc in paired for m in sc if m != baseline})
        diffs[recipe] = {
            model: {m: summarize([sc[model][m] - sc[baseline][m] for sc in paired if model in sc]) for m in METRICS}
            for model in models
        }
    return diffs


def format_table(agg: dict) -> str:
    lines = [
        f"{'recipe':<16} {'model':<12} {'n':>2} {'accuracy':>15} {'macro-F1':>15} {'bal. acc.':>15} {'wall s':>12}"
    ]
    for recipe, models in agg["table"].items():
        for model, ms in models.items():
            cells = [f"{ms[m]['mean']:.3f} +- {_sd_text(ms[m]['sd'], '.3f')}" for m in METRICS]
            lines.append(
                f"{recipe:<16} {model:<12} {ms['accuracy']['n']:>2} {cells[0]:>15} {cells[1]:>15} "
                f"{cells[2]:>15} {ms['wall_s']['mean']:>6.0f}+-{_sd_text(ms['wall_s']['sd'], '.0f'):<4}"
            )
    for key, diffs in agg.items():
        if key.startswith("paired_difference") and diffs:
            what = "model" if "_vs_model_" in key else "recipe"
            lines.append(f"paired difference ({what} - {key.rsplit('_', 1)[-1]}), mean +- sd over folds:")
            for recipe, models in diffs.items():
                for model, ms in models.items():
                    cells = [f"{ms[m]['mean']:+.3f} +- {_sd_text(ms[m]['sd'], '.3f')}" for m in METRICS]
                    lines.append(
                        f"  {recipe:<14} {model:<12} {ms['accuracy']['n']:>2} {cells[0]:>15} "
                        f"{cells[1]:>15} {cells[2]:>15}"
                    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- running


def parse_recipe(text: str, presets_supported: bool) -> Recipe:
    label, sep, options = text.partition("=")
    label = label.strip()
    if not label or any(c in label for c in "/ \\"):
        raise BenchError(f"--recipes {text!r}: give NAME or LABEL=OPTIONS with a plain label")
    if sep:
        return Recipe(label, tuple(shlex.split(options)))
    if presets_supported:
        return Recipe(label, ("--preset", label))
    if label == "reference":
        return Recipe(label, ())  # today's defaults are the reference settings
    raise BenchError(
        f"--recipes {label!r}: this `virion train` has no --preset option yet; write the recipe as {label}=OPTIONS"
    )


def virion_command() -> list[str]:
    exe = Path(sys.executable).with_name("virion")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "virion"]


def presets_supported(cmd: list[str], src: Path | None) -> bool:
    env = {**os.environ, "PYTHONPATH": str(src)} if src else None
    try:
        text = subprocess.run(
            cmd + ["train", "--help"], capture_output=True, text=True, timeout=300, env=env, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--preset" in text


def train_fold(cmd: list[str], manifest: Path, run_dir: Path, recipe: Recipe, args) -> tuple[float, list[str]]:
    """Run `virion train` on one fold; returns (wall time, argv). The log is kept in the run folder's parent."""
    argv = cmd + [
        "train",
        "--data",
        str(manifest),
        "--out",
        str(run_dir),
        "--models",
        *args.models,
        "--weights",
        "none",
        "--seed",
        str(args.seed),
        "--overwrite",
        *recipe.args,
    ]
    if args.epochs is not None:
        argv += ["--epochs", str(args.epochs)]
    if args.input_size is not None:
        argv += ["--input-size", str(args.input_size)]
    argv += args.extra
    log = run_dir.parent / "train.log"
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        fh.write(shlex.join(argv) + "\n")
        fh.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if args.src:  # this source tree first on the path (ahead of the editable install)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.src), env.get("PYTHONPATH")]))
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env)
        try:
            proc.wait()
        finally:  # interrupted or killed (SIGTERM is turned into SystemExit in main): stop the training too
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        raise BenchError(
            f"`virion train` failed (exit {proc.returncode}) for {run_dir}; log {log}: " + " | ".join(tail)
        )
    return wall, argv


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="path,label,micrograph CSV (or its folder)")
    p.add_argument("--folds", type=int, default=5, help="number of grouped folds (default 5)")
    p.add_argument("--only-folds", type=int, nargs="+", metavar="K", help="run these folds only (0-based)")
    p.add_argument(
        "--recipes",
        nargs="+",
        default=["reference"],
        help="NAME (a preset) or LABEL=OPTIONS (extra `virion train` options); default reference",
    )
    p.add_argument("--models", nargs="+", default=["resnet50"], help="models to train (default resnet50)")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--input-size", type=int, help="override the recipe's input size")
    p.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="OPTION",
        help="an option added to every recipe, e.g. --extra=--bf16 (repeatable)",
    )
    p.add_argument(
        "--extra-train",
        type=Path,
        metavar="MANIFEST",
        help="add these crops (`virion crops` manifest.csv: path,label,group[,micrograph]) to every training "
        "fold; crops of a session that a fold validates or tests on are left out of that fold",
    )
    p.add_argument(
        "--baseline-model",
        metavar="MODEL",
        help="also report each model's paired difference to this one (default: texture when trained)",
    )
    p.add_argument("--limit", type=int, metavar="N", help="at most N images per class (smoke runs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds and of training (default 0)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of training micrographs for validation")
    p.add_argument(
        "--workdir",
        type=Path,
        help="fold manifests, run folders and per-fold results (default /tmp/virion-bench-real/<tag>)",
    )
    p.add_argument("--resume", action="store_true", help="skip folds whose result JSON exists in --workdir")
    p.add_argument(
        "--collect",
        action="store_true",
        help="train nothing: aggregate the finished folds in "
        "--workdir (e.g. after running each recipe in its own process with the same --tag)",
    )
    p.add_argument(
        "--rescore-tta",
        action="store_true",
        help="train nothing: run `virion evaluate RUN --tta` on each run kept (--keep-runs) in --workdir's "
        "finished folds, score it (fold JSON result-tta.json) and aggregate like --collect into "
        "bench_real_<tag>_tta.json; with --resume, folds already re-scored are read back",
    )
    p.add_argument(
        "--reuse-runs",
        type=Path,
        metavar="OLD_WORKDIR",
        help="copy each fold's run kept (--keep-runs) in OLD_WORKDIR (same recipe label, data, folds and seed), "
        "delete the --retrain models and everything computed from them (ensembles, recommendation, "
        "evaluations, report), apply --set-config, and finish it with `virion train --resume`: the other models "
        "are not trained again (training is deterministic for a seed, so this equals a rerun when their code "
        "and settings did not change: say so when quoting)",
    )
    p.add_argument("--retrain", nargs="+", default=[], metavar="MODEL", help="models --reuse-runs trains again")
    p.add_argument(
        "--set-config",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="with --reuse-runs: set this config.json value in the copied run, e.g. eval_tta=true (repeatable)",
    )
    p.add_argument("--keep-runs", action="store_true", help="keep the trained models (default: deleted)")
    p.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/bench_real_<tag>.json)")
    p.add_argument("--tag", default="latest", help="name of the default results file")
    p.add_argument(
        "--src",
        type=Path,
        help="run `virion` from this source folder (e.g. a snapshot made with "
        "`git archive HEAD src`), so edits in the working tree do not change a long benchmark midway",
    )
    p.add_argument("--dry-run", action="store_true", help="write the fold manifests and print their sizes only")
    args = p.parse_args(argv)
    args.extra = [x for e in args.extra for x in shlex.split(e)]
    args.workdir = args.workdir or Path("/tmp/virion-bench-real") / args.tag
    if args.baseline_model is None and "texture" in args.models:
        args.baseline_model = "texture"
    if args.folds < 2:
        p.error("--folds must be 2 or more")
    if not 0 < args.val_fraction < 0.5:
        p.error("--val-fraction must be within (0, 0.5)")
    if args.reuse_runs and not args.retrain:
        p.error("--reuse-runs needs --retrain MODEL... (the models to train again)")
    try:
        args.set_config = dict(_config_item(x) for x in args.set_config)
    except ValueError as exc:
        p.error(f"--set-config: {exc}")
    if args.rescore_tta and (args.collect or args.dry_run):
        p.error("--rescore-tta trains nothing and writes its own results: drop --collect / --dry-run")
    return args


def _config_item(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"'{text}' is not KEY=JSON (e.g. eval_tta=true)")
    return key, json.loads(value)


def reuse_fold(cmd: list[str], old_run: Path, run_dir: Path, args) -> tuple[float, list[str]]:
    """Copy a kept run, drop the models to retrain and what was computed from them, `virion train --resume`."""
    import shutil

    if not (old_run / "config.json").is_file():
        raise BenchError(f"--reuse-runs: {old_run} holds no kept run (train it with --keep-runs first)")
    if run_dir.exists():
        shutil.rmtree(run_dir)
    shutil.copytree(old_run, run_dir)
    derived = [*args.retrain, "ensemble", "ensemble-weighted", "recommended.json"]
    for name in derived:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    for path in run_dir.iterdir():  # the other models' evaluations and the run's comparison/report
        if path.name.startswith(("comparison", "report")):
            path.unlink()
        elif path.is_dir():
            for sub in path.glob("evaluation*"):
                shutil.rmtree(sub)
    config_file = run_dir / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    unknown = set(args.retrain) - set(config.get("models", []))
    if unknown:
        raise BenchError(f"--retrain {' '.join(sorted(unknown))}: not a model of {old_run}")
    config.update(args.set_config)
    config["out"] = str(run_dir)
    config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
    argv = cmd + ["train", "--resume", str(run_dir)]
    log = run_dir.parent / "train.log"
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        fh.write(f"reused {old_run} (retrain {' '.join(args.retrain)}, set {args.set_config})\n")
        fh.write(shlex.join(argv) + "\n")
        fh.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if args.src:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.src), env.get("PYTHONPATH")]))
        proc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        raise BenchError(f"`virion train --resume` failed for {run_dir}; log {log}: " + " | ".join(tail))
    return time.perf_counter() - start, argv


def main(argv=None) -> int:
    import signal

    args = parse_args(argv)
    if threading_main():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.path.insert(0, str(ROOT / "src"))
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench_real: {exc}", file=sys.stderr)
        return 2


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def run(args) -> int:
    import shutil

    from virion.atomic import atomic_write_text

    csv_path, rows = read_groups(args.data)
    if args.limit:
        rows = limit_rows(rows, args.limit, args.seed)
    folds = make_folds(rows, args.folds, args.seed, args.val_fraction)
    extra = read_extra(args.extra_train) if args.extra_train else []
    if extra:
        ready = Path(args.extra_train) if Path(args.extra_train).is_dir() else Path(args.extra_train).parent
        note = "" if (ready / "READY").exists() else " (no READY file beside it: is it complete?)"
        print(f"{args.extra_train}: {len(extra)} extra training crops{note}", flush=True)
    cmd = virion_command()
    recipes = [parse_recipe(r, args.dry_run or presets_supported(cmd, args.src)) for r in args.recipes]
    if len({r.label for r in recipes}) != len(recipes):
        raise BenchError("--recipes: two recipes with the same label")
    chosen = args.only_folds if args.only_folds is not None else list(range(args.folds))
    print(
        f"{csv_path}: {len(rows)} images, {len({r['group'] for r in rows})} micrographs, "
        f"{len({r['label'] for r in rows})} classes; {args.folds} grouped folds (seed {args.seed})",
        flush=True,
    )
    results: dict[str, dict[int, dict]] = {r.label: {} for r in recipes}
    for k in chosen:  # folds outside, recipes inside: a partial run still has paired folds
        for recipe in recipes:
            split = folds[k]
            check_fold(rows, split)
            fold_dir = args.workdir / recipe.label / f"fold{k}"
            fold_dir.mkdir(parents=True, exist_ok=True)
            result_file = fold_dir / "result.json"
            fold_rows, fold_split, left_out = add_extra(rows, split, extra) if extra else (rows, split, 0)
            check_fold(fold_rows, fold_split)
            counts = {s: sum(1 for x in fold_split if x == s) for s in ("train", "validation", "test")}
            if args.rescore_tta:
                res = rescore_tta(cmd, fold_dir, recipe, k, args)
                if res is not None:
                    results[recipe.label][k] = res
                continue
            if (args.resume or args.collect) and result_file.is_file():
                results[recipe.label][k] = json.loads(result_file.read_text(encoding="utf-8"))
                print(
                    f"[{recipe.label} fold {k}] done before (--resume): {_fold_line(results[recipe.label][k])}",
                    flush=True,
                )
                continue
            if args.collect:
                continue  # only gather what is finished (e.g. recipes run as separate processes)
            manifest = write_manifest(fold_dir / "fold.csv", fold_rows, fold_split)
            groups = {s: len({r["group"] for r, x in zip(fold_rows, fold_split) if x == s}) for s in counts}
            print(
                f"[{recipe.label} fold {k}] " + ", ".join(f"{s} {counts[s]} ({groups[s]} micrographs)" for s in counts),
                flush=True,
            )
            if args.dry_run:
                continue
            run_dir = fold_dir / "run"
            load_before = load_average()
            if args.reuse_runs:
                old_run = args.reuse_runs / recipe.label / f"fold{k}" / "run"
                wall, argv = reuse_fold(cmd, old_run, run_dir, args)
            else:
                wall, argv = train_fold(cmd, manifest, run_dir, recipe, args)
            scored = score_run(run_dir, args.models)
            res = {
                "recipe": recipe.label,
                "fold": k,
                "tta": run_tta(scored),  # whether the evaluations scored used test-time augmentation
                "command": shlex.join(argv),
                "reused": (
                    {"from": str(args.reuse_runs), "retrained": args.retrain, "set_config": args.set_config}
                    if args.reuse_runs
                    else None
                ),
                "wall_s": wall,
                "counts": counts,
                "groups": groups,
                "extra_train": {"added": len(fold_rows) - len(rows), "left_out": left_out} if extra else None,
                "machine": {
                    "cpu_flags": cpu_flags(),
                    "load_before": load_before,
                    "load_after": load_average(),
                    "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
                    "nice": os.nice(0),
                },
                "scores": scored,
            }
            atomic_write_text(result_file, json.dumps(res, indent=2))
            if not args.keep_runs:
                shutil.rmtree(run_dir, ignore_errors=True)
            results[recipe.label][k] = res
            print(f"[{recipe.label} fold {k}] {_fold_line(res)}", flush=True)
            write_results(args, csv_path, rows, recipes, results)
    if args.dry_run:
        return 0
    agg, out = write_results(args, csv_path, rows, recipes, results)
    print(format_table(agg), flush=True)
    print(f"results -> {out}")
    return 0


def rescore_tta(cmd: list[str], fold_dir: Path, recipe: Recipe, k: int, args) -> dict | None:
    """`virion evaluate RUN --tta` on one fold's kept run, scored: the fold's result with TTA scores
    (written as result-tta.json), or None when the fold has no finished result or no kept run."""
    from virion.atomic import atomic_write_text

    tag = f"[{recipe.label} fold {k}]"
    result_file, tta_file, run_dir = fold_dir / "result.json", fold_dir / "result-tta.json", fold_dir / "run"
    if args.resume and tta_file.is_file():
        res = json.loads(tta_file.read_text(encoding="utf-8"))
        print(f"{tag} re-scored before (--resume): {_fold_line(res)}", flush=True)
        return res
    if not result_file.is_file():
        print(f"{tag} not finished: nothing to re-score", flush=True)
        return None
    if not (run_dir / "config.json").is_file():
        print(f"{tag} no kept run in {run_dir} (train with --keep-runs): not re-scored", flush=True)
        return None
    argv = cmd + ["evaluate", str(run_dir), "--tta", "--no-report"]
    log = fold_dir / "evaluate-tta.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.src), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        fh.write(shlex.join(argv) + "\n")
        fh.flush()
        proc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        raise BenchError(
            f"`virion evaluate --tta` failed (exit {proc.returncode}) for {run_dir}; log {log}: " + " | ".join(tail)
        )
    # --tta goes to evaluation-tta/ unless the run was trained with --eval-tta (then evaluation/ is TTA already)
    own = json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("eval_tta", False)
    evaluation = "evaluation" if own else "evaluation-tta"
    scored = score_run(run_dir, args.models, evaluation=evaluation)
    res = {
        **json.loads(result_file.read_text(encoding="utf-8")),
        "tta": run_tta(scored),
        "scores": scored,
        "rescored": {"command": shlex.join(argv), "wall_s": wall, "evaluation": evaluation},
    }
    atomic_write_text(tta_file, json.dumps(res, indent=2))
    print(f"{tag} re-scored with TTA: {_fold_line(res)}", flush=True)
    return res


def write_results(args, csv_path: Path, rows: list[dict], recipes: list[Recipe], results: dict) -> tuple[dict, Path]:
    """Aggregate and write the JSON (after every fold too, so a cut-off run leaves its folds)."""
    from virion.atomic import atomic_write_text

    done = {r: f for r, f in results.items() if f}
    agg = aggregate(done, args.baseline_model)
    out = args.out or RESULTS_DIR / f"bench_real_{args.tag}{'_tta' if args.rescore_tta else ''}.json"
    payload = {
        "data": str(csv_path),
        "n_images": len(rows),
        "folds": args.folds,
        "seed": args.seed,
        "models": args.models,
        "epochs_override": args.epochs,
        "input_size_override": args.input_size,
        "extra": args.extra,
        "limit": args.limit,
        "extra_train": str(args.extra_train) if args.extra_train else None,
        "baseline_model": args.baseline_model,
        "src": str(args.src) if args.src else None,
        "recipes": {r.label: list(r.args) for r in recipes},
        "tta_rescored": bool(args.rescore_tta),  # scores of `virion evaluate RUN --tta` on kept runs
        "per_fold": {r: {str(k): v for k, v in sorted(f.items())} for r, f in done.items()},
        **agg,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(payload, indent=2))
    return agg, out


def cpu_flags() -> list[str]:
    """The CPU features that decide oneDNN's kernels (what every speed figure must state)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    words = set(text.split())
    return [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in words]


def load_average() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text(encoding="utf-8").split()[:3]]
    except (OSError, ValueError):
        return []


def _fold_line(res: dict) -> str:
    parts = [
        f"{m}: acc {s['accuracy']:.3f} F1 {s['macro_f1']:.3f} bal {s['balanced_accuracy']:.3f}"
        for m, s in res["scores"].items()
    ]
    return "; ".join(parts) + f" ({res['wall_s']:.0f} s)"


if __name__ == "__main__":
    sys.exit(main())

"""How real does the synthetic data look to a network? Train on synthetic only, test on real crops.

Generates a `virion synth` dataset (train/validation only), writes a manifest whose test split is
every real crop of a path,label,micrograph CSV (e.g. ../shared/real_tem_dev/micrographs.csv; the
class names are the same 14), trains with the real `virion train` CLI and scores the real crops:
accuracy, macro-F1, balanced accuracy (chance about 7%). Run it before and after a generator
change (`--src` points at a source snapshot, e.g. `git archive HEAD src`, for the "before").

    nice -n 19 .venv/bin/python benchmarks/bench_synth_to_real.py ../shared/real_tem_dev/micrographs.csv \
        --per-class 80 --input-size 64 --epochs 12 --tag after
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_real  # the fold runner and scorer are shared

ROOT = bench_real.ROOT


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="real path,label,micrograph CSV (the test set)")
    p.add_argument("--per-class", type=int, default=80, help="synthetic images per class (80%% train, 20%% validation)")
    p.add_argument("--difficulty", type=float, default=1.0)
    p.add_argument("--synth-seed", type=int, default=0)
    p.add_argument("--models", nargs="+", default=["resnet50"])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extra", action="append", default=[], metavar="OPTION", help="more `virion train` options")
    p.add_argument("--src", type=Path, help="run `virion` (generator and training) from this source folder")
    p.add_argument("--workdir", type=Path, help="default /tmp/virion-synth-to-real/<tag>")
    p.add_argument("--tag", default="latest")
    p.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/synth_to_real_<tag>.json)")
    args = p.parse_args(argv)
    args.extra = [x for e in args.extra for x in shlex.split(e)]
    args.workdir = args.workdir or Path("/tmp/virion-synth-to-real") / args.tag
    sys.path.insert(0, str(ROOT / "src"))
    try:
        _, real = bench_real.read_groups(args.data)
    except bench_real.BenchError as exc:
        print(f"bench_synth_to_real: {exc}", file=sys.stderr)
        return 2
    cmd = bench_real.virion_command()
    env = {**os.environ}
    if args.src:
        env["PYTHONPATH"] = str(args.src)
    synth_dir = args.workdir / "synth"
    args.workdir.mkdir(parents=True, exist_ok=True)
    gen = cmd + [
        "synth",
        "--out",
        str(synth_dir),
        "--per-class",
        str(args.per_class),
        "--seed",
        str(args.synth_seed),
        "--difficulty",
        str(args.difficulty),
        "--quiet",
        "--overwrite",
    ]
    subprocess.run(gen, check=True, env=env)
    rows = []
    for split in ("train", "validation", "test"):
        for f in sorted((synth_dir / split).glob("*/*.png")):
            # `virion synth` always writes a 60/20/20 split; its test images train here (80/20)
            rows.append(
                {
                    "path": str(f),
                    "label": f.parent.name,
                    "group": "synth",
                    "split": "train" if split == "test" else split,
                }
            )
    for r in real:
        rows.append({**r, "split": "test"})
    manifest = bench_real.write_manifest(args.workdir / "synth_to_real.csv", rows, [r["split"] for r in rows])
    run_dir = args.workdir / "run"
    train_args = argparse.Namespace(
        models=args.models,
        seed=args.seed,
        epochs=args.epochs,
        input_size=args.input_size,
        extra=args.extra,
        src=args.src,
    )
    wall, argv_used = bench_real.train_fold(cmd, manifest, run_dir, bench_real.Recipe("synth", ()), train_args)
    scores = bench_real.score_run(run_dir, args.models)
    result = {
        "real_data": str(args.data),
        "synth": {
            "per_class": args.per_class,
            "difficulty": args.difficulty,
            "seed": args.synth_seed,
            "src": str(args.src or ROOT / "src"),
        },
        "command": shlex.join(argv_used),
        "wall_s": wall,
        "n_real_test": len(real),
        "scores": scores,
    }
    out = args.out or ROOT / "benchmarks" / "results" / f"synth_to_real_{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    for model, s in scores.items():
        print(
            f"{model}: real accuracy {s['accuracy']:.3f}, macro-F1 {s['macro_f1']:.3f}, "
            f"balanced accuracy {s['balanced_accuracy']:.3f} ({wall:.0f} s) -> {out}"
        )
    shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

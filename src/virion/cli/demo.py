"""`virion demo`: the main job end to end on the built-in synthetic TEM data.

Generate the synthetic dataset, train the three models, evaluate, compare, write the HTML
report and print where it is. The default preset is reduced so that it finishes in under
10 minutes on a 2-core CPU; `--full` runs the reference settings.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from virion.errors import VirionError


@dataclass(frozen=True)
class DemoPreset:
    """How much work the demo does; `reference` says whether these are the paper's settings."""

    per_class: int  # synthetic images per class, all splits together
    image_size: int  # size of the synthetic images written to disk
    input_size: int  # model input size
    epochs: int
    batch_size: int
    difficulty: float
    description: str


PRESETS = {
    # The smallest run of the real path, for the end-to-end test. Xception needs >= 71 px.
    "tiny": DemoPreset(per_class=5, image_size=96, input_size=72, epochs=1, batch_size=16,
                       difficulty=0.5, description="tiny smoke run (checks the path, learns nothing)"),
    "reduced": DemoPreset(per_class=60, image_size=128, input_size=72, epochs=8, batch_size=32,
                          difficulty=0.5, description="reduced demo: 60 images per class, 72x72 input, "
                          "8 epochs, batch 32 (finishes in under 10 minutes on 2 CPU cores)"),
    "full": DemoPreset(per_class=400, image_size=256, input_size=128, epochs=20, batch_size=64,
                       difficulty=1.0, description="reference settings: 128x128 input, batch 64, "
                       "20 epochs, Adam lr 0.001, 400 synthetic images per class"),
}
TRANSFER_MODELS = ("xception", "densenet121")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="generate synthetic TEM data, train all three models, evaluate and report",
        description="Run the whole pipeline on the built-in synthetic TEM virus dataset: generate it, "
        "train ResNet-50 (from scratch), Xception and DenseNet121, evaluate, compare and write "
        "report.html. The default is a reduced run (under 10 minutes on 2 CPU cores).")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true",
                      help="run the reference settings (128x128, batch 64, 20 epochs; hours on a CPU)")
    size.add_argument("--preset", choices=sorted(PRESETS), default=None,
                      help="size of the run: tiny (smoke test), reduced (default) or full")
    parser.add_argument("--out", default="virion-demo",
                        help="folder for the synthetic data and the runs (default: ./virion-demo)")
    parser.add_argument("--weights", default="auto",
                        help="transfer-model weights: auto (ImageNet if it can be had, else none), "
                        "imagenet, none, or a path to a weights file")
    parser.add_argument("--seed", type=int, default=0, help="seed for the data and the training (default 0)")
    parser.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                        help="models to train (default: resnet50 xception densenet121)")
    parser.set_defaults(func=run)


def choose_weights(requested: str, models: list[str]) -> tuple[str, str]:
    """Pick the transfer-model weights; returns (weights, a sentence saying what was chosen and why)."""
    transfer = [m for m in models if m in TRANSFER_MODELS]
    if requested == "none":
        return "none", ("Xception and DenseNet121 are trained from RANDOM INITIALIZATION with the whole "
                        "network unfrozen (--weights none, as requested)")
    if requested != "auto":
        return requested, f"transfer-model weights: {requested} (as requested)"
    if not transfer:
        return "none", "no transfer model in this demo"
    from virion.models.weights import imagenet_available, resolve_weights

    missing = [m for m in transfer if not imagenet_available(m)]
    try:
        for arch in missing:  # try the real Keras download once; offline this fails fast
            resolve_weights(arch, "imagenet")
    except VirionError:
        return "none", ("ImageNet weights could not be downloaded (no network?), so Xception and "
                        "DenseNet121 are trained from RANDOM INITIALIZATION with the whole network "
                        "unfrozen (--weights none); with ImageNet weights they would do better")
    return "imagenet", "transfer-model weights: ImageNet (frozen base)"


def synthetic_data(out: Path, preset_name: str, preset: DemoPreset, seed: int) -> Path:
    """Generate the demo data once; later demos with the same preset and seed reuse it."""
    from virion.data.synth import generate_dataset

    folder = out / f"synthetic-{preset_name}-seed{seed}"
    marker = folder / "demo-complete.json"
    params = {"per_class": preset.per_class, "size": preset.image_size, "seed": seed,
              "difficulty": preset.difficulty, "format": "tif", "bit_depth": 16}
    if marker.is_file() and json.loads(marker.read_text()) == params:
        print(f"Using the synthetic TEM dataset generated earlier in {folder}", flush=True)
        return folder
    print(f"Generating the built-in SYNTHETIC TEM virus dataset (14 classes, {preset.per_class} "
          f"images per class, 16-bit TIFF) in {folder}", flush=True)
    generate_dataset(folder, per_class=preset.per_class, seed=seed, size=preset.image_size, fmt="tif",
                     bit_depth=16, difficulty=preset.difficulty, overwrite=True)
    marker.write_text(json.dumps(params))
    return folder


def new_run_dir(out: Path, preset_name: str) -> Path:
    """A fresh run folder per demo, so a demo never overwrites an earlier demo's results."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = out / "runs" / f"demo-{preset_name}-{stamp}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = out / "runs" / f"demo-{preset_name}-{stamp}-{suffix}"
    return run_dir


def run(args: argparse.Namespace) -> int:
    from virion.models.registry import MODEL_NAMES
    from virion.training.config import TrainConfig
    from virion.training.trainer import train_run

    preset_name = "full" if args.full else (args.preset or "reduced")
    preset = PRESETS[preset_name]
    models = list(args.models or MODEL_NAMES)
    for name in models:
        if name not in MODEL_NAMES:
            raise VirionError(f"--models: unknown model '{name}'; choose from {', '.join(MODEL_NAMES)}")
    out = Path(args.out)
    started = time.monotonic()
    print(f"virion demo: {preset.description}", flush=True)
    if preset_name != "full":
        print("  (a reduced run: fewer and smaller images, fewer epochs than the reference; "
              "`virion demo --full` runs the reference settings)", flush=True)

    data = synthetic_data(out, preset_name, preset, args.seed)
    weights, weights_note = choose_weights(args.weights, models)
    print(f"  {weights_note}", flush=True)

    run_dir = new_run_dir(out, preset_name)
    config = TrainConfig(data=str(data), models=models, out=str(run_dir), input_size=preset.input_size,
                         batch_size=preset.batch_size, epochs=preset.epochs, seed=args.seed,
                         weights=weights)
    result = train_run(config)

    print("", flush=True)
    print(f"virion demo finished in {time.monotonic() - started:.0f} s ({preset.description})", flush=True)
    for line in _test_accuracy_lines(run_dir, models):
        print(f"  {line}", flush=True)
    print(f"  {weights_note}", flush=True)
    report = run_dir / "report.html"
    print(f"Report: {report.resolve() if report.exists() else '(not written; see the warnings above)'}",
          flush=True)
    print(f"Run folder (models, metrics, plots): {result.run_dir}", flush=True)
    return 0


def _test_accuracy_lines(run_dir: Path, models: list[str]) -> list[str]:
    """One line per model with its test accuracy and macro-F1, read from the evaluation summary."""
    lines = []
    chance = 1 / 14
    for name in models:
        summary = run_dir / name / "evaluation" / "summary.json"
        if not summary.is_file():
            lines.append(f"{name}: no test evaluation found")
            continue
        values = json.loads(summary.read_text())
        acc, f1 = values.get("accuracy"), values.get("macro_f1")
        acc_text = "n/a" if acc is None else f"{acc:.3f}"
        f1_text = "n/a" if f1 is None else f"{f1:.3f}"
        lines.append(f"{name}: test accuracy {acc_text}, macro-F1 {f1_text} (chance {chance:.3f})")
    return lines

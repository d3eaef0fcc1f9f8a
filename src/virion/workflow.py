"""train -> evaluate -> compare -> report, as plain function calls (what `virion train`, `virion
evaluate` and `virion demo` run, and what a notebook calls).

No importlib, no swallowed errors: if evaluation fails after training, the error says that the
trained models are saved and how to evaluate them again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from virion.errors import VirionError
from virion.run import layout, store


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, flush=True)


# ------------------------------------------------------------------------------- train
def train(
    config=None,
    *,
    resume: bool = False,
    evaluate_after: bool = True,
    progress: bool = True,
    extra_callbacks: Sequence = (),
    **settings,
):
    """Train every model of `config` into `config.out`, then evaluate, compare and report.

    config: a TrainConfig, or None and the settings as keywords (`train(data="tem/", out="runs/a",
    models=["resnet50"], epochs=5)`; keywords also override a given config). Returns the trainer's
    RunResult (.run_dir, .models, .class_names). resume: continue the run folder `config.out`.
    A model whose training fails (NaN loss) does not stop the others; the run is evaluated and
    reported with it shown as failed, then `TrainingFailed` (with `.result`) is raised.
    """
    from virion.training.config import TrainConfig
    from virion.training.trainer import TrainingFailed, train_run

    if config is None:
        config = TrainConfig.from_dict(settings, source="virion.train")
    elif settings:
        config = config.merged(settings, source="virion.train")

    try:
        result = train_run(config, resume=resume, extra_callbacks=extra_callbacks, progress=progress)
    except TrainingFailed as failed:
        # The models that did train are still evaluated and reported (the failed ones shown as failed);
        # then the failure goes on, so `virion train` exits non-zero.
        if evaluate_after and _is_writer():
            try:
                finish_run(failed.result.run_dir, progress=progress)
            except VirionError as exc:
                _say(progress, f"warning: {exc}")
        raise
    if _is_writer():  # multi-machine runs: process 0 writes the run folder, evaluates and reports
        from virion.micrograph.detector_files import keep_detector
        from virion.micrograph.sizes import keep_class_sizes

        keep_class_sizes(config.data, result.run_dir)  # `virion scan`'s size prior travels with the run
        keep_detector(config.data, result.run_dir)  # ... and its learned detector
        if evaluate_after:
            finish_run(result.run_dir, progress=progress)
    return result


def _is_writer() -> bool:
    from virion.training.distribute import is_writer

    return is_writer()


def finish_run(run_dir: str | Path, *, progress: bool = True) -> dict[str, dict] | None:
    """Evaluate a freshly trained run on its test split, compare its models, write report.html.

    A dataset without a test split gets its report without evaluation (and says so); so does a
    run whose every model failed in training.
    """
    from virion.run.splits import open_dataset

    run_dir = Path(run_dir)
    results = None
    try:
        test = open_dataset(store.read_config(run_dir)).splits.get("test")
        if len(store.failed_models(run_dir)) == len(layout.model_dirs(run_dir)):
            _say(progress, "no model trained successfully: nothing to evaluate")
        elif test is not None and len(test.files):
            recommend(run_dir, progress=progress)  # on the validation split, never the test split
            results = evaluate(run_dir, progress=progress, with_report=False)
        else:
            recommend(run_dir, progress=progress)
            _say(progress, "the dataset has no test split: models not evaluated")
    except VirionError as exc:
        raise VirionError(
            f"{exc} (the trained models are saved in {run_dir}; after fixing this, run `virion evaluate {run_dir}`)"
        ) from None
    path = report(run_dir)
    _say(progress, f"report: {path}")
    return results


# ------------------------------------------------------------------------------- evaluate, compare, report
def recommend(run_dir: str | Path, *, progress: bool = True) -> dict:
    """Choose the run's recommended classifier on its validation split (RUN/recommended.json)."""
    from virion.evaluation.ensemble import recommend as choose_on_validation

    return choose_on_validation(Path(run_dir), progress=progress)


def evaluate(
    run_dir: str | Path,
    data: str | Path | None = None,
    *,
    tta: bool | None = None,
    batch_size: int | None = None,
    with_report: bool = True,
    progress: bool = True,
) -> dict[str, dict]:
    """Evaluate every model of a run; data=None: the run's own test split, else another dataset folder.

    Other data goes to `<model>/evaluation-<data>/`, `comparison-<data>.*` and `report-<data>.html`;
    the run's own evaluation is never replaced. tta: 8-way test-time augmentation (None: the run's
    own `eval_tta`); the other setting goes to `...-tta` (`...-no-tta`) beside the run's own.
    with_report: also write the comparison and report. Returns {model: summary}.
    """
    from virion.evaluation.evaluate import evaluate_run

    run_dir = Path(run_dir)
    results = evaluate_run(run_dir, data, tta=tta, batch_size=batch_size, progress=progress)
    if with_report:  # the report refreshes the comparison too
        report(run_dir, data_name=data_name_of(results), variant=variant_of(results))
    return results


def variant_of(results: dict[str, dict]) -> str | None:
    """The TTA side-folder suffix the summaries were written under (None: the run's own TTA setting)."""
    for summary in results.values():
        if not summary.get("tta_is_run_setting", True):
            return layout.TTA_VARIANT if summary.get("tta") else layout.NO_TTA_VARIANT
    return None


def data_name_of(results: dict[str, dict]) -> str | None:
    """The other-data name the summaries were written under (None for the run's own test split)."""
    for summary in results.values():
        if not summary.get("own_test_split", True):
            return layout.data_slug(summary.get("data_path") or summary.get("data") or "data")
    return None


def compare(run_dirs: Sequence[str | Path], out: str | Path | None = None, data_name: str | None = None) -> list[dict]:
    """The comparison table (comparison.md/.csv/.png) of the evaluated models of one or more runs."""
    from virion.reports.compare import compare_runs

    return compare_runs(
        [Path(r) for r in run_dirs], out_dir=Path(out) if out is not None else None, data_name=data_name
    )


def report(run_dir: str | Path, data_name: str | None = None, variant: str | None = None) -> Path:
    """Write the run's self-contained report.html (report-<data>.html for other data, report[-<data>]-tta.html
    for an evaluation with the other TTA setting)."""
    from virion.reports.html import write_report

    return write_report(Path(run_dir), data_name=data_name, variant=variant)


# ------------------------------------------------------------------------------- demo
@dataclass(frozen=True)
class DemoPreset:
    """How much work the demo does."""

    per_class: int  # synthetic images per class, all splits together
    image_size: int  # size of the synthetic images written to disk
    input_size: int  # model input size
    epochs: int
    batch_size: int
    difficulty: float
    description: str
    lr_schedule: str = "none"  # a TrainConfig.lr_schedule choice


PRESETS = {
    # The smallest run of the real path, for the end-to-end test. Xception needs >= 71 px.
    "tiny": DemoPreset(
        per_class=5,
        image_size=96,
        input_size=72,
        epochs=1,
        batch_size=16,
        difficulty=0.5,
        description="tiny smoke run (checks the path, learns nothing)",
    ),
    # Batch 16 with a cosine decay (more optimizer steps than batch 32 for the same compute; measured
    # better at two seeds, docs/benchmarks.md). 12 epochs, not 8, since an epoch stopped costing a
    # rebuild of the compiled step (TensorFlow's global seed was reset every epoch): at seed 0 on the
    # 2-core AVX-512/AMX CPU, `virion train` with these settings gave test accuracy ResNet-50 / Xception /
    # DenseNet121 0.726 / 0.679 / 0.780 with 12 epochs against 0.655 / 0.673 / 0.744 with 8, and batch 8
    # (10 epochs) was worse (best validation accuracy 0.66 / 0.63 against 0.73 / 0.71). The demo's own
    # measurements (wall time, CPU flags, both seeds) are in docs/benchmarks.md.
    "reduced": DemoPreset(
        per_class=60,
        image_size=128,
        input_size=72,
        epochs=12,
        batch_size=16,
        difficulty=0.5,
        lr_schedule="cosine",
        description="reduced demo: 60 images per class, 72x72 input, 12 epochs, batch 16, cosine learning rate",
    ),
    "full": DemoPreset(
        per_class=400,
        image_size=256,
        input_size=128,
        epochs=20,
        batch_size=64,
        difficulty=1.0,
        description="reference settings: 128x128 input, batch 64, "
        "20 epochs, Adam lr 0.001, 400 synthetic images per class",
    ),
}


# The three reference networks, and the texture model (seconds to fit; the ensembles use it too).
DEMO_MODELS = ("resnet50", "xception", "densenet121", "texture")


def choose_weights(requested: str, models: list[str]) -> tuple[str, str]:
    """Pick the transfer-model weights; returns (weights, a sentence saying what was chosen and why)."""
    from virion.models.registry import model_info

    transfer = [m for m in models if model_info(m).kind == "transfer"]
    if requested == "none":
        return "none", (
            "Xception and DenseNet121 are trained from RANDOM INITIALIZATION with the whole "
            "network unfrozen (--weights none, as requested)"
        )
    if requested != "auto":
        return requested, f"transfer-model weights: {requested} (as requested)"
    if not transfer:
        return "none", "no transfer model in this demo"
    from virion.models.weights import imagenet_available, resolve_weights

    try:
        for arch in [m for m in transfer if not imagenet_available(m)]:  # offline this fails fast
            resolve_weights(arch, "imagenet")
    except VirionError:
        return "none", (
            "ImageNet weights could not be downloaded (no network?), so Xception and "
            "DenseNet121 are trained from RANDOM INITIALIZATION with the whole network "
            "unfrozen (--weights none); with ImageNet weights they would do better"
        )
    return "imagenet", "transfer-model weights: ImageNet (frozen base)"


def synthetic_data(out: Path, preset_name: str, preset: DemoPreset, seed: int) -> Path:
    """Generate the demo data once; later demos with the same preset and seed reuse it."""
    from virion.data.synth import generate_dataset

    folder = Path(out) / f"synthetic-{preset_name}-seed{seed}"
    marker = folder / "demo-complete.json"
    params = {
        "per_class": preset.per_class,
        "size": preset.image_size,
        "seed": seed,
        "difficulty": preset.difficulty,
        "format": "tif",
        "bit_depth": 16,
    }
    if marker.is_file() and json.loads(marker.read_text()) == params:
        print(f"Using the synthetic TEM dataset generated earlier in {folder}", flush=True)
        return folder
    print(
        f"Generating the built-in SYNTHETIC TEM virus dataset (14 classes, {preset.per_class} "
        f"images per class, 16-bit TIFF) in {folder}",
        flush=True,
    )
    generate_dataset(
        folder,
        per_class=preset.per_class,
        seed=seed,
        size=preset.image_size,
        fmt="tif",
        bit_depth=16,
        difficulty=preset.difficulty,
        overwrite=True,
        extra_own_files=(marker.name,),
    )
    store.write_json(marker, params)
    return folder


def new_run_dir(out: Path, preset_name: str) -> Path:
    """A fresh run folder per demo, so a demo never overwrites an earlier demo's results."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(out) / "runs" / f"demo-{preset_name}-{stamp}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = Path(out) / "runs" / f"demo-{preset_name}-{stamp}-{suffix}"
    return run_dir


def demo(
    preset: str = "reduced",
    *,
    out: str | Path = "virion-demo",
    weights: str = "auto",
    seed: int = 0,
    models: Sequence[str] | None = None,
):
    """The main job end to end on the built-in synthetic data: generate, train, evaluate, compare, report."""
    from virion.models.catalog import MODEL_NAMES
    from virion.training.config import TrainConfig

    if preset not in PRESETS:
        raise VirionError(f"--preset {preset}: choose one of {', '.join(PRESETS)}")
    chosen = PRESETS[preset]
    models = list(models or DEMO_MODELS)
    for name in models:
        if name not in MODEL_NAMES:
            raise VirionError(f"--models: unknown model '{name}'; choose from {', '.join(MODEL_NAMES)}")
    out = Path(out)
    started = time.monotonic()
    print(f"virion demo: {chosen.description}", flush=True)
    if preset != "full":
        print(
            "  (a reduced run: fewer and smaller images, fewer epochs than the reference; "
            "`virion demo --full` runs the reference settings)",
            flush=True,
        )
    data = synthetic_data(out, preset, chosen, seed)
    weights, weights_note = choose_weights(weights, models)
    print(f"  {weights_note}", flush=True)
    run_dir = new_run_dir(out, preset)
    config = TrainConfig(
        data=str(data),
        models=models,
        out=str(run_dir),
        input_size=chosen.input_size,
        batch_size=chosen.batch_size,
        epochs=chosen.epochs,
        lr_schedule=chosen.lr_schedule,
        seed=seed,
        weights=weights,
    )
    result = train(config)
    print("", flush=True)
    print(f"virion demo ({chosen.description}):", flush=True)
    for line in accuracy_lines(run_dir, models, len(result.class_names)):
        print(f"  {line}", flush=True)
    print(f"  {weights_note}", flush=True)
    path = layout.report_file(run_dir)
    print(f"Report: {path.resolve() if path.exists() else '(not written; see the warnings above)'}", flush=True)
    print(f"Run folder (models, metrics, plots): {result.run_dir}", flush=True)
    # The closing line says what THIS run measured, on this machine (never a figure from another one).
    print(f"virion demo finished in {time.monotonic() - started:.0f} s on {machine_line()}", flush=True)
    return result


# The instruction-set flags that decide how fast the CPU trains (oneDNN's AVX2 / AVX-512 / bf16 / AMX kernels).
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def cpu_flags(cpuinfo: str | None = None) -> list[str] | None:
    """SPEED_FLAGS this CPU has, from /proc/cpuinfo (or the given text); None where it cannot be read."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    present: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            present.update(value.split())
    return [flag for flag in SPEED_FLAGS if flag in present]


def machine_line(cpuinfo: str | None = None, environ: dict | None = None) -> str:
    """What this run ran on: CPU cores, the speed flags, and a oneDNN instruction-set cap if one is set."""
    import os

    environ = os.environ if environ is None else environ
    flags = cpu_flags(cpuinfo)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if flags is None:
        text = f"{cores} CPU cores, CPU flags unknown"
    else:
        text = f"{cores} CPU cores, CPU flags: {' '.join(flags) or 'none of ' + '/'.join(SPEED_FLAGS)}"
    if environ.get("ONEDNN_MAX_CPU_ISA"):
        text += f" (oneDNN kernels limited by ONEDNN_MAX_CPU_ISA={environ['ONEDNN_MAX_CPU_ISA']})"
    return text


def accuracy_lines(run_dir: Path, models: list[str], num_classes: int) -> list[str]:
    """One line per model with its test accuracy and macro-F1, read from the evaluation summary."""
    chance = 1 / max(num_classes, 1)
    lines = []
    failed = store.failed_models(run_dir)
    for name in models:
        summary = layout.evaluation_dir(Path(run_dir) / name) / layout.SUMMARY_FILE
        if name in failed:
            lines.append(f"{name}: FAILED in training ({failed[name]})")
        elif not summary.is_file():
            lines.append(f"{name}: no test evaluation found")
        else:
            lines.append(_score_line(name, summary, chance))
    for folder in layout.ensemble_dirs(run_dir):  # the ensembles evaluation wrote
        lines.append(_score_line(folder.name, layout.evaluation_dir(folder) / layout.SUMMARY_FILE, chance))
    recommended = store.read_recommended(run_dir)
    if recommended:
        lines.append(f"recommended classifier (chosen on the validation split): {recommended['classifier']}")
    return lines


def _score_line(name: str, summary: Path, chance: float) -> str:
    values = store.read_json(summary)
    acc, f1 = values.get("accuracy"), values.get("macro_f1")
    acc_text = "n/a" if acc is None else f"{acc:.3f}"
    f1_text = "n/a" if f1 is None else f"{f1:.3f}"
    tta = f", with {values.get('tta_views') or 8}-way TTA" if values.get("tta") else ""
    return f"{name}: test accuracy {acc_text}, macro-F1 {f1_text} (chance {chance:.3f}{tta})"

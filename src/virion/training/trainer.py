"""Train every requested model of a run: data once, then per model fit, checkpoint, resume, save.

`train_run(config)` is the library entry point behind `virion train`; a notebook can call it too.
Per model, the work is split in phases ("head", then optionally "fine_tune"); after every epoch
the model with its optimizer goes to `state/last.keras` and the progress to
`state/progress.json`, so `train_run(config, resume=True)` continues exactly after the last
finished epoch, and the history CSV continues with it.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np

from virion.errors import VirionError
from virion.training import callbacks as cb
from virion.training import run_folder as rf
from virion.training.config import TrainConfig
from virion.training.saving import load_model, save_model_files


@dataclass
class ModelResult:
    """What one trained model achieved (also in its metadata.json)."""

    name: str
    folder: Path
    best_epoch: int | None
    best_val_accuracy: float | None
    best_val_macro_f1: float | None
    epochs_run: int
    train_seconds: float
    images_per_second: float
    params: int
    files: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        acc = "n/a" if self.best_val_accuracy is None else f"{self.best_val_accuracy:.4f}"
        f1 = "n/a" if self.best_val_macro_f1 is None else f"{self.best_val_macro_f1:.4f}"
        return (f"{self.name}: best val accuracy {acc} (macro-F1 {f1}) at epoch {self.best_epoch}, "
                f"{self.epochs_run} epochs, {self.train_seconds:.1f} s, {self.images_per_second:.1f} images/s")


@dataclass
class RunResult:
    run_dir: Path
    models: dict[str, ModelResult]
    class_names: list[str]


@dataclass
class TrainData:
    """The decoded training and validation splits, shared by every model of a run."""

    class_names: list[str]
    train: Any  # virion.data.cache.SplitArrays
    validation: Any
    fingerprint: str
    dataset: Any = None  # virion.data.layout.Dataset

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ---------------------------------------------------------------------------- data
def prepare_data(config: TrainConfig, *, progress: bool = True) -> TrainData:
    """Find the images, print the summary, decode train + validation once (cached on disk)."""
    from virion.data.cache import load_split_arrays
    from virion.data.decode import DecodeSettings
    from virion.data.layout import load_dataset

    if not config.data:
        raise VirionError("no dataset given; pass --data DIR (a folder with one sub-folder per class)")
    dataset = load_dataset(config.data, classes=config.classes, exclude=tuple(config.exclude),
                           include_subfolders=config.include_subfolders, val_fraction=config.val_fraction,
                           test_fraction=config.test_fraction, seed=config.seed)
    if progress:
        print(dataset.summary(), flush=True)
    settings = DecodeSettings(size=config.input_size,
                              stretch=tuple(config.stretch) if config.stretch is not None else None)
    arrays = {}
    for split in ("train", "validation"):
        if split not in dataset.splits or len(dataset.splits[split].files) == 0:
            raise VirionError(f"{config.data}: the dataset has no {split} images; add some or change "
                              f"--val-fraction")
        arrays[split] = load_split_arrays(dataset.splits[split], settings, strict=config.strict,
                                          progress=progress)
        if len(arrays[split].labels) == 0:
            raise VirionError(f"{config.data}: no {split} image could be decoded; see skipped_files.txt")
    return TrainData(list(dataset.class_names), arrays["train"], arrays["validation"],
                     dataset.fingerprint(), dataset)


def _pipelines(config: TrainConfig, data: TrainData):
    from virion.data.pipeline import make_dataset

    train_ds = make_dataset(data.train, data.num_classes, config.batch_size, training=True,
                            augment=config.augment_config(), seed=config.seed)
    val_ds = make_dataset(data.validation, data.num_classes, config.batch_size, training=False)
    return train_ds, val_ds


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """sklearn's "balanced" weights; classes absent from training get weight 1."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    out = {c: 1.0 for c in range(num_classes)}
    out.update({int(c): float(w) for c, w in zip(present, weights)})
    return out


# ---------------------------------------------------------------------------- device settings
class _Precision:
    """Mixed precision and XLA per the config: on for a GPU, off on the CPU (XLA made it 2.3x slower)."""

    def __init__(self, config: TrainConfig):
        # "bfloat16" is an explicit choice for CPUs with AVX512_BF16/AMX (measured ~1.6x faster
        # ResNet-50 steps here with our fused batch norm); "auto" means float16 on a GPU only.
        self.policy = "mixed_bfloat16" if config.mixed_precision == "bfloat16" else "mixed_float16"
        self.mixed = config.mixed_precision == "bfloat16" or config.use_gpu_speedups(config.mixed_precision)
        self.jit = config.use_gpu_speedups(config.xla)
        self._previous = None

    def __enter__(self):
        if self.mixed:
            self._previous = keras.mixed_precision.global_policy().name
            keras.mixed_precision.set_global_policy(self.policy)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            keras.mixed_precision.set_global_policy(self._previous)


def _compile(model: keras.Model, lr: float, jit: bool) -> None:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss="categorical_crossentropy",
                  metrics=["accuracy"], jit_compile=bool(jit))


# ---------------------------------------------------------------------------- the run
def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The resolved config a run was started with (for --resume)."""
    path = Path(run_dir) / rf.CONFIG_FILE
    if not Path(run_dir).is_dir():
        raise VirionError(f"--resume {run_dir}: no such run folder; give the folder `virion train --out` made")
    config = TrainConfig.from_dict(rf.read_json(path), source=str(path))
    config.out = str(run_dir)
    return config


def train_run(config: TrainConfig, *, resume: bool = False,
              extra_callbacks: Sequence[keras.callbacks.Callback] = (), post_training: bool = True,
              progress: bool = True) -> RunResult:
    """Train each of `config.models` into the run folder `config.out`.

    resume: continue the run in `config.out` (finished models are skipped, an unfinished one
    continues after its last finished epoch). `extra_callbacks` run after ours (tests use one to
    simulate an interruption). KeyboardInterrupt propagates once the last epoch's state is saved.
    """
    if not config.out:
        raise VirionError("no run folder given; pass --out runs/NAME")
    verbose = 1 if progress else 0
    if resume:
        run_dir = Path(config.out)
        if not (run_dir / rf.CONFIG_FILE).is_file():
            raise VirionError(f"--resume {run_dir}: no config.json there; it is not a virion run folder")
    else:
        run_dir = Path(config.out)
        rf.check_run_dir(run_dir, overwrite=config.overwrite)  # refuse early, create only once data is OK

    data = prepare_data(config, progress=progress)
    if resume:
        recorded = rf.read_json(run_dir / rf.DATASET_FILE) if (run_dir / rf.DATASET_FILE).exists() else {}
        if recorded.get("fingerprint") not in (None, data.fingerprint) and progress:
            print(f"warning: the data in {config.data} changed since this run started (fingerprint differs)",
                  flush=True)
    failures = list(data.train.failures) + list(data.validation.failures)
    if resume:
        rf.write_dataset_info(run_dir, data.dataset, failures)
    if failures and progress:
        print(f"skipped {len(failures)} unreadable image(s); they are listed in {run_dir / rf.SKIPPED_FILE}",
              flush=True)

    from virion.models.registry import build_model

    results: dict[str, ModelResult] = {}
    with _Precision(config) as precision:
        # Build (and so fetch the weights of) every model that starts fresh BEFORE any training:
        # missing ImageNet weights must stop the run at once, not after an hour of ResNet-50.
        prebuilt: dict[str, keras.Model] = {}
        for name in config.models:
            folder = run_dir / name
            if _finished(folder) or cb.read_progress(folder / "state") is not None:
                continue
            keras.utils.set_random_seed(config.seed)
            prebuilt[name] = build_model(name, data.num_classes, config.input_size, config.weights)

        if not resume:
            run_dir = rf.create_run_dir(config.out, overwrite=config.overwrite)
            rf.write_config(run_dir, config)
            rf.write_dataset_info(run_dir, data.dataset, failures)
        train_ds, val_ds = _pipelines(config, data)
        for name in config.models:
            folder = rf.model_dir(run_dir, name)
            if _finished(folder):
                results[name] = _result_from_metadata(name, folder)
                if progress:
                    print(f"{name}: already trained in {folder}, skipped", flush=True)
                continue
            results[name] = train_model(name, config, data, folder, train_ds=train_ds, val_ds=val_ds,
                                        model=prebuilt.pop(name, None), jit=precision.jit,
                                        extra_callbacks=extra_callbacks, verbose=verbose)
            if progress:
                print(results[name].summary(), flush=True)

    if progress and len(results) > 1:
        print("summary:\n" + "\n".join("  " + r.summary() for r in results.values()), flush=True)
    if post_training:
        _post_training(run_dir)
    return RunResult(run_dir, results, data.class_names)


def _post_training(run_dir: Path) -> None:
    """Evaluate, compare and report; a failure here never loses the trained models."""
    steps = (("evaluation", "virion.evaluation.evaluate", "evaluate_run", lambda f: f(run_dir)),
             ("comparison", "virion.reports.compare", "compare_runs", lambda f: f([run_dir])),
             ("report", "virion.reports.html", "write_report", lambda f: f(run_dir)))
    import importlib

    for what, module_name, func_name, call in steps:
        try:
            func = getattr(importlib.import_module(module_name), func_name)
        except (ImportError, AttributeError):
            continue
        try:
            call(func)
        except Exception as exc:  # noqa: BLE001 - the models are saved; say what failed and go on
            print(f"warning: {what} failed ({type(exc).__name__}: {exc}); the trained models are saved, "
                  f"run `virion evaluate {run_dir}` to retry", flush=True)
            return


def _finished(folder: Path) -> bool:
    progress = cb.read_progress(folder / "state")
    return (folder / rf.METADATA_FILE).is_file() and bool(progress) and progress.get("phase") == "done"


def _result_from_metadata(name: str, folder: Path) -> ModelResult:
    meta = rf.read_json(folder / rf.METADATA_FILE)
    return ModelResult(name, folder, meta.get("best_epoch"), meta.get("best_val_accuracy"),
                       meta.get("best_val_macro_f1"), int(meta.get("epochs_run", 0)),
                       float(meta.get("train_seconds", 0.0)), float(meta.get("images_per_second", 0.0)),
                       int(meta.get("params", 0)), dict(meta.get("files", {})))


# ---------------------------------------------------------------------------- one model
def train_model(name: str, config: TrainConfig, data: TrainData, folder: Path, *, train_ds=None,
                val_ds=None, model: keras.Model | None = None, jit: bool = False,
                extra_callbacks: Sequence[keras.callbacks.Callback] = (), verbose: int = 1) -> ModelResult:
    """Train one model into `folder` (resuming from `folder/state` when progress is recorded)."""
    from virion.models.registry import build_model, model_file_stem, model_info

    info = model_info(name, config.weights)
    state = folder / "state"
    progress = cb.read_progress(state) or {}
    phase = progress.get("phase", "head")
    done = int(progress.get("epochs_done", 0))
    if train_ds is None or val_ds is None:
        train_ds, val_ds = _pipelines(config, data)
    n_train = len(data.train.labels)
    timer = cb.EpochTimer(progress.get("train_seconds", 0.0), progress.get("train_images", 0), n_train)
    weights = class_weights(data.train.labels, data.num_classes) if config.class_weight == "balanced" else None
    fine_tune = int(config.fine_tune_epochs) if info.base_frozen else 0
    use_cache = config.feature_cache is not None and info.base_frozen
    keras.utils.set_random_seed(config.seed + done)  # a resumed run does not replay epoch 0's randomness

    if model is None:
        keras.utils.set_random_seed(config.seed)
        model = build_model(name, data.num_classes, config.input_size, config.weights)
        keras.utils.set_random_seed(config.seed + done)
    head_epochs = int(progress.get("head_epochs", config.epochs)) if phase != "head" else config.epochs
    common = dict(val_y=data.validation.labels, checkpoint_metric=config.checkpoint_metric, timer=timer,
                  early_stopping=config.early_stopping, lr_schedule=config.lr_schedule,
                  tensorboard=config.tensorboard, batch_size=config.batch_size)

    try:
        if phase == "head":
            if use_cache:
                from virion.training.feature_cache import train_head_on_features

                head_epochs = train_head_on_features(
                    model, config, data, folder, progress=progress, common=common, jit=jit,
                    class_weight=weights, extra_callbacks=extra_callbacks, verbose=verbose)
            else:
                if progress:
                    model = load_model(state / cb.LAST_MODEL)
                else:
                    _compile(model, config.learning_rate, jit)
                callbacks, _ = cb.make_callbacks(
                    folder, phase="head", val_x=val_ds, progress=progress, base_lr=config.learning_rate,
                    first_epoch=0, total_epochs=config.epochs, **common)
                history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, initial_epoch=done,
                                    callbacks=callbacks + list(extra_callbacks), class_weight=weights, shuffle=False,
                                    verbose=verbose)
                head_epochs = done + len(history.epoch)
            progress = cb.read_progress(state) or {}
            phase, done = "fine_tune", head_epochs
            if fine_tune and (state / cb.BEST_WEIGHTS).exists():
                _load_best(model, state / cb.BEST_WEIGHTS)  # fine-tune from the best head
            progress = {**progress, "phase": "fine_tune", "head_epochs": head_epochs, "epochs_done": head_epochs}
            rf.write_json(state / cb.PROGRESS_FILE, progress)
            fresh_fine_tune = True
        else:
            fresh_fine_tune = False

        if fine_tune and done < head_epochs + fine_tune:
            from virion.models.transfer import unfreeze_top

            if fresh_fine_tune:
                if isinstance(config.unfreeze, str):
                    unfreeze_top(model, from_layer=config.unfreeze)
                else:
                    unfreeze_top(model, fraction=float(config.unfreeze))
                _compile(model, config.fine_tune_lr, jit)
            else:
                model = load_model(state / cb.LAST_MODEL)
            total = head_epochs + fine_tune
            callbacks, _ = cb.make_callbacks(
                folder, phase="fine_tune", val_x=val_ds, progress=progress, base_lr=config.fine_tune_lr,
                first_epoch=head_epochs, total_epochs=total, extra_state={"head_epochs": head_epochs}, **common)
            history = model.fit(train_ds, validation_data=val_ds, epochs=total, initial_epoch=done,
                                callbacks=callbacks + list(extra_callbacks), class_weight=weights, verbose=verbose)
            done += len(history.epoch)
        else:
            done = max(done, head_epochs)
    except KeyboardInterrupt:
        raise  # state of the last finished epoch is on disk; the CLI prints the resume hint

    return _finish(name, config, data, folder, model, info, model_file_stem(name), done, timer, jit)


def _finish(name, config, data, folder, model, info, stem, epochs_run, timer, jit) -> ModelResult:
    """Restore the best epoch, write the model files (.keras first) and metadata.json."""
    state = folder / "state"
    progress = cb.read_progress(state) or {}
    if (state / cb.BEST_WEIGHTS).exists():
        _load_best(model, state / cb.BEST_WEIGHTS)
    if not model.compiled:
        _compile(model, config.learning_rate, jit)
    files = save_model_files(model, folder, stem)
    best_logs = progress.get("best_logs") or {}
    from virion.models.transfer import base_is_frozen

    frozen = base_is_frozen(model) if info.kind == "transfer" else False
    result = ModelResult(
        name=name, folder=folder, best_epoch=progress.get("best_epoch"),
        best_val_accuracy=best_logs.get("val_accuracy"), best_val_macro_f1=best_logs.get("val_macro_f1"),
        epochs_run=int(epochs_run), train_seconds=float(progress.get("train_seconds", timer.train_seconds)),
        images_per_second=_rate(progress, timer), params=int(model.count_params()),
        files={kind: path.name for kind, path in files.items()} | {"history": "history.csv"})
    rf.write_metadata(
        folder, class_names=data.class_names, input_size=config.input_size, scaling=info.scaling,
        weights=str(config.weights) if info.kind == "transfer" else "none",
        base_frozen=frozen if info.kind == "transfer" else None,
        trained_from_scratch=info.kind == "scratch" or not info.base_frozen,
        fine_tuned=bool(config.fine_tune_epochs) and info.base_frozen,
        feature_cache=config.feature_cache if info.base_frozen else None,
        config=config.to_dict(), data_fingerprint=data.fingerprint, best_epoch=result.best_epoch,
        best_val_accuracy=result.best_val_accuracy, best_val_macro_f1=result.best_val_macro_f1,
        checkpoint_metric=config.checkpoint_metric, train_seconds=result.train_seconds,
        images_per_second=result.images_per_second, params=result.params, epochs_run=result.epochs_run,
        files=result.files, model=name, display_name=info.display_name, kind=info.kind,
        last_conv_layer=info.last_conv_layer)
    # The model files are written; the bulky resume files are not needed any more.
    for leftover in (cb.LAST_MODEL, cb.BEST_WEIGHTS):
        (state / leftover).unlink(missing_ok=True)
    rf.write_json(state / cb.PROGRESS_FILE, {**progress, "phase": "done", "epochs_done": int(epochs_run)})
    return result


def _load_best(model: keras.Model, path: Path) -> None:
    """Best-epoch weights; the optimizer part may be absent (head trained on cached features)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model.load_weights(path)


def _rate(progress: dict, timer: cb.EpochTimer) -> float:
    seconds = float(progress.get("train_seconds", timer.train_seconds))
    images = float(progress.get("train_images", timer.train_images))
    return images / seconds if seconds > 0 and math.isfinite(seconds) else 0.0

"""Train every requested model of a run: data once, then per model fit, checkpoint, resume, save.

`train_run(config)` is the library entry point behind `virion train`; a notebook can call it too.
Per model, a head stage, then (transfer models with fine-tune epochs) a fine-tune stage, then the
end (final files, metadata, "done"). Every epoch ends in one commit (`virion.training.progress`):
the resume files first, then `state/progress.json` by atomic rename, then history.csv derived from
it. So `train_run(config, resume=True)` after a kill at any instant continues after the last
committed epoch, with each finished epoch in history.csv exactly once, and never trains a finished
model again.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from virion.errors import VirionError
from virion.models.catalog import CLASSICAL_MODELS
from virion.run import layout, store
from virion.training import callbacks as cb
from virion.training.config import TrainConfig
from virion.training.faults import crash_point
from virion.training.loop import epoch_seed, fit_by_epoch
from virion.training.progress import (
    Progress,
    adopt_history,
    clean_model_folder,
    commit,
    read_progress,
    remove_temp_files,
)
from virion.training.saving import load_state_model, save_model_files


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
    status: str = "trained"  # or "failed" (the loss became NaN; no model file)
    failure: str | None = None

    def summary(self) -> str:
        if self.status == "failed":
            return f"{self.name}: FAILED, {self.failure}"
        acc = "n/a" if self.best_val_accuracy is None else f"{self.best_val_accuracy:.4f}"
        f1 = "n/a" if self.best_val_macro_f1 is None else f"{self.best_val_macro_f1:.4f}"
        at = f" at epoch {self.best_epoch}" if self.best_epoch is not None else ""
        return (
            f"{self.name}: best val accuracy {acc} (macro-F1 {f1}){at}, "
            f"{self.epochs_run} epochs, {self.train_seconds:.1f} s, {self.images_per_second:.1f} images/s"
        )


@dataclass
class RunResult:
    run_dir: Path
    models: dict[str, ModelResult]
    class_names: list[str]

    @property
    def failed(self) -> list[str]:
        return [name for name, result in self.models.items() if result.status == "failed"]


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
    from virion.run.splits import decode_settings, open_dataset

    values = config.to_dict()
    dataset = open_dataset(values)  # the same options evaluation uses to rebuild the test split
    if progress:
        print(dataset.summary(), flush=True)
    from virion.models.catalog import FIXED_INPUT_SIZE

    # Only models with their own fixed size (texture): decode at that size, which they then reuse.
    fixed = {FIXED_INPUT_SIZE.get(m) for m in config.models}
    settings = decode_settings(values, fixed.pop() if len(fixed) == 1 and None not in fixed else None)
    arrays = {}
    for split in ("train", "validation"):
        if split not in dataset.splits or len(dataset.splits[split].files) == 0:
            raise VirionError(f"{config.data}: the dataset has no {split} images; add some or change --val-fraction")
        arrays[split] = load_split_arrays(dataset.splits[split], settings, strict=config.strict, progress=progress)
        if len(arrays[split].labels) == 0:
            raise VirionError(f"{config.data}: no {split} image could be decoded; see skipped_files.txt")
    return TrainData(list(dataset.class_names), arrays["train"], arrays["validation"], dataset.fingerprint(), dataset)


def _train_dataset(config: TrainConfig, data: TrainData, epoch: int):
    """The shuffled, augmented batches of one epoch (the same for epoch k whether or not the run stopped)."""
    if keras.backend.backend() != "tensorflow":  # JAX: the NumPy pipeline, order and noise from (seed, epoch)
        from virion.data.numpy_pipeline import NumpyBatches

        return NumpyBatches(
            data.train,
            data.num_classes,
            config.batch_size,
            training=True,
            augment=config.augment_config(),
            mix=config.mix_config(),
            seed=config.seed,
            first_epoch=epoch,
        )
    from virion.data.pipeline import make_dataset

    # tf.data combines TensorFlow's global seed with this op seed; `fit_by_epoch` sets the global
    # seed once per stage (setting it here, every epoch, made every tf.function trace again).
    seed = epoch_seed(config.seed, epoch)
    return make_dataset(
        data.train,
        data.num_classes,
        config.batch_size,
        training=True,
        augment=config.augment_config(),
        mix=config.mix_config(),
        seed=seed,
    )


def class_weights(labels: np.ndarray, num_classes: int, power: float = 1.0) -> dict[int, float]:
    """sklearn's "balanced" weights (power 1), or their square root (power 0.5: `--class-weight sqrt`,
    rescaled so the mean weight per training image stays 1); classes absent from training get weight 1."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels) ** power
    if power != 1.0:
        counts = np.array([np.sum(labels == c) for c in present])
        weights = weights * counts.sum() / float(np.sum(counts * weights))
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
        if config.xla == "auto" and keras.backend.backend() == "jax":
            self.jit = True  # JAX without jit runs op by op: far slower on every device
        self._previous = None

    def __enter__(self):
        if self.mixed:
            self._previous = keras.mixed_precision.global_policy().name
            keras.mixed_precision.set_global_policy(self.policy)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            keras.mixed_precision.set_global_policy(self._previous)


def _compile(model: keras.Model, lr: float, jit: bool, config: TrainConfig | None = None) -> None:
    optimizer = config.build_optimizer(lr) if config is not None else keras.optimizers.Adam(learning_rate=lr)
    loss = config.build_loss() if config is not None else "categorical_crossentropy"
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"], jit_compile=bool(jit))


# ---------------------------------------------------------------------------- the run
def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The resolved config a run was started with (for --resume)."""
    path = Path(run_dir) / layout.CONFIG_FILE
    if not Path(run_dir).is_dir():
        raise VirionError(f"--resume {run_dir}: no such run folder; give the folder `virion train --out` made")
    config = TrainConfig.from_dict(store.read_json(path), source=str(path))
    config.out = str(run_dir)
    return config


def train_run(
    config: TrainConfig,
    *,
    resume: bool = False,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
    post_training: bool = False,
    progress: bool = True,
) -> RunResult:
    """Train each of `config.models` into the run folder `config.out`.

    resume: continue the run in `config.out` (finished models are skipped, an unfinished one
    continues after its last finished epoch). `extra_callbacks` run after ours (tests use one to
    simulate an interruption). KeyboardInterrupt propagates once the last epoch's state is saved.
    `post_training` is ignored: `virion.workflow.train` evaluates, compares and reports.
    A model whose loss became NaN is marked failed (metadata.json "status": "failed"); the other
    models still train, then `TrainingFailed` (a VirionError, with `.result`) is raised.
    """
    if not config.out:
        raise VirionError("no run folder given; pass --out runs/NAME")
    from virion.training import distribute

    distribute.prepare_process(
        config.backend, coordinator=config.coordinator, num_processes=config.num_processes, process_id=config.process_id
    )
    distribute.configure(config.devices)  # before any model is built: weights go onto the device mesh
    if not distribute.is_writer():  # process 0 writes the run folder; the others keep a private copy
        config = config.merged({"out": distribute.private_run_dir(config.out), "overwrite": True})
    verbose = _verbosity(progress)
    if resume:
        run_dir = Path(config.out)
        if not (run_dir / layout.CONFIG_FILE).is_file():
            raise VirionError(f"--resume {run_dir}: no config.json there; it is not a virion run folder")
        remove_temp_files(run_dir)  # debris of saves a kill interrupted
    else:
        run_dir = Path(config.out)
        layout.check_run_dir(run_dir, overwrite=config.overwrite)  # refuse early, create only once data is OK

    data = prepare_data(config, progress=progress)
    if resume:
        recorded = store.read_json(run_dir / layout.DATASET_FILE) if (run_dir / layout.DATASET_FILE).exists() else {}
        if recorded.get("fingerprint") not in (None, data.fingerprint) and progress:
            print(
                f"warning: the data in {config.data} changed since this run started (fingerprint differs)", flush=True
            )
    failures = list(data.train.failures) + list(data.validation.failures)
    if resume:
        store.write_dataset_info(run_dir, data.dataset, failures)
    if failures and progress:
        print(
            f"skipped {len(failures)} unreadable image(s); they are listed in {run_dir / layout.SKIPPED_FILE}",
            flush=True,
        )

    from virion.models.registry import build_model

    results: dict[str, ModelResult] = {}
    with _Precision(config) as precision:
        # Build (and so fetch the weights of) every model that starts fresh BEFORE any training:
        # missing ImageNet weights must stop the run at once, not after an hour of ResNet-50.
        prebuilt: dict[str, keras.Model] = {}
        settled = {name: _settle(run_dir / name, name) if resume else None for name in config.models}
        for name in config.models:
            if settled[name] is not None or name in CLASSICAL_MODELS:  # texture: fitted, not built
                continue
            keras.utils.set_random_seed(config.seed)
            prebuilt[name] = build_model(name, data.num_classes, config.input_size, config.weights_for(name))

        if not resume:
            run_dir = layout.create_run_dir(config.out, overwrite=config.overwrite)
            # Launch settings (who is process 0, where it listens) belong to one launch, not to the run.
            store.write_config(
                run_dir, dataclasses.replace(config, coordinator=None, num_processes=None, process_id=None)
            )
            store.write_dataset_info(run_dir, data.dataset, failures)
        from virion.models.registry import model_info

        for index, name in enumerate(config.models, start=1):
            folder = layout.model_dir(run_dir, name)
            if settled[name] is not None and settled[name].phase == "done":
                results[name] = _result_from_metadata(name, folder)
                if progress:
                    print(f"{name}: already trained in {folder}, skipped", flush=True)
                continue
            if name in CLASSICAL_MODELS:
                from virion.training.texture_fit import fit_texture

                if progress:
                    print(f"training {name} ({index}/{len(config.models)}), no network: one fit", flush=True)
                results[name] = fit_texture(name, config, data, folder, progress=progress)
                if progress:
                    print(results[name].summary(), flush=True)
                continue
            if progress:
                info = model_info(name, config.weights_for(name))
                print(_header(name, index, len(config.models), config, info, settled[name]), flush=True)
            results[name] = train_model(
                name,
                config,
                data,
                folder,
                model=prebuilt.pop(name, None),
                jit=precision.jit,
                extra_callbacks=extra_callbacks,
                verbose=verbose,
            )
            if progress:
                print(results[name].summary(), flush=True)

    distribute.release()  # evaluation and prediction run on one device, from the saved files
    if progress and len(results) > 1:
        print("summary:\n" + "\n".join("  " + r.summary() for r in results.values()), flush=True)
    result = RunResult(run_dir, results, data.class_names)
    if result.failed:
        details = "; ".join(f"{n}: {results[n].failure}" for n in result.failed)
        raise TrainingFailed(
            f"training failed for {', '.join(result.failed)} ({details}); the model is marked "
            f"failed in its metadata.json; lower the learning rate and train again with "
            f"--overwrite",
            result,
        )
    return result


def _settle(folder: Path, name: str) -> Progress | None:
    """A model folder's committed progress on --resume; a texture model is done or fitted again."""
    if name in CLASSICAL_MODELS:
        from virion.training.texture_fit import texture_done

        return Progress(phase="done") if texture_done(folder) else None
    return settle_model_folder(folder)


def _result_from_metadata(name: str, folder: Path) -> ModelResult:
    meta = store.read_json(folder / layout.METADATA_FILE)
    return ModelResult(
        name,
        folder,
        meta.get("best_epoch"),
        meta.get("best_val_accuracy"),
        meta.get("best_val_macro_f1"),
        int(meta.get("epochs_run") or 0),
        float(meta.get("train_seconds") or 0.0),
        float(meta.get("images_per_second") or 0.0),
        int(meta.get("params") or 0),
        dict(meta.get("files") or {}),
        status=meta.get("status", "trained"),
        failure=meta.get("failure"),
    )


# ---------------------------------------------------------------------------- one model
class TrainingFailed(VirionError):
    """Some model of the run failed (its loss became NaN); the others were trained and saved."""

    def __init__(self, message: str, result: RunResult):
        super().__init__(message)
        self.result = result


def _verbosity(progress: bool) -> int:
    """Progress bars on a terminal; one line per epoch in a log file, nohup or SLURM (Keras verbose=2)."""
    if not progress:
        return 0
    return 1 if sys.stdout.isatty() else 2


def _header(name: str, index: int, count: int, config: TrainConfig, info, progress: Progress | None) -> str:
    fine_tune = int(config.fine_tune_epochs) if info.base_frozen else 0
    epochs = f"{config.epochs} epochs" + (f" + {fine_tune} fine-tune" if fine_tune else "")
    weights = str(config.weights_for(name)) if info.kind == "transfer" else "random init"
    text = (
        f"training {name} ({index}/{count}), {epochs}, {config.input_size} px, batch {config.batch_size}, "
        f"lr {config.learning_rate:g}, weights {weights}"
    )
    if progress is not None and progress.epochs_done:
        text += f"; resuming after epoch {progress.epochs_done}"
    return text


def settle_model_folder(folder: Path) -> Progress | None:
    """The committed progress of a model folder, after tidying what a kill may have left.

    Temp files and state files that progress.json does not name are removed. A model whose final
    files and metadata.json are complete but whose "done" was never committed (virion 0.1 deleted
    its state first) is marked done, so a resume never trains a finished model again from scratch.
    """
    if not folder.is_dir():
        return None
    progress = read_progress(folder)
    clean_model_folder(folder, progress)
    if progress is not None and progress.finished:
        return progress
    state_model = progress.model_file if progress is not None else None
    if (state_model is None or not (folder / layout.STATE_DIR / state_model).is_file()) and _complete_model_files(
        folder
    ):
        meta = store.read_json(folder / layout.METADATA_FILE)
        progress = progress or Progress(epochs_done=int(meta.get("epochs_run") or 0))
        if not progress.history:
            adopt_history(folder, progress)
        progress = dataclasses.replace(
            progress,
            phase="done",
            model_file=None,
            best_file=None,
            epochs_done=int(meta.get("epochs_run") or progress.epochs_done),
        )
        commit(folder, progress)
        clean_model_folder(folder, progress)
    return progress


def _complete_model_files(folder: Path) -> bool:
    """metadata.json of a trained model, and every model file it names whole (zip / HDF5 intact)."""
    import zipfile

    import h5py

    try:
        meta = store.read_json(folder / layout.METADATA_FILE)
    except VirionError:
        return False
    files = meta.get("files") or {} if isinstance(meta, dict) else {}
    if meta.get("status", "trained") != "trained" or not files.get("keras"):
        return False
    for kind in ("keras", "h5"):
        if not files.get(kind):
            continue
        path = folder / files[kind]
        try:
            if kind == "keras":
                with zipfile.ZipFile(path) as archive:
                    if archive.testzip() is not None:
                        return False
            elif not h5py.is_hdf5(path):
                return False
        except (OSError, zipfile.BadZipFile):
            return False
    return True


def train_model(
    name: str,
    config: TrainConfig,
    data: TrainData,
    folder: Path,
    *,
    model: keras.Model | None = None,
    jit: bool = False,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 1,
    **_unused,
) -> ModelResult:
    """Train one model into `folder`: the head stage, the fine-tune stage (transfer models), the end.

    Each stage continues from the committed progress in `folder/state`, so the same call starts a
    model, resumes it after a kill at any instant, or only finishes its last commit.
    """
    from virion.models.registry import model_info

    run = _ModelTraining(
        name, config, data, folder, model_info(name, config.weights_for(name)), jit, verbose, tuple(extra_callbacks)
    )
    if run.progress.phase == "head":
        model = run.head_stage(model)
    if run.progress.phase == "fine_tune":
        model = run.fine_tune_stage(model)
    if run.progress.phase == "failed":
        return run.record_failure()
    return run.finish(model)


class _ModelTraining:
    """One model's training, stage by stage; `progress` is always the committed record."""

    def __init__(
        self,
        name: str,
        config: TrainConfig,
        data: TrainData,
        folder: Path,
        info,
        jit: bool,
        verbose: int,
        extra_callbacks: tuple,
    ):
        self.name, self.config, self.data, self.folder, self.info = name, config, data, folder, info
        self.jit, self.verbose, self.extra_callbacks = jit, verbose, extra_callbacks
        self.state = folder / layout.STATE_DIR
        self.progress = settle_model_folder(folder) or Progress(monitor=config.checkpoint_metric)
        self.fine_tune_epochs = int(config.fine_tune_epochs) if info.base_frozen else 0
        self.use_cache = config.feature_cache is not None and info.base_frozen
        self.timer = cb.EpochTimer(self.progress.train_seconds, self.progress.train_images, len(data.train.labels))
        power = {"balanced": 1.0, "sqrt": 0.5}.get(config.class_weight)
        self.class_weight = class_weights(data.train.labels, data.num_classes, power) if power else None

    # -------------------------------------------------------------- stages
    def head_stage(self, model: keras.Model | None) -> keras.Model | None:
        """Train the whole model (scratch) or the head on the frozen base (transfer)."""
        config, progress = self.config, self.progress
        if not progress.stopped and progress.epochs_done < config.epochs:
            if self.use_cache:
                from virion.training.feature_cache import train_head_on_features

                model = model or self._build()
                self.progress = train_head_on_features(
                    model,
                    config,
                    self.data,
                    self.folder,
                    progress=progress,
                    make_callbacks=self._callbacks,
                    jit=self.jit,
                    class_weight=self.class_weight,
                    extra_callbacks=self.extra_callbacks,
                    verbose=self.verbose,
                )
            else:
                if progress.epochs_done:
                    model = load_state_model(self.state / progress.model_file, self.name)
                else:
                    model = model or self._build()
                    _compile(model, config.learning_rate, self.jit, config)
                self._fit(model, "head", config.epochs, config.learning_rate)
        if self.fine_tune_epochs and self.progress.phase == "head":
            self._commit(phase="fine_tune", head_epochs=self.progress.epochs_done, stopped=False, callbacks={})
        return model

    def fine_tune_stage(self, model: keras.Model | None) -> keras.Model | None:
        """Unfreeze the top of the base and train on from the best head, at the fine-tune lr."""
        from virion.models.transfer import unfreeze_top

        config, progress = self.config, self.progress
        total = progress.head_epochs + self.fine_tune_epochs
        if progress.stopped or progress.epochs_done >= total:
            return model
        if progress.epochs_done == progress.head_epochs:  # the stage starts now
            model = self._full_model(model)
            self._load_best(model)
            if isinstance(config.unfreeze, str):
                unfreeze_top(model, from_layer=config.unfreeze)
            else:
                unfreeze_top(model, fraction=float(config.unfreeze))
            _compile(model, config.fine_tune_lr, self.jit, config)
        else:
            model = load_state_model(self.state / progress.model_file, self.name)
        self._fit(model, "fine_tune", total, config.fine_tune_lr, first_epoch=progress.head_epochs)
        return model

    def finish(self, model: keras.Model | None) -> ModelResult:
        """Best epoch -> final .keras/.h5 -> metadata.json -> commit "done" -> delete the resume files."""
        from virion.models.registry import model_file_stem

        model = self._full_model(model)
        self._load_best(model)
        files = save_model_files(model, self.folder, model_file_stem(self.name))
        result = self._write_metadata(model, {kind: path.name for kind, path in files.items()}, "trained")
        crash_point("before_done")
        self._commit(phase="done", model_file=None, best_file=None)
        crash_point("after_done")
        clean_model_folder(self.folder, self.progress)
        return result

    def record_failure(self) -> ModelResult:
        """The loss became NaN: metadata.json says so (status "failed"); no model file is written."""
        return self._write_metadata(None, {}, "failed")

    # -------------------------------------------------------------- helpers
    def _fit(self, model: keras.Model, phase: str, last_epoch: int, base_lr: float, first_epoch: int = 0) -> None:
        callbacks, committer = self._callbacks(
            phase, self.data.validation.images, None, first_epoch, last_epoch, base_lr
        )
        self.progress = fit_by_epoch(
            model,
            lambda epoch: _train_dataset(self.config, self.data, epoch),
            committer,
            last_epoch=last_epoch,
            callbacks=callbacks + list(self.extra_callbacks),
            validation_data=None,  # ValidationMacroF1 computes val_loss/accuracy/macro-F1 in one pass
            class_weight=self.class_weight,
            seed=self.config.seed,
            verbose=self.verbose,
        )

    def _callbacks(self, phase: str, val_x, checkpoint_model, first_epoch: int, last_epoch: int, base_lr: float):
        config = self.config
        return cb.make_callbacks(
            self.folder,
            phase=phase,
            progress=self.progress,
            val_x=val_x,
            val_y=self.data.validation.labels,
            timer=self.timer,
            checkpoint_metric=config.checkpoint_metric,
            early_stopping=config.early_stopping,
            lr_schedule=config.lr_schedule,
            base_lr=base_lr,
            first_epoch=first_epoch,
            total_epochs=last_epoch,
            tensorboard=config.tensorboard,
            batch_size=config.batch_size,
            checkpoint_model=checkpoint_model,
        )

    def _commit(self, **changes) -> None:
        self.progress = dataclasses.replace(self.progress, **changes)
        commit(self.folder, self.progress)

    def _build(self) -> keras.Model:
        from virion.models.registry import build_model

        keras.utils.set_random_seed(self.config.seed)
        return build_model(self.name, self.data.num_classes, self.config.input_size, self.config.weights_for(self.name))

    def _full_model(self, model: keras.Model | None) -> keras.Model:
        """The full model at the end of a stage: the one in memory, else the committed resume model."""
        if model is not None:
            return model
        p = self.progress
        head_only = self.use_cache and (p.head_epochs is None or p.epochs_done <= p.head_epochs)
        if p.model_file and not head_only:
            return load_state_model(self.state / p.model_file, self.name)
        return self._build()  # the best weights (full model) go in next

    def _load_best(self, model: keras.Model) -> None:
        """Best-epoch weights; the optimizer part may be absent (head trained on cached features)."""
        import warnings

        if not self.progress.best_file:
            return
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(self.state / self.progress.best_file)

    def _write_metadata(self, model: keras.Model | None, files: dict[str, str], status: str) -> ModelResult:
        from virion.models.transfer import base_is_frozen

        name, config, info, p = self.name, self.config, self.info, self.progress
        frozen = base_is_frozen(model) if info.kind == "transfer" and model is not None else info.base_frozen
        seconds = float(p.train_seconds)
        result = ModelResult(
            name=name,
            folder=self.folder,
            best_epoch=p.best_epoch,
            best_val_accuracy=p.best_logs.get("val_accuracy"),
            best_val_macro_f1=p.best_logs.get("val_macro_f1"),
            epochs_run=int(p.epochs_done),
            train_seconds=seconds,
            images_per_second=p.train_images / seconds if seconds > 0 and math.isfinite(seconds) else 0.0,
            params=int(model.count_params()) if model is not None else 0,
            files=(files | {"history": layout.HISTORY_FILE}) if files else {"history": layout.HISTORY_FILE},
            status=status,
            failure=p.failure,
        )
        store.write_metadata(
            self.folder,
            class_names=self.data.class_names,
            input_size=config.input_size,
            scaling=info.scaling,
            weights=str(config.weights_for(name)) if info.kind == "transfer" else "none",
            base_frozen=frozen if info.kind == "transfer" else None,
            trained_from_scratch=info.kind == "scratch" or not info.base_frozen,
            fine_tuned=bool(config.fine_tune_epochs) and info.base_frozen,
            feature_cache=config.feature_cache if info.base_frozen else None,
            config=config.to_dict(),
            data_fingerprint=self.data.fingerprint,
            best_epoch=result.best_epoch,
            best_val_accuracy=result.best_val_accuracy,
            best_val_macro_f1=result.best_val_macro_f1,
            checkpoint_metric=config.checkpoint_metric,
            train_seconds=result.train_seconds,
            images_per_second=result.images_per_second,
            params=result.params,
            epochs_run=result.epochs_run,
            files=result.files,
            model=name,
            display_name=info.display_name,
            kind=info.kind,
            last_conv_layer=info.last_conv_layer,
            status=status,
            failure=p.failure,
        )
        return result

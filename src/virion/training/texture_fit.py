"""Fit the texture model (`virion.models.texture`) into a run folder like any other model.

Same dataset, splits and groups as the networks of the run (`TrainData`), decoded through the
same cache but at the texture model's own settings: `FIXED_INPUT_SIZE` (256 px, the crops' native
1 nm/px) and the run's stretch, whatever `--input-size` the networks use. One fit, no epochs:
the model files are written first (atomically), metadata.json last, so a finished texture model
is one whose metadata.json says "trained" and whose files are there (a resume skips it); a run
killed during the fit has no metadata.json for it and simply fits it again.

The model trains on the training and validation images (`TextureModel(pool_validation=True)`), so
its plain predictions of the validation split are no longer unseen. Its out-of-fold validation
probabilities are written beside it (`texture.VALIDATION_OOF_FILE`, by file path relative to the
dataset root); the validation figures in its metadata.json come from them, and the run's ensemble
weights and recommended classifier read them (`evaluation.ensemble.split_probabilities`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from virion.errors import VirionError
from virion.models.catalog import FIXED_INPUT_SIZE
from virion.models.texture.model import VALIDATION_OOF_FILE, write_validation_oof
from virion.run import layout, store
from virion.run.loading import TEXTURE_KIND


def texture_done(folder: Path) -> bool:
    """A texture model folder whose fit finished: metadata.json "trained" and every file it names present."""
    try:
        meta = store.read_metadata(folder)
    except VirionError:
        return False
    files = [f for k, f in meta.files.items() if k != "history"]
    return (
        meta.kind == TEXTURE_KIND
        and not meta.failed
        and bool(files)
        and all((Path(folder) / f).is_file() for f in files)
    )


def _split_arrays(config, data, split: str, settings, progress: bool):
    """One split decoded at the texture model's settings (the networks' arrays when they match)."""
    from virion.data.cache import load_split_arrays
    from virion.run.splits import decode_settings

    arrays = getattr(data, split)
    same_stretch = decode_settings(config.to_dict()).stretch == settings.stretch
    if same_stretch and arrays.images.shape[1:] == (settings.size, settings.size):
        return arrays  # already at this model's settings (a texture-only run, or --input-size 256)
    return load_split_arrays(data.dataset.splits[split], settings, strict=config.strict, progress=progress)


def _groups(split, files) -> list[str] | None:
    """The group (micrograph) of each decoded file, so the model's own CV splits by group; None without groups."""
    if getattr(split, "groups", None) is None:
        return None
    group_of = {str(f): g for f, g in zip(split.files, split.groups)}
    groups = [group_of.get(str(f)) for f in files]
    return None if any(g is None for g in groups) else groups


def _hyperparameters(model) -> dict:
    """The chosen settings by name (the second one is the SVM's gamma or the LDA head's shrinkage)."""
    second = {"svm": "gamma", "logistic+lda": "shrinkage"}.get(model.classifier)
    out = {"classifier": model.classifier, "C": model.C_, "pooled_validation": model.pooled_}
    if second:
        out[second] = model.gamma_
    return out


def fit_texture(name: str, config, data, folder: Path, *, progress: bool = True):
    """Fit, save and describe the texture model in `folder`; returns the trainer's ModelResult."""
    from sklearn.metrics import f1_score

    from virion.models.registry import model_info
    from virion.models.texture.model import TextureModel
    from virion.run.splits import decode_settings
    from virion.training.trainer import ModelResult

    size = FIXED_INPUT_SIZE[name]
    settings = decode_settings(config.to_dict(), size)
    if data.dataset is None:
        raise VirionError(f"{name}: the texture model needs the dataset's files to decode at {size} px")
    started = time.perf_counter()
    train = _split_arrays(config, data, "train", settings, progress)
    validation = _split_arrays(config, data, "validation", settings, progress)
    decode_seconds = time.perf_counter() - started
    if progress:
        print(f"{name}: fitting on {len(train.labels)} images at {size} px", flush=True)
    start = time.perf_counter()
    model = TextureModel(input_size=size, stretch=settings.stretch, seed=config.seed).fit(
        train.images,
        train.labels,
        class_names=list(data.class_names),
        val_images=validation.images,
        val_labels=validation.labels,
        groups=_groups(data.dataset.splits["train"], train.files),
        val_groups=_groups(data.dataset.splits["validation"], validation.files),
        progress=progress,
    )
    seconds = time.perf_counter() - start
    for stale in (folder / layout.HISTORY_FILE, folder / VALIDATION_OOF_FILE):
        stale.unlink(missing_ok=True)
    labels = np.asarray(validation.labels)
    if model.validation_oof_ is not None:
        oof, fair = model.validation_oof_, model.validation_oof_fair_
        write_validation_oof(
            folder, [data.dataset.relative_path(f) for f in validation.files], oof, model.class_names, fair=fair
        )
        oof, labels = oof[fair], labels[fair]  # the validation scores below: fair predictions only
    else:
        oof = model.predict_proba(validation.images, batch_size=config.batch_size)
    pred = np.asarray(oof).argmax(axis=1)
    val_accuracy = float((pred == labels).mean()) if len(labels) else None
    val_f1 = (
        float(f1_score(labels, pred, average="macro", labels=np.unique(labels), zero_division=0))
        if len(labels)
        else None
    )
    files = dict(model.save(folder))
    params = int(model.count_params()) if hasattr(model, "count_params") else None
    info = model_info(name)
    store.write_metadata(
        folder,
        class_names=list(data.class_names),
        input_size=size,
        stretch=settings.stretch,
        weights=None,  # nothing pre-trained to speak of
        kind=TEXTURE_KIND,
        display_name=info.display_name,
        scaling=info.scaling,
        config=config.to_dict(),
        data_fingerprint=data.fingerprint,
        best_val_accuracy=val_accuracy,
        best_val_macro_f1=val_f1,
        train_seconds=seconds,
        images_per_second=len(train.labels) / seconds if seconds > 0 else None,
        params=params,
        epochs_run=1,
        files=files,
        model=name,
        status="trained",
        timings={"decode_seconds": round(decode_seconds, 3), "fit_seconds": round(seconds, 3)},
        calibration=getattr(model, "calibration_", None),
        hyperparameters=_hyperparameters(model),
    )
    return ModelResult(
        name=name,
        folder=folder,
        best_epoch=None,
        best_val_accuracy=val_accuracy,
        best_val_macro_f1=val_f1,
        epochs_run=1,
        train_seconds=seconds,
        images_per_second=len(train.labels) / seconds if seconds > 0 else 0.0,
        params=params or 0,
        files=files,
    )

"""Ensembles of a run's models and the run's recommended classifier, both decided on VALIDATION data.

`recommend(run_dir)` predicts the run's validation split with every trained model (each decoded at
its own settings, through the one model contract), scores each model, the equal-weight mean of
all of them ("ensemble") and a weighted mean whose weights minimise validation log-loss
("ensemble-weighted"), and writes `RUN/recommended.json`. The test split is never read here.

The weighted mean is adopted only when it measures better than the plain mean on validation data
it was not fitted on: its score comes from out-of-fold predictions (weights fitted on 4/5 of the
validation images, scored on the other 1/5, five times); its final weights are then fitted on all
of them. Candidates are ranked by validation log-loss, then macro-F1 (over the classes present in
the validation split), then the fewer models. Log-loss first because validation splits are small
(10-15 micrographs on real data): it scores every image's whole probability vector, so it is far
steadier than macro-F1, which a few images of a rare class can swing (on real TEM crops macro-F1
picked a single network whose test accuracy was 3 points below the ensemble that log-loss picks).

With the run's `eval_tta` on (`virion train --eval-tta`), the validation probabilities are TTA means
too, so the weights are fitted, and the classifier chosen, on the same kind of probabilities that the
test evaluation scores; recommended.json records `"tta"`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from virion.errors import VirionError
from virion.evaluation import metrics
from virion.inference.proba import predict_proba
from virion.run import layout, store
from virion.run.loading import load_models
from virion.run.splits import decode_settings, open_dataset

MIN_IMAGES_TO_FIT = 30  # fewer validation images than this: weights would fit noise; the mean is kept
FOLDS = 5


# --------------------------------------------------------------------------- combining
def combine(probabilities: list[np.ndarray], weights=None) -> np.ndarray:
    """Weighted mean of the members' (N, C) probabilities (None: equal weights)."""
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in probabilities])
    w = np.full(len(stack), 1.0 / len(stack)) if weights is None else np.asarray(weights, dtype=np.float64)
    return np.tensordot(w / w.sum(), stack, axes=1)


def fit_weights(probabilities: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to 1 that minimise the log-loss of the weighted mean.

    The log-loss of a mixture is convex in its weights, so the simplex optimum SLSQP finds is the optimum.
    """
    from scipy.optimize import minimize

    labels = np.asarray(labels, dtype=np.int64)
    true = np.stack([np.asarray(p, dtype=np.float64)[np.arange(len(labels)), labels] for p in probabilities], axis=1)
    m = true.shape[1]

    def loss(w):
        return -np.mean(np.log(np.clip(true @ w, 1e-15, None)))

    def grad(w):
        return -np.mean(true / np.clip(true @ w, 1e-15, None)[:, None], axis=0)

    start = np.full(m, 1.0 / m)
    result = minimize(
        loss,
        start,
        jac=grad,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * m,
        constraints=({"type": "eq", "fun": lambda w: w.sum() - 1.0},),
    )
    w = np.clip(result.x if result.success else start, 0.0, None)
    w = w / w.sum() if w.sum() > 0 else start
    return w if loss(w) <= loss(start) else start


def out_of_fold(probabilities: list[np.ndarray], labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """The weighted mean's probabilities for each image from weights fitted on the other folds."""
    from sklearn.model_selection import KFold

    labels = np.asarray(labels, dtype=np.int64)
    out = np.zeros_like(np.asarray(probabilities[0], dtype=np.float64))
    for fit_idx, score_idx in KFold(n_splits=min(FOLDS, len(labels)), shuffle=True, random_state=seed).split(labels):
        w = fit_weights([p[fit_idx] for p in probabilities], labels[fit_idx])
        out[score_idx] = combine([p[score_idx] for p in probabilities], w)
    return out


def scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Validation macro-F1, accuracy and log-loss of one candidate."""
    from sklearn.metrics import f1_score

    labels = np.asarray(labels, dtype=np.int64)
    pred = np.asarray(probs).argmax(axis=1)
    return {
        "macro_f1": float(f1_score(labels, pred, average="macro", labels=np.unique(labels), zero_division=0)),
        "accuracy": float((pred == labels).mean()) if len(labels) else 0.0,
        "log_loss": metrics.log_loss(labels, probs),
        "n_images": int(len(labels)),
    }


def _rank_key(candidate: dict) -> tuple:
    return (round(candidate["log_loss"], 9), -round(candidate["macro_f1"], 9), len(candidate["members"]))


# --------------------------------------------------------------------------- predicting a split
def aligned(per_model: dict[str, tuple[list, np.ndarray, np.ndarray]]) -> tuple[list, np.ndarray, dict]:
    """The files every model could read, in the first model's order: (files, labels, {model: probs})."""
    names = list(per_model)
    first_files = per_model[names[0]][0]
    common = set(first_files)
    for files, _, _ in per_model.values():
        common &= set(files)
    files = [f for f in first_files if f in common]
    out, labels = {}, None
    for name, (model_files, model_labels, probs) in per_model.items():
        index = {f: i for i, f in enumerate(model_files)}
        rows = [index[f] for f in files]
        out[name] = np.asarray(probs, dtype=np.float64)[rows]
        labels = np.asarray(model_labels, dtype=np.int64)[rows] if labels is None else labels
    return files, (labels if labels is not None else np.zeros(0, np.int64)), out


def split_probabilities(
    run_dir: Path,
    split: str = "validation",
    *,
    data=None,
    batch_size: int | None = None,
    tta: bool = False,
    progress=True,
):
    """Every trained model's probabilities on one split of the run's own dataset, aligned by file.

    data: where the run's own dataset is now (None: the path in config.json). tta: 8-way TTA means.
    Returns (class_names, files, labels, {model: (N, C) probabilities}).
    """
    from virion.data.cache import load_split_arrays

    run_dir = Path(run_dir)
    config = store.read_config(run_dir)
    dataset = open_dataset(config, data)
    part = dataset.splits.get(split)
    if part is None or len(part.files) == 0:
        raise VirionError(f"{dataset.root}: the dataset has no {split} images; a recommendation needs them")
    batch_size = int(batch_size or config.get("batch_size") or 32)
    decoded: dict = {}
    per_model: dict = {}
    class_names = None
    for loaded in load_models(run_dir):
        if list(loaded.class_names) != list(dataset.class_names):
            raise VirionError(
                f"{loaded.source.parent / layout.METADATA_FILE}: the model's classes differ from the dataset's; "
                "train the run again on this data"
            )
        class_names = list(loaded.class_names)
        settings = decode_settings({**config, "stretch": loaded.metadata.stretch}, loaded.input_size)
        if settings not in decoded:
            decoded[settings] = load_split_arrays(part, settings, progress=progress)
        arrays = decoded[settings]
        probs = predict_proba(loaded.model, arrays.images, batch_size=batch_size, tta=tta)
        files, labels = [str(f) for f in arrays.files], np.asarray(arrays.labels)
        if split == "validation":
            probs, fair = _unseen_validation(loaded, arrays.files, dataset, probs)
            files, labels = [f for f, ok in zip(files, fair) if ok], labels[fair]
        per_model[loaded.name] = (files, labels, probs)
    files, labels, probs = aligned(per_model)
    return class_names, files, labels, probs


def _unseen_validation(loaded, files, dataset, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A model that trained on the validation images (the texture model, `pool_validation`) answers
    for them with its out-of-fold probabilities, written beside it at training time; others as they are.

    Returns (the probabilities of the fair images, fair): fair is False for images the out-of-fold
    split could not predict fairly (their class was missing from its training side); `aligned` then
    leaves them out for every model, so all candidates are compared on the same images.
    """
    from virion.models.texture.model import read_validation_oof

    oof = read_validation_oof(loaded.source.parent)
    if oof is None:
        if getattr(loaded.model, "pooled_", False):
            raise VirionError(
                f"{loaded.source.parent}: {loaded.name} trained on the validation images but its out-of-fold "
                "probabilities of them are missing; train the run again"
            )
        return probs, np.ones(len(probs), bool)
    keys = [dataset.relative_path(f) for f in files]
    missing = [f for f in keys if f not in oof]
    if missing:
        raise VirionError(
            f"{loaded.source.parent}: {len(missing)} validation images (e.g. {missing[0]}) have no out-of-fold "
            f"probabilities of {loaded.name}, which trained on them; train the run again on this data"
        )
    fair = np.array([oof[f] is not None for f in keys], bool)
    rows = [oof[f] for f in keys if oof[f] is not None]
    return (np.stack(rows) if rows else np.zeros((0, probs.shape[1]))), fair


# --------------------------------------------------------------------------- the recommendation
def choose(labels: np.ndarray, probs: dict[str, np.ndarray]) -> dict:
    """The recommendation for models whose validation probabilities are `probs` (see the module doc)."""
    labels = np.asarray(labels, dtype=np.int64)
    names = list(probs)
    candidates: dict[str, dict] = {}
    for name in names:
        candidates[name] = {**scores(labels, probs[name]), "members": [name], "weights": None}
    ensembles: dict[str, dict] = {}
    notes = []
    if len(names) > 1:
        mean = combine([probs[n] for n in names])
        candidates[layout.ENSEMBLE] = {**scores(labels, mean), "members": names, "weights": None}
        ensembles[layout.ENSEMBLE] = {"members": names, "weights": [1.0 / len(names)] * len(names)}
        if len(labels) >= MIN_IMAGES_TO_FIT:
            weighted = out_of_fold([probs[n] for n in names], labels)
            weights = [float(w) for w in fit_weights([probs[n] for n in names], labels)]
            tried = {
                **scores(labels, weighted),
                "members": names,
                "weights": weights,
                "scored": f"out-of-fold ({FOLDS}-fold) on the validation split",
            }
            if _rank_key(tried) < _rank_key(candidates[layout.ENSEMBLE]):
                candidates[layout.WEIGHTED_ENSEMBLE] = tried
                ensembles[layout.WEIGHTED_ENSEMBLE] = {"members": names, "weights": weights}
            else:
                mean_scores = candidates[layout.ENSEMBLE]
                notes.append(
                    f"validation-fitted weights {dict(zip(names, np.round(weights, 3).tolist()))} were not adopted: "
                    f"out-of-fold macro-F1 {tried['macro_f1']:.4f}, log-loss {tried['log_loss']:.4f} vs the "
                    f"mean's {mean_scores['macro_f1']:.4f}, {mean_scores['log_loss']:.4f}"
                )
        else:
            notes.append(f"only {len(labels)} validation images: ensemble weights not fitted (the mean is used)")
    ranked = sorted(candidates, key=lambda n: _rank_key(candidates[n]))
    best = ranked[0]
    chosen = candidates[best]
    why = f"best validation log-loss {chosen['log_loss']:.4f} (macro-F1 {chosen['macro_f1']:.4f})"
    if len(ranked) > 1:
        why += " vs " + ", ".join(f"{n} {candidates[n]['log_loss']:.4f}" for n in ranked[1:])
    else:
        why = f"the only model of the run (validation log-loss {chosen['log_loss']:.4f})"
    why += f", on {len(labels)} validation images"
    weights = ensembles.get(best, {}).get("weights")
    return {
        "schema_version": 1,
        "classifier": best,
        "members": list(chosen["members"]),
        "weights": weights,
        "metric": "validation log-loss, then macro-F1, then fewer models",
        "split": "validation",
        "why": why,
        "ensembles": ensembles,
        "candidates": candidates,
        "notes": notes,
    }


def recommend(
    run_dir: str | Path,
    *,
    data=None,
    batch_size: int | None = None,
    tta: bool | None = None,
    progress: bool = True,
) -> dict:
    """Choose the run's recommended classifier on its validation split and write RUN/recommended.json.

    data: where the run's own dataset is now (None: the path in config.json). tta: predict the
    validation split with 8-way TTA; None = the run's own setting (config.json `eval_tta`).
    """
    run_dir = Path(run_dir)
    if tta is None:
        tta = bool(store.read_config(run_dir).get("eval_tta", False))
    _, files, labels, probs = split_probabilities(
        run_dir, "validation", data=data, batch_size=batch_size, tta=tta, progress=progress
    )
    if not files:
        raise VirionError(f"{run_dir}: no validation image could be read by every model; nothing to choose on")
    recommendation = {**choose(labels, probs), "tta": bool(tta)}
    if tta:
        recommendation["why"] += " (with 8-way TTA)"
    store.write_recommended(run_dir, recommendation)
    if progress:
        print(f"recommended classifier: {recommendation['classifier']} ({recommendation['why']})", file=sys.stderr)
    return recommendation

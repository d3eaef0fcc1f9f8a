"""Evaluate trained models on a test set and write every result a person looks at.

`evaluate_model` is the core: a model and arrays in (so a notebook can call it on anything),
reports, matrices, plots and per-file predictions out, into one folder. `evaluate_run` rebuilds a
run's test split exactly as training held it out (`virion.run.splits`) and evaluates each model.
Evaluating on other data (`data=OTHER`) writes `<model>/evaluation-<data>/`, never replacing the
run's own evaluation, and every output names the data it was computed on.

Every model is called through the one contract (`virion.inference.proba.predict_proba`: Keras
networks and the texture model alike), each on the test images decoded at its own settings. With
two or more models, the run's ensembles (`ensemble`: the mean; `ensemble-weighted`: the validation-
fitted weights of recommended.json, when adopted) are evaluated as rows of their own into
`RUN/<ensemble>/evaluation/` from the members' test probabilities (`virion.evaluation.ensemble`).

Test-time augmentation (`tta`: each image's probabilities are the mean over its 8 flips and 90-degree
turns, `inference.batching.dihedral_views`) defaults to the run's own setting (config.json `eval_tta`,
`virion train --eval-tta`), which `evaluation/` holds. An evaluation with the other setting goes to
`evaluation-tta/` (or `evaluation-no-tta/`) beside it, never over it; summary.json says `"tta"` either way.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from virion.errors import VirionError
from virion.evaluation import metrics, plots
from virion.inference.batching import TTA_VIEWS
from virion.inference.proba import is_network, num_classes_of
from virion.inference.proba import predict_proba as model_proba
from virion.run import layout, store
from virion.run.loading import load_models
from virion.run.splits import decode_settings, open_dataset
from virion.training.faults import crash_point

MAX_MISTAKES = 16
TOP_K = 5
MOST_CONFUSED = 5


def tta_text(tta: bool) -> str:
    """How the probabilities were made, for titles and console lines: "with 8-way TTA" or ""."""
    return f"with {TTA_VIEWS}-way TTA" if tta else ""


def predict_probabilities(
    model, images: np.ndarray, batch_size: int = 64, *, tta: bool = False
) -> tuple[np.ndarray, float]:
    """Class probabilities in input order (the model contract), and inference speed in images per second.

    The first batch runs once untimed (graph tracing is not inference time), then all are timed.
    tta: the mean over the 8 dihedral views of each image (the speed is then per image, all views counted).
    """
    n = len(images)
    if n == 0:
        return np.zeros((0, num_classes_of(model))), 0.0
    batch_size = max(1, min(int(batch_size), n))
    model_proba(model, images[:batch_size], batch_size=batch_size, tta=tta)  # warm-up
    start = time.perf_counter()
    probs = model_proba(model, images, batch_size=batch_size, tta=tta)
    seconds = time.perf_counter() - start
    return probs, (n / seconds if seconds > 0 else float("inf"))


def _top_k(probs: np.ndarray, class_names: Sequence[str], k: int = 3) -> list[str]:
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [";".join(f"{class_names[j]}:{row[j]:.4f}" for j in idx) for row, idx in zip(probs, order)]


def write_predictions(
    path: Path, files: Sequence, labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str]
) -> Path:
    """predictions.csv: file, true_class, predicted_class, confidence, top3, one row per input in order."""
    pred = probs.argmax(axis=1)
    rows = [
        {
            "file": str(f),
            "true_class": class_names[int(t)],
            "predicted_class": class_names[int(p)],
            "confidence": float(probs[i, p]),
            "top3": top,
        }
        for i, (f, t, p, top) in enumerate(zip(files, labels, pred, _top_k(probs, class_names)))
    ]
    if not rows:
        path.write_text("file,true_class,predicted_class,confidence,top3\n", encoding="utf-8")
        return path
    return metrics.write_csv(rows, path)


def top_k_accuracy(labels: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Share of images whose true class is among the k most likely."""
    if len(labels) == 0:
        return 0.0
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def most_confused(cm: np.ndarray, class_names: Sequence[str], n: int = MOST_CONFUSED) -> list[dict]:
    """The off-diagonal cells with the most images: (true, predicted, count), largest first."""
    off = np.array(cm, dtype=np.int64)
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:n]
    pairs = []
    for flat in order:
        i, j = np.unravel_index(flat, off.shape)
        if off[i, j] > 0:
            pairs.append({"true": class_names[i], "predicted": class_names[j], "count": int(off[i, j])})
    return pairs


def evaluate_model(
    model,
    images: np.ndarray,
    labels,
    class_names: Sequence[str],
    out_dir: Path,
    *,
    files: Sequence | None = None,
    history_csv: Path | None = None,
    batch_size: int = 64,
    model_name: str | None = None,
    data_name: str = "",
    best_epoch: int | None = None,
    gradcam_layer: str | None = None,
    probabilities: np.ndarray | None = None,
    images_per_second: float | None = None,
    tta: bool = False,
) -> dict:
    """Predict `images` in order, write all evaluation outputs into `out_dir`, return a summary dict.

    model: anything with the model contract (a Keras network, a texture model), or None when
    `probabilities` (N, C) are given (an ensemble: its members already predicted; `images` are
    then only shown in the mistakes figure). images: uint8 (N, H, W) grayscale (or (N, H, W, 3));
    labels: int (N,) indices into class_names. data_name names the data in every title and in summary.json.
    tta: predict with 8-way test-time augmentation (with `probabilities` given: say that they were);
    summary.json's "tta" and every title say it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    class_names = [str(c) for c in class_names]
    n_classes = len(class_names)
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    files = list(files) if files is not None else [f"#{i}" for i in range(len(labels))]
    if len(files) != len(labels):
        raise ValueError(f"{len(files)} files but {len(labels)} labels")
    outputs = num_classes_of(model) if probabilities is None else int(np.shape(probabilities)[1])
    if outputs != n_classes:
        raise VirionError(
            f"the model has {outputs} outputs but {n_classes} class names were given; "
            "evaluate with the class list from the model's metadata.json"
        )
    name = model_name or getattr(model, "name", "") or "model"
    on = (f" on {data_name}" if data_name else "") + (f" {tta_text(tta)}" if tta else "")

    if probabilities is None:
        probs, speed = predict_probabilities(model, images, batch_size=batch_size, tta=tta)
    else:
        probs, speed = np.asarray(probabilities, dtype=np.float64), float(images_per_second or 0.0)
        if len(probs) != len(labels):
            raise ValueError(f"{len(probs)} rows of probabilities but {len(labels)} labels")
    pred = probs.argmax(axis=1).astype(np.int64)
    confidence = probs[np.arange(len(pred)), pred] if len(pred) else np.zeros(0)

    cm = metrics.confusion(labels, pred, n_classes)
    report = metrics.save_classification_report(labels, pred, class_names, out_dir)
    with warnings.catch_warnings(record=True) as caught:  # keep them for summary.json, then pass them on
        warnings.simplefilter("always")
        table = metrics.per_class_table(cm, class_names)
    notes = [str(w.message) for w in caught]
    for note in notes:
        warnings.warn(note, RuntimeWarning, stacklevel=2)
    metrics.write_csv(table, out_dir / "per_class_reference_metrics.csv")
    metrics.write_csv(
        [{"true_class": c, **{p: int(cm[i, j]) for j, p in enumerate(class_names)}} for i, c in enumerate(class_names)],
        out_dir / "confusion_matrix.csv",
    )
    plots.plot_confusion(
        cm, class_names, out_dir / "confusion_matrix.png", title=f"{name}: confusion matrix (counts){on}"
    )
    plots.plot_confusion(
        cm,
        class_names,
        out_dir / "confusion_matrix_normalized.png",
        normalize=True,
        title=f"{name}: confusion matrix (row-normalized){on}",
    )
    if history_csv is not None and Path(history_csv).is_file():
        plots.plot_curves(
            Path(history_csv), out_dir / "curves.png", title=f"{name}: training curves", best_epoch=best_epoch
        )
    write_predictions(out_dir / "predictions.csv", files, labels, probs, class_names)

    wrong = np.flatnonzero(pred != labels)
    worst = wrong[np.argsort(-confidence[wrong], kind="stable")][:MAX_MISTAKES]  # most confident first
    plots.plot_mistakes(
        [images[i] for i in worst],
        [class_names[labels[i]] for i in worst],
        [class_names[pred[i]] for i in worst],
        [float(confidence[i]) for i in worst],
        out_dir / "mistakes.png",
        title=f"{name}: most confident mistakes{on} ({len(wrong)} in all)",
    )

    if model is not None and is_network(model):
        gradcam_note = gradcam_examples(
            model,
            images,
            labels,
            probs,
            class_names,
            out_dir / "gradcam_examples.png",
            title=f"{name}: Grad-CAM, one test image per class{on}",
            layer=gradcam_layer,
        )
        if gradcam_note:
            notes.append(gradcam_note)
    summary = {
        "model": name,
        "data": data_name,
        "n_images": int(len(labels)),
        "n_mistakes": int(len(wrong)),
        "accuracy": float((pred == labels).mean()) if len(labels) else 0.0,
        f"top{TOP_K}_accuracy": top_k_accuracy(labels, probs, TOP_K),
        "macro_precision": float(report["macro avg"]["precision"]),
        "macro_recall": float(report["macro avg"]["recall"]),
        "macro_f1": float(report["macro avg"]["f1-score"]),
        "weighted_f1": float(report["weighted avg"]["f1-score"]),
        "log_loss": metrics.log_loss(labels, probs),
        "expected_calibration_error": metrics.expected_calibration_error(labels, probs),
        "most_confused": most_confused(cm, class_names),
        "inference_images_per_second": float(speed),
        "tta": bool(tta),
        "tta_views": TTA_VIEWS if tta else 1,
        "batch_size": int(batch_size),
        "class_names": class_names,
        "warnings": notes,
    }
    store.write_json(out_dir / layout.SUMMARY_FILE, summary)
    return summary


def gradcam_examples(
    model, images, labels, probs, class_names, path: Path, *, title: str = "", layer: str | None = None
) -> str | None:
    """gradcam_examples.png: per class, its test image the model is surest of, explained for that class.

    Returns a note instead of the figure when Grad-CAM cannot run here (another backend, no
    convolutional layer), so the evaluation itself never fails for the want of a picture.
    """
    from virion.inference.gradcam import find_last_conv_layer, gradcam, overlay

    picks = []
    for c in range(len(class_names)):
        idx = np.flatnonzero(labels == c)
        if idx.size:
            picks.append((c, int(idx[np.argmax(probs[idx, c])])))
    if not picks:
        return None
    try:
        layer = find_last_conv_layer(model, preferred=layer)
        shown, names, confidences = [], [], []
        for c, i in picks:
            heatmap, _, confidence = gradcam(model, images[i], class_index=c, layer_name=layer)
            shown.append(overlay(images[i], heatmap))
            names.append(class_names[c])
            confidences.append(confidence)
    except VirionError as exc:
        return f"no Grad-CAM examples: {exc}"
    plots.save_figure(plots.gradcam_grid_figure(shown, names, confidences, title=title), path)
    return None


# --------------------------------------------------------------------------- run folders


def other_data_name(run_dir: Path, config: dict, data: str | Path | None, dataset) -> str | None:
    """None when `data` is the run's own dataset (same path, or moved: same fingerprint), else its name."""
    if data is None:
        return None
    recorded = config.get("data")
    if recorded and Path(recorded).exists() and Path(recorded).resolve() == Path(data).resolve():
        return None
    info = store.read_dataset_info(run_dir)
    if info is not None and info.fingerprint and info.fingerprint == dataset.fingerprint():
        return None
    return layout.data_slug(data)


def evaluate_run(
    run_dir: Path,
    data: Path | None = None,
    *,
    tta: bool | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> dict[str, dict]:
    """Evaluate every trained model of a run on a test split; returns {model folder name: summary dict}.

    Models whose training failed (metadata "status": "failed") are skipped; `store.failed_models` lists them.

    data: None (the run's own dataset) or another dataset folder, whose test split (same split
    options) is evaluated into `<model>/evaluation-<data name>/`.
    tta: None = the run's own setting (config.json `eval_tta`, False for runs made before it existed);
    the other setting is written to `<model>/evaluation[-<data>]-tta/` (`-no-tta/`) beside the run's own.
    """
    run_dir = Path(run_dir)
    layout.model_dirs(run_dir)  # a clear error for a folder that holds no models
    config = store.read_config(run_dir)
    configured = bool(config.get("eval_tta", False))
    tta = configured if tta is None else bool(tta)
    variant = layout.tta_variant(tta, configured)
    batch_size = int(batch_size or config.get("batch_size") or 64)
    dataset = open_dataset(config, data)
    data_name = other_data_name(run_dir, config, data, dataset)
    label = data_name or f"{Path(str(dataset.root)).name} (the run's test split)"
    how = f" {tta_text(tta)}" if tta else ""
    test = dataset.splits.get("test")
    if test is None or len(test.files) == 0:
        raise VirionError(
            f"{dataset.root}: the dataset has no test images; give it a test split (test/ folder or test_fraction > 0)"
        )
    from virion.data.cache import load_split_arrays

    validation = dataset.splits.get("validation")
    if data_name is None and store.read_recommended(run_dir) is None and validation and len(validation.files):
        from virion.evaluation.ensemble import recommend

        # a run trained before recommendations were recorded: chosen at the run's own TTA setting
        recommend(run_dir, data=data, tta=configured, progress=progress)
    decoded: dict = {}
    results = {}
    members: dict[str, tuple] = {}
    if progress:
        for name, why in store.failed_models(run_dir).items():
            print(f"{name}: not evaluated, its training failed ({why})", file=sys.stderr)
    for loaded in load_models(run_dir):  # models whose training failed are skipped
        folder = loaded.source.parent
        if list(dataset.class_names) != list(loaded.class_names):
            raise VirionError(
                f"{folder / layout.METADATA_FILE}: the model's classes {loaded.class_names} differ "
                f"from the dataset's {list(dataset.class_names)}; pass data with the same class "
                "folders with --data DIR"
            )
        settings = decode_settings({**config, "stretch": loaded.metadata.stretch}, loaded.input_size)
        if settings not in decoded:
            decoded[settings] = load_split_arrays(test, settings, progress=progress)
        arrays = decoded[settings]
        out_dir = layout.evaluation_dir(folder, data_name, variant)
        _refuse_other_tta(out_dir, tta)
        if progress:
            print(f"evaluating {folder.name} on {len(arrays.labels)} test images of {label}{how}", file=sys.stderr)
        probs, speed = predict_probabilities(loaded.model, arrays.images, batch_size=batch_size, tta=tta)
        files = _relative(arrays.files, dataset.root)
        members[folder.name] = (files, arrays.labels, probs, arrays, speed)
        summary = evaluate_model(
            loaded.model,
            arrays.images,
            arrays.labels,
            loaded.class_names,
            out_dir,
            files=files,
            history_csv=folder / layout.HISTORY_FILE,
            batch_size=batch_size,
            model_name=folder.name,
            data_name=label,
            best_epoch=loaded.metadata.best_epoch,
            gradcam_layer=loaded.metadata.last_conv_layer,
            probabilities=probs,
            images_per_second=speed,
            tta=tta,
        )
        summary.update(
            model=folder.name,
            kind=loaded.kind,
            tta_is_run_setting=variant is None,
            data_path=str(dataset.root),
            own_test_split=data_name is None,
            skipped_test_files=[[str(p), why] for p, why in arrays.failures],
        )
        crash_point("evaluate")  # fault-injection tests: a kill with this model's evaluation half written
        store.write_json(out_dir / layout.SUMMARY_FILE, summary)
        results[folder.name] = summary
        if progress:
            print(
                f"  {folder.name}: accuracy {summary['accuracy']:.4f}, macro F1 {summary['macro_f1']:.4f}{how} "
                f"-> {out_dir}",
                file=sys.stderr,
            )
    results.update(
        evaluate_ensembles(
            run_dir,
            members,
            list(dataset.class_names),
            data_name,
            label,
            str(dataset.root),
            batch_size,
            progress,
            tta=tta,
            variant=variant,
        )
    )
    return results


def _refuse_other_tta(out_dir: Path, tta: bool) -> None:
    """Never replace an evaluation made with the other TTA setting (e.g. data named "tta"): say how to proceed."""
    path = out_dir / layout.SUMMARY_FILE
    if not path.is_file():
        return
    before = store.read_json(path)
    if isinstance(before, dict) and bool(before.get("tta", False)) != tta:
        held = "with" if before.get("tta") else "without"
        raise VirionError(
            f"{out_dir}: holds an evaluation {held} TTA that this one would replace; "
            "move or delete that folder first if it should go"
        )


def evaluate_ensembles(
    run_dir: Path,
    members: dict[str, tuple],
    class_names: list[str],
    data_name: str | None,
    label: str,
    data_path: str,
    batch_size: int,
    progress: bool = True,
    *,
    tta: bool = False,
    variant: str | None = None,
) -> dict[str, dict]:
    """The run's ensembles as rows of their own: `RUN/ensemble/evaluation/` (the mean of every model)
    and `RUN/ensemble-weighted/evaluation/` (recommended.json's validation-fitted weights, when adopted).

    members: {model: (files, labels, test probabilities, SplitArrays, images/s)} from `evaluate_run`;
    each ensemble is scored on the test images every member could read. tta: the members' probabilities
    were made with TTA (then so is the ensemble); variant: the side folder suffix (`layout.tta_variant`).
    """
    from virion.evaluation.ensemble import aligned, combine

    results: dict[str, dict] = {}
    for name in layout.ENSEMBLE_NAMES:  # drop what an earlier evaluation left, so no stale row survives
        stale = layout.evaluation_dir(run_dir / name, data_name, variant) / layout.SUMMARY_FILE
        stale.unlink(missing_ok=True)
    if len(members) < 2:
        return results
    recommended = store.read_recommended(run_dir) or {}
    names = list(members)
    combos = {layout.ENSEMBLE: (names, None)}
    weighted = (recommended.get("ensembles") or {}).get(layout.WEIGHTED_ENSEMBLE)
    if weighted and sorted(weighted["members"]) == sorted(names):
        combos[layout.WEIGHTED_ENSEMBLE] = (list(weighted["members"]), list(weighted["weights"]))
    files, labels, probs = aligned({n: members[n][:3] for n in names})
    first = members[names[0]]
    index = {f: i for i, f in enumerate(first[0])}
    shown = first[3].images[[index[f] for f in files]] if files else first[3].images[:0]
    speed = 1.0 / sum(1.0 / max(members[n][4], 1e-9) for n in names)  # every member runs on each image
    for name, (combo_members, weights) in combos.items():
        out_dir = layout.evaluation_dir(run_dir / name, data_name, variant)
        how = (
            "mean"
            if weights is None
            else "validation-fitted weights " + ", ".join(f"{m} {w:.3f}" for m, w in zip(combo_members, weights))
        )
        summary = evaluate_model(
            None,
            shown,
            labels,
            class_names,
            out_dir,
            files=files,
            batch_size=batch_size,
            model_name=name,
            data_name=label,
            probabilities=combine([probs[m] for m in combo_members], weights),
            images_per_second=speed,
            tta=tta,
        )
        summary.update(
            model=name,
            kind="ensemble",
            members=list(combo_members),
            weights=weights,
            combination=how,
            data_path=data_path,
            own_test_split=data_name is None,
            tta_is_run_setting=variant is None,
        )
        if weights is not None:  # the weights come from recommended.json: say at which TTA setting they were fitted
            summary["weights_fitted_with_tta"] = bool(recommended.get("tta", False))
        store.write_json(out_dir / layout.SUMMARY_FILE, summary)
        results[name] = summary
        if progress:
            print(
                f"  {name} ({how}): accuracy {summary['accuracy']:.4f}, "
                f"macro F1 {summary['macro_f1']:.4f}{' ' + tta_text(tta) if tta else ''} -> {out_dir}",
                file=sys.stderr,
            )
    return results


def _relative(files: Sequence[Path], root: Path) -> list[str]:
    """Paths relative to the dataset root when possible: shorter and stable when the data moves."""
    out = []
    for f in files:
        try:
            out.append(str(Path(f).relative_to(root)))
        except ValueError:
            out.append(str(f))
    return out

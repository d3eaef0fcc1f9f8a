"""Evaluate trained models on the test set and write every result a person looks at.

`evaluate_model` is the core: it takes a model and arrays (so a notebook can call it on anything)
and writes reports, matrices, plots and per-file predictions into one folder. `evaluate_run` reads a
run folder, rebuilds the run's test split exactly as training did (same dataset options, same
decode settings, through the decode cache) and evaluates each model in it.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from virion.errors import VirionError
from virion.evaluation import metrics
from virion.reports import plots

EVALUATION_DIR = "evaluation"
MAX_MISTAKES = 16


def _as_model_input(batch: np.ndarray) -> np.ndarray:
    """uint8 grayscale (B, H, W) or (B, H, W, 1) → float32 (B, H, W, 3) raw 0..255, as models expect."""
    batch = np.asarray(batch)
    if batch.ndim == 3:
        batch = batch[..., None]
    if batch.shape[-1] == 1:
        batch = np.repeat(batch, 3, axis=-1)
    return batch.astype(np.float32, copy=False)


def predict_probabilities(model, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, float]:
    """Softmax outputs in input order, and inference speed in images per second.

    Every batch has the same shape (the last one is padded, the padding's outputs dropped) so the
    graph is traced once; that first trace runs on an untimed warm-up batch, so the speed measures
    inference, not tracing.
    """
    n = len(images)
    if n == 0:
        return np.zeros((0, int(model.output_shape[-1])), dtype=np.float32), 0.0
    batch_size = max(1, min(int(batch_size), n))

    def batch(i: int) -> np.ndarray:
        x = _as_model_input(images[i:i + batch_size])
        if len(x) < batch_size:
            x = np.concatenate([x, np.zeros((batch_size - len(x), *x.shape[1:]), x.dtype)])
        return x

    model.predict_on_batch(batch(0))  # warm-up: graph tracing is not inference time
    outputs = []
    start = time.perf_counter()
    for i in range(0, n, batch_size):
        outputs.append(np.asarray(model.predict_on_batch(batch(i)))[: min(batch_size, n - i)])
    seconds = time.perf_counter() - start
    return np.concatenate(outputs).astype(np.float32), (n / seconds if seconds > 0 else float("inf"))


def _top_k(probs: np.ndarray, class_names: Sequence[str], k: int = 3) -> list[str]:
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [";".join(f"{class_names[j]}:{row[j]:.4f}" for j in idx) for row, idx in zip(probs, order)]


def write_predictions(path: Path, files: Sequence, labels: np.ndarray, probs: np.ndarray,
                      class_names: Sequence[str]) -> Path:
    """predictions.csv: file, true_class, predicted_class, confidence, top3, one row per input in order."""
    pred = probs.argmax(axis=1)
    rows = [
        {"file": str(f), "true_class": class_names[int(t)], "predicted_class": class_names[int(p)],
         "confidence": float(probs[i, p]), "top3": top}
        for i, (f, t, p, top) in enumerate(zip(files, labels, pred, _top_k(probs, class_names)))
    ]
    if not rows:
        path.write_text("file,true_class,predicted_class,confidence,top3\n", encoding="utf-8")
        return path
    return metrics.write_csv(rows, path)


def evaluate_model(model, images: np.ndarray, labels, class_names: Sequence[str], out_dir: Path, *,
                   files: Sequence | None = None, history_csv: Path | None = None, batch_size: int = 64) -> dict:
    """Predict `images` in order, write all evaluation outputs into `out_dir`, return a summary dict.

    images: uint8 (N, H, W) grayscale (or (N, H, W, 3)); labels: int (N,) indices into class_names.
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
    outputs = int(model.output_shape[-1])
    if outputs != n_classes:
        raise VirionError(f"the model has {outputs} outputs but {n_classes} class names were given; "
                          "evaluate with the class list from the model's metadata.json")

    probs, speed = predict_probabilities(model, images, batch_size=batch_size)
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
    metrics.write_csv([{"true_class": name, **{p: int(cm[i, j]) for j, p in enumerate(class_names)}}
                       for i, name in enumerate(class_names)], out_dir / "confusion_matrix.csv")
    plots.plot_confusion(cm, class_names, out_dir / "confusion_matrix.png")
    plots.plot_confusion(cm, class_names, out_dir / "confusion_matrix_normalized.png", normalize=True)
    if history_csv is not None and Path(history_csv).is_file():
        plots.plot_curves(Path(history_csv), out_dir / "curves.png")
    write_predictions(out_dir / "predictions.csv", files, labels, probs, class_names)

    wrong = np.flatnonzero(pred != labels)
    worst = wrong[np.argsort(-confidence[wrong], kind="stable")][:MAX_MISTAKES]  # most confident first
    plots.plot_mistakes([images[i] for i in worst], [class_names[labels[i]] for i in worst],
                        [class_names[pred[i]] for i in worst], [float(confidence[i]) for i in worst],
                        out_dir / "mistakes.png", title=f"Most confident mistakes ({len(wrong)} in all)")

    summary = {
        "model": getattr(model, "name", ""),
        "n_images": int(len(labels)),
        "n_mistakes": int(len(wrong)),
        "accuracy": float((pred == labels).mean()) if len(labels) else 0.0,
        "macro_precision": float(report["macro avg"]["precision"]),
        "macro_recall": float(report["macro avg"]["recall"]),
        "macro_f1": float(report["macro avg"]["f1-score"]),
        "weighted_f1": float(report["weighted avg"]["f1-score"]),
        "inference_images_per_second": float(speed),
        "batch_size": int(batch_size),
        "class_names": class_names,
        "warnings": notes,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


# --------------------------------------------------------------------------- run folders


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VirionError(f"{path}: missing {what}; is this a run folder written by `virion train`?") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise VirionError(f"{path}: cannot read {what} ({exc}); re-run `virion train` for this run") from None


def model_dirs(run_dir: Path) -> list[Path]:
    """Model sub-folders of a run (those with a metadata.json), sorted by name."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise VirionError(f"{run_dir}: run folder not found; pass a folder written by `virion train` (runs/NAME)")
    found = sorted(p.parent for p in run_dir.glob("*/metadata.json"))
    if not found:
        raise VirionError(f"{run_dir}: no trained models in this run folder (no */metadata.json); "
                          "train first with `virion train`")
    return found


def model_file(model_dir: Path) -> Path:
    """The model's native .keras file (not the resume checkpoint under state/).

    metadata.json's `files.keras` wins; otherwise `<model>_virus_classification.keras`, otherwise
    the only .keras file in the folder.
    """
    try:
        named = json.loads((model_dir / "metadata.json").read_text(encoding="utf-8")).get("files", {}).get("keras")
    except (OSError, json.JSONDecodeError, AttributeError):
        named = None
    preferred = ([model_dir / named] if named else []) + [model_dir / f"{model_dir.name}_virus_classification.keras"]
    for candidate in preferred:
        if candidate.is_file():
            return candidate
    candidates = sorted(model_dir.glob("*.keras"))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise VirionError(f"{model_dir}: no .keras model file; the training of this model did not finish, "
                          "resume it with `virion train --resume RUN`")
    raise VirionError(f"{model_dir}: several .keras files ({', '.join(p.name for p in candidates)}); "
                      "keep only the trained model's file or name it in metadata.json 'files'")


def load_model(path: Path):
    """Load a saved .keras model without its optimizer; our custom layers register on import."""
    import keras

    for module in ("virion.models", "virion.models.registry", "virion.data.augment"):
        try:  # importing registers custom layers (e.g. augmentation) with Keras' deserializer
            __import__(module)
        except ImportError:
            pass
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file is a user problem
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VirionError(f"{path}: cannot load the model ({reason}); re-train it or check it is a Keras 3 "
                          ".keras file") from None


def _stretch(value):
    if value is None or (isinstance(value, str) and value.lower() in {"none", "off", "linear"}):
        return None
    return tuple(float(v) for v in value)


def _load_test_split(config: dict, data, input_size: int, cache: dict):
    """Rebuild the run's test split (same options as training) and decode it, once per input size."""
    try:
        from virion.data.cache import load_split_arrays
        from virion.data.decode import DecodeSettings
        from virion.data.layout import load_dataset
    except ImportError as exc:  # pragma: no cover - only while the data layer is being written
        raise VirionError(f"the data layer is not available ({exc}); reinstall virion") from None

    if "dataset" not in cache:
        root = data if data is not None else config.get("data")
        if not root:
            raise VirionError("config.json has no 'data' path; pass the dataset with --data DIR")
        if not Path(root).exists():
            raise VirionError(f"{root}: dataset folder not found; pass its current location with --data DIR")
        kwargs = {k: config[k] for k in ("classes", "exclude", "include_subfolders", "val_fraction",
                                         "test_fraction", "seed") if k in config and config[k] is not None}
        if "exclude" in kwargs:
            kwargs["exclude"] = tuple(kwargs["exclude"])
        cache["dataset"] = load_dataset(Path(root), **kwargs)
    if input_size not in cache:
        dataset = cache["dataset"]
        test = dataset.splits.get("test")
        if test is None or len(test.files) == 0:
            raise VirionError(f"{dataset.root}: the dataset has no test images; give it a test split "
                              "(test/ folder or test_fraction > 0)")
        settings = DecodeSettings(size=int(input_size), stretch=_stretch(config.get("stretch", (0.5, 99.5))))
        cache[input_size] = load_split_arrays(test, settings)
    return cache["dataset"], cache[input_size]


def evaluate_run(run_dir: Path, data: Path | None = None, *, batch_size: int | None = None,
                 progress: bool = True) -> dict[str, dict]:
    """Evaluate every model of a run on its test split; writes `<model>/evaluation/`.

    data: the dataset folder, when it moved since training (default: config.json's "data").
    Returns {model folder name: summary dict}.
    """
    run_dir = Path(run_dir)
    dirs = model_dirs(run_dir)
    config = _read_json(run_dir / "config.json", "config.json")
    batch_size = int(batch_size or config.get("batch_size") or 64)
    cache: dict = {}
    results = {}
    for model_dir in dirs:
        meta = _read_json(model_dir / "metadata.json", "metadata.json")
        class_names = meta.get("class_names")
        if not class_names:
            raise VirionError(f"{model_dir / 'metadata.json'}: no class_names; re-train this model")
        input_size = int(meta.get("input_size") or config.get("input_size") or 128)
        dataset, arrays = _load_test_split(config, data, input_size, cache)
        if list(dataset.class_names) != list(class_names):
            raise VirionError(f"{model_dir / 'metadata.json'}: the model's classes {class_names} differ from the "
                              f"dataset's {list(dataset.class_names)}; pass the training dataset with --data DIR")
        if progress:
            print(f"evaluating {model_dir.name} on {len(arrays.labels)} test images", file=sys.stderr)
        model = load_model(model_file(model_dir))
        summary = evaluate_model(model, arrays.images, arrays.labels, class_names, model_dir / EVALUATION_DIR,
                                 files=_relative(arrays.files, dataset.root), history_csv=model_dir / "history.csv",
                                 batch_size=batch_size)
        summary["model"] = model_dir.name
        summary["skipped_test_files"] = [[str(p), why] for p, why in arrays.failures]
        (model_dir / EVALUATION_DIR / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        results[model_dir.name] = summary
        if progress:
            print(f"  {model_dir.name}: accuracy {summary['accuracy']:.4f}, macro F1 {summary['macro_f1']:.4f} "
                  f"-> {model_dir / EVALUATION_DIR}", file=sys.stderr)
        del model
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

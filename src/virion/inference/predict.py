"""Predict classes for new images with saved models: batched, optional TTA and ensembling.

Images are decoded exactly as in training (`virion.data.decode`, the model's own input
size and stretch from its metadata), once per distinct decode setting, so several models
of the same size share one decode. Unreadable files are listed with a reason, never fatal.
"""

from __future__ import annotations

import csv
import io
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from virion.atomic import atomic_write_text
from virion.data.decode import DecodeError, DecodeSettings, decode_rgb
from virion.data.layout import IMAGE_EXTENSIONS
from virion.errors import VirionError
from virion.inference.loading import LoadedModel

ENSEMBLE_NAME = "ensemble"


@dataclass
class PredictionRow:
    """One file's prediction by one model (or by the ensemble)."""

    file: Path
    model: str
    class_name: str
    confidence: float
    top_k: list[tuple[str, float]]
    probabilities: np.ndarray  # full distribution over the model's class list


@dataclass
class PredictionResult:
    """All rows plus the inputs in order, so CSVs and tables can line up with the files given."""

    rows: list[PredictionRow] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # every input, in order
    top_k: int = 3

    def for_model(self, model: str) -> list[PredictionRow]:
        return [r for r in self.rows if r.model == model]


def collect_inputs(inputs) -> list[Path]:
    """Image files named directly or found (recursively) in folders: sorted, no hidden files.

    A file named directly is kept whatever its extension, so that a bad file is reported
    as unreadable rather than silently dropped; in folders only image extensions count.
    """
    extensions = {e.lower() for e in IMAGE_EXTENSIONS}
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = [
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in extensions
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            ]
            files.extend(sorted(found))
        else:
            raise VirionError(f"{path}: no such file or folder; pass image files or folders of images")
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def dihedral_views(batch: np.ndarray) -> list[np.ndarray]:
    """The 8 flips x 90-degree rotations of a (B, H, W, C) batch (TEM has no preferred orientation)."""
    views = []
    for flipped in (batch, batch[:, :, ::-1]):
        for k in range(4):
            views.append(np.ascontiguousarray(np.rot90(flipped, k=k, axes=(1, 2))))
    return views


def _as_probabilities(scores: np.ndarray) -> np.ndarray:
    """Model outputs as a distribution; models end in softmax, but guard against logits."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.min() >= 0 and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):
        return scores / scores.sum(axis=1, keepdims=True)
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _predict_batch(model, batch_uint8: np.ndarray, tta: bool, pad_to: int | None = None) -> np.ndarray:
    """Softmax for one batch (mean over the 8 dihedral views with `tta`).

    A short batch is padded to `pad_to` by repeating its last image, so the compiled predict
    function keeps one input shape instead of being traced again for the last, partial batch.
    """
    n = len(batch_uint8)
    x = batch_uint8.astype("float32")
    if pad_to is not None and n < pad_to:
        x = np.concatenate([x, np.repeat(x[-1:], pad_to - n, axis=0)])
    views = dihedral_views(x) if tta else [x]
    probs = [_as_probabilities(model.predict_on_batch(v)[:n]) for v in views]
    return np.mean(probs, axis=0)


def _decode_batch(files: list[Path], settings: DecodeSettings):
    images, ok, failed = [], [], []
    for i, f in enumerate(files):
        try:
            images.append(decode_rgb(f, settings))
            ok.append(i)
        except DecodeError as exc:
            failed.append((i, str(exc)))
        except (OSError, ValueError, MemoryError) as exc:  # decoder should wrap these; be safe anyway
            failed.append((i, f"{type(exc).__name__}: {exc}"))
    return images, ok, failed


def predict_files(
    models: list[LoadedModel],
    files: list[Path],
    *,
    top_k: int = 3,
    tta: bool = False,
    ensemble: bool = False,
    batch_size: int = 32,
    progress: bool = True,
) -> PredictionResult:
    """Predict every file with every model; with `ensemble`, one averaged row per file instead."""
    if not models:
        raise VirionError("no model to predict with; pass a model file, model folder or run folder")
    if top_k < 1:
        raise VirionError(f"--top-k {top_k}: must be at least 1")
    if batch_size < 1:
        raise VirionError(f"--batch-size {batch_size}: must be at least 1")
    if ensemble and len(models) > 1:
        first = models[0]
        for m in models[1:]:
            if m.class_names != first.class_names:
                raise VirionError(
                    f"--ensemble: models {first.name} and {m.name} have different class lists; "
                    "ensemble only models trained on the same classes, or drop --ensemble"
                )
    files = [Path(f) for f in files]
    probs = {m.name: np.full((len(files), m.num_classes), np.nan) for m in models}
    failures: dict[int, str] = {}

    # One decode per distinct setting (input size + stretch), shared by the models that use it.
    groups: dict[DecodeSettings, list[LoadedModel]] = {}
    for m in models:
        groups.setdefault(m.decode, []).append(m)

    from tqdm.auto import tqdm

    tasks = [(settings, group, start) for settings, group in groups.items()
             for start in range(0, len(files), batch_size)]
    pad_to = batch_size if len(files) > batch_size else None
    # Decode the next batch in a background thread while the model works on this one
    # (decoders and TensorFlow both release the GIL for their heavy parts).
    with ThreadPoolExecutor(max_workers=1) as pool, tqdm(
        total=len(files) * len(groups), desc="predict", unit="img", file=sys.stderr,
        disable=not progress or len(files) <= batch_size,
    ) as bar:
        pending = pool.submit(_decode_batch, files[:batch_size], tasks[0][0]) if tasks else None
        for k, (settings, group, start) in enumerate(tasks):
            images, ok, failed = pending.result()
            if k + 1 < len(tasks):
                next_settings, _, next_start = tasks[k + 1]
                pending = pool.submit(_decode_batch, files[next_start:next_start + batch_size], next_settings)
            for i, reason in failed:
                failures.setdefault(start + i, reason)
            if images:
                batch = np.stack(images)
                idx = [start + i for i in ok]
                for m in group:
                    probs[m.name][idx] = _predict_batch(m.model, batch, tta, pad_to)
            bar.update(len(images) + len(failed))

    result = PredictionResult(files=files, top_k=top_k)
    result.unreadable = [(files[i], failures[i]) for i in sorted(failures)]
    readable = [i for i in range(len(files)) if i not in failures]
    if ensemble and len(models) > 1:
        stacked = np.mean([probs[m.name] for m in models], axis=0)
        outputs = [(ENSEMBLE_NAME, models[0].class_names, stacked)]
    else:
        outputs = [(m.name, m.class_names, probs[m.name]) for m in models]
    for i in readable:
        for name, class_names, p in outputs:
            result.rows.append(_row(files[i], name, class_names, p[i], top_k))
    return result


def _row(file: Path, model: str, class_names: list[str], p: np.ndarray, top_k: int) -> PredictionRow:
    order = np.argsort(-p, kind="stable")[: min(top_k, len(class_names))]
    top = [(class_names[j], float(p[j])) for j in order]
    return PredictionRow(file=file, model=model, class_name=top[0][0], confidence=top[0][1],
                         top_k=top, probabilities=p.astype("float32"))


def csv_header(top_k: int) -> list[str]:
    header = ["file", "model", "class", "confidence"]
    for k in range(1, top_k + 1):
        header += [f"top{k}_class", f"top{k}_confidence"]
    return header + ["error"]


def write_csv(result: PredictionResult, path: str | Path) -> Path:
    """One row per file and model in input order; unreadable files get a row with the reason."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    by_file: dict[Path, list[PredictionRow]] = {}
    for r in result.rows:
        by_file.setdefault(r.file, []).append(r)
    errors = dict(result.unreadable)
    k = result.top_k
    rows = []
    rows.append(csv_header(k))
    for f in result.files:
        if f in errors:
            rows.append([str(f), "", "", ""] + [""] * (2 * k) + [errors[f]])
            continue
        for r in by_file.get(f, []):
            cells = [str(r.file), r.model, r.class_name, f"{r.confidence:.6f}"]
            for j in range(k):
                if j < len(r.top_k):
                    cells += [r.top_k[j][0], f"{r.top_k[j][1]:.6f}"]
                else:
                    cells += ["", ""]
            rows.append(cells + [""])
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    return atomic_write_text(path, text.getvalue())


def format_table(result: PredictionResult) -> str:
    """A plain-text table (file, [model,] class, confidence) followed by the unreadable files."""
    models = sorted({r.model for r in result.rows})
    show_model = len(models) > 1
    header = ["file"] + (["model"] if show_model else []) + ["class", "confidence"]
    lines = [[str(r.file)] + ([r.model] if show_model else []) + [r.class_name, f"{r.confidence:.3f}"]
             for r in result.rows]
    widths = [max(len(h), *(len(row[i]) for row in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in lines]
    if result.unreadable:
        out.append(f"{len(result.unreadable)} unreadable file(s), skipped:")
        out += [f"  {f}: {reason}" for f, reason in result.unreadable]
    return "\n".join(line.rstrip() for line in out)

"""The model card the page shows: what was trained, on what, and how well it did on its test set.

Read through `virion.run` (the run folder's only readers). A missing or damaged piece reads as
"not evaluated" / "unknown" with a note rather than failing: a model worth serving stays servable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from virion.errors import VirionError
from virion.run.layout import CONFIG_FILE, DATASET_FILE, EVALUATION_DIR, SUMMARY_FILE
from virion.run.schema import is_synthetic
from virion.run.store import read_config, read_dataset_info, read_json


@dataclass
class ModelCard:
    name: str
    input_size: int | None
    weights: str
    test_accuracy: float | None
    macro_f1: float | None
    model_file: str | None


@dataclass
class RunCard:
    run: str
    class_names: list[str]
    models: list[ModelCard]
    synthetic: bool
    synthetic_reason: str | None
    data: str | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _as_dict(meta: Any) -> dict:
    if isinstance(meta, dict):
        return meta
    to_dict = getattr(meta, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    return asdict(meta) if is_dataclass(meta) else {}


def run_folder_of(path: Path) -> Path:
    """The run folder for a run folder, a model folder inside one, or a model file inside one."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    for candidate in (folder, folder.parent):
        if (candidate / CONFIG_FILE).is_file() or (candidate / DATASET_FILE).is_file():
            return candidate
    return folder


def describe_weights(value: Any) -> str:
    """'imagenet' / 'none' / a path, as a person reads it."""
    if value is None:
        return "unknown"
    text = str(value)
    if text.lower() == "imagenet":
        return "ImageNet pre-trained"
    if text.lower() in ("none", "random", "scratch", ""):
        return "random init"
    return f"from file {Path(text).name}"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _test_summary(model_dir: Path) -> dict:
    """The model's own test-set evaluation (`virion evaluate RUN`), or {} when there is none."""
    path = model_dir / EVALUATION_DIR / SUMMARY_FILE
    if not path.is_file():
        return {}
    try:
        summary = read_json(path)
    except VirionError:
        return {}
    return summary if isinstance(summary, dict) else {}


def _synthetic(run_dir: Path, metas: list[dict], notes: list[str]) -> tuple[bool, str | None, str | None]:
    """(trained on virion's synthetic data?, the evidence, the training data folder)."""
    info = None
    try:
        info = read_dataset_info(run_dir)
    except VirionError as exc:
        notes.append(f"dataset.json unreadable ({exc}).")
    roots: list[str] = []
    if info is not None:
        if info.root:
            roots.append(info.root)
        if info.synthetic:
            return True, f"{DATASET_FILE} records the training data as written by `virion synth`", info.root or None
    try:
        data = read_config(run_dir).get("data") if (run_dir / CONFIG_FILE).is_file() else None
    except VirionError:
        data = None
    if isinstance(data, str):
        roots.append(data)
    for meta in metas:
        if meta.get("synthetic") is True:
            return True, "the model's metadata marks its training data as synthetic", roots[0] if roots else None
        data = (meta.get("config") or {}).get("data") if isinstance(meta.get("config"), dict) else None
        if isinstance(data, str):
            roots.append(data)
    for root in roots:
        path = Path(root).expanduser()
        candidates = [path] if path.is_absolute() else [path, run_dir.parent / path]
        for candidate in candidates:
            for folder in (candidate, candidate.parent):  # the data, or one split of it
                if is_synthetic(folder):
                    return True, f"the training data {folder} was written by `virion synth`", root
    return False, None, roots[0] if roots else None


def build_card(path: Path, classifier) -> RunCard:
    """The card for the models `classifier` loaded from `path`."""
    path = Path(path)
    run_dir = run_folder_of(path)
    metas = {name: _as_dict(meta) for name, meta in (classifier.metadata or {}).items()}
    notes: list[str] = []
    models = []
    tta_views = set()
    for name in classifier.model_names:
        meta = metas.get(name, {})
        model_dir = run_dir / name
        if not model_dir.is_dir():  # a model folder or file served on its own
            model_dir = path if path.is_dir() else path.parent
        summary = _test_summary(model_dir)
        if summary.get("tta"):
            tta_views.add(summary.get("tta_views") or 8)
        files = meta.get("files") if isinstance(meta.get("files"), dict) else {}
        size = meta.get("input_size")
        models.append(
            ModelCard(
                name=name,
                input_size=size if isinstance(size, int) else None,
                weights="none (texture features, no network)"
                if meta.get("kind") == "texture"
                else describe_weights(meta.get("weights")),
                test_accuracy=_number(summary.get("accuracy")),
                macro_f1=_number(summary.get("macro_f1")),
                model_file=files.get("keras") or files.get("h5") or files.get("texture"),
            )
        )
    synthetic, reason, data = _synthetic(run_dir, list(metas.values()), notes)
    if tta_views:  # the figures were measured with TTA (`virion train --eval-tta`); say so where they are shown
        views = "/".join(str(v) for v in sorted(tta_views))
        notes.append(f"Test accuracy and macro F1 are with {views}-way test-time augmentation (the run's eval_tta).")
    if not any(m.test_accuracy is not None for m in models):
        notes.append(f"No test-set evaluation in the run yet: `virion evaluate {run_dir}` adds it.")
    return RunCard(
        run=str(run_dir),
        class_names=list(classifier.class_names),
        models=models,
        synthetic=synthetic,
        synthetic_reason=reason,
        data=data,
        notes=notes,
    )

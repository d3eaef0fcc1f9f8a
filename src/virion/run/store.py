"""The only readers and writers of a run folder's files; every write is atomic (temp file + rename).

Reads raise `VirionError` with one line naming the file and what to do; writes never leave half a
file behind. Training writes through here; evaluation, inference, reports and the CLI read through here.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from virion.atomic import atomic_write_text
from virion.errors import VirionError
from virion.run.layout import CONFIG_FILE, DATASET_FILE, METADATA_FILE, RECOMMENDED_FILE, SKIPPED_FILE
from virion.run.schema import DatasetInfo, ModelMetadata


def write_json(path: str | Path, payload: Any) -> Path:
    """Write JSON atomically so a crash never leaves half a file."""
    return atomic_write_text(path, json.dumps(payload, indent=2, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VirionError(f"{path}: not found; is this a virion run folder?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VirionError(f"{path}: not readable JSON ({exc}); the run folder is damaged") from None


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


# ----------------------------------------------------------------------------- config.json
def write_config(run_dir: str | Path, config) -> Path:
    """config.json: the resolved settings (a TrainConfig or a plain dict)."""
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return write_json(Path(run_dir) / CONFIG_FILE, values)


def read_config(run_dir: str | Path) -> dict:
    """config.json as a dict (TrainConfig.from_dict turns it back into settings)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise VirionError(f"{path}: missing; pass a run folder written by `virion train`")
    values = read_json(path)
    if not isinstance(values, dict):
        raise VirionError(f"{path}: expected a JSON object of settings; the run folder is damaged")
    return values


# ----------------------------------------------------------------------------- dataset.json, skipped files
def write_dataset_info(run_dir: str | Path, dataset, failures: Iterable[tuple[Path, str]] = ()) -> Path:
    """dataset.json (from a Dataset or a DatasetInfo) and skipped_files.txt (decode failures)."""
    run_dir = Path(run_dir)
    failures = list(failures)
    info = dataset if isinstance(dataset, DatasetInfo) else DatasetInfo.from_dataset(dataset, failures)
    write_json(run_dir / DATASET_FILE, info.to_dict())
    write_skipped_files(run_dir, failures or [(d["path"], d["reason"]) for d in info.skipped])
    return run_dir / DATASET_FILE


def read_dataset_info(run_dir: str | Path) -> DatasetInfo | None:
    """dataset.json, or None when the run has none (runs trained on arrays)."""
    path = Path(run_dir) / DATASET_FILE
    return DatasetInfo.from_dict(read_json(path), str(path)) if path.is_file() else None


def write_skipped_files(run_dir: str | Path, failures: Iterable[tuple[Path, str]]) -> Path:
    """skipped_files.txt: one `path<TAB>reason` line per file that could not be decoded."""
    lines = [f"{p}\t{' '.join(str(reason).split())}" for p, reason in failures]
    return atomic_write_text(Path(run_dir) / SKIPPED_FILE, "".join(line + "\n" for line in lines))


def read_skipped_files(run_dir: str | Path) -> list[tuple[str, str]]:
    path = Path(run_dir) / SKIPPED_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip():
            file, _, reason = line.partition("\t")
            rows.append((file, reason))
    return rows


# ----------------------------------------------------------------------------- metadata.json
def library_versions() -> dict[str, str]:
    import keras
    import numpy

    from virion import __version__

    versions = {
        "python": platform.python_version(),
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "virion": __version__,
        "backend": keras.backend.backend(),
    }
    if keras.backend.backend() == "tensorflow":
        import tensorflow

        versions["tensorflow"] = tensorflow.__version__
    return versions


def write_metadata(model_folder: str | Path, metadata: ModelMetadata | None = None, **fields: Any) -> Path:
    """metadata.json of one model: pass a ModelMetadata, or its fields as keywords (as training does).

    Keywords that ModelMetadata does not name go to `extra`; `model=` is the model's name.
    """
    if metadata is None:
        fields.setdefault("versions", library_versions())
        for key in ("train_seconds",):
            if fields.get(key) is not None:
                fields[key] = round(float(fields[key]), 3)
        if fields.get("images_per_second") is not None:
            fields["images_per_second"] = round(float(fields["images_per_second"]), 2)
        values = {k: v for k, v in fields.items()}
        if "stretch" not in values and isinstance(values.get("config"), dict) and "stretch" in values["config"]:
            values["stretch"] = values["config"]["stretch"]
        metadata = ModelMetadata.from_dict(
            _plain(values), str(Path(model_folder) / METADATA_FILE), default_name=Path(model_folder).name
        )
    return write_json(Path(model_folder) / METADATA_FILE, metadata.to_dict())


def _plain(values: dict) -> dict:
    """JSON round trip: tuples become lists, numpy scalars numbers (what the file will hold)."""
    return json.loads(json.dumps(values, default=_json_default))


def read_metadata(model_folder: str | Path, run_config: dict | None = None) -> ModelMetadata:
    """metadata.json of a model folder (or beside a model file)."""
    named = Path(model_folder)
    folder = named.parent if named.is_file() else named
    path = folder / METADATA_FILE
    if not path.is_file():
        raise VirionError(
            f"{named}: no {METADATA_FILE} beside it; it needs class_names (in output order) and input_size "
            "(the models from `virion train` have one; keep it beside the model file)"
        )
    if run_config is None:
        run_config = _run_config_beside(folder)
    return ModelMetadata.from_dict(read_json(path), str(path), run_config=run_config, default_name=folder.name)


def failed_models(run_dir: str | Path) -> dict[str, str]:
    """{model folder name: why} for the models of a run whose training failed (metadata "status": "failed").

    Evaluation, comparison and the report skip these and show them as failed.
    """
    from virion.run.layout import model_dirs

    failed = {}
    for folder in model_dirs(run_dir):
        meta = read_metadata(folder)
        if meta.failed:
            failed[folder.name] = meta.failure or "training failed (no reason recorded)"
    return failed


def _run_config_beside(model_folder: Path) -> dict | None:
    """The run's config.json one level up, when it is there and readable (else None)."""
    path = model_folder.parent / CONFIG_FILE
    try:
        values = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return values if isinstance(values, dict) else None


# ----------------------------------------------------------------------------- recommended.json
def write_recommended(run_dir: str | Path, recommendation: dict) -> Path:
    """recommended.json: the classifier `predict`/`serve`/`virion.load` use by default (see read_recommended)."""
    return write_json(Path(run_dir) / RECOMMENDED_FILE, recommendation)


def read_recommended(run_dir: str | Path) -> dict | None:
    """recommended.json of a run, checked, or None when the run has none (older runs, single models).

    {"classifier": a model name | "ensemble" | "ensemble-weighted", "members": [model names],
     "weights": [floats, one per member] | None, "why": text, "metric": text,
     "ensembles": {name: {"members": [...], "weights": [...]}}, "candidates": {name: validation scores}}
    """
    path = Path(run_dir) / RECOMMENDED_FILE
    if not path.is_file():
        return None
    values = read_json(path)
    problem = _recommendation_problem(values)
    if problem:
        raise VirionError(
            f"{path}: {problem}; damaged: delete it (then `virion evaluate {Path(run_dir)}` writes it again)"
        )
    return values


def _recommendation_problem(values: Any) -> str | None:
    if not isinstance(values, dict):
        return "expected a JSON object"
    if not isinstance(values.get("classifier"), str) or not values["classifier"]:
        return "classifier must be a model or ensemble name"
    combos = {"": values, **(values.get("ensembles") or {})}
    if not isinstance(values.get("ensembles", {}), dict):
        return "ensembles must be an object"
    for name, combo in combos.items():
        members, weights = combo.get("members") if isinstance(combo, dict) else None, None
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            return f"members{' of ' + name if name else ''} must be a list of model names"
        weights = combo.get("weights")
        if weights is not None and (
            not isinstance(weights, list)
            or len(weights) != len(members)
            or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights)
            or sum(weights) <= 0
        ):
            return f"weights{' of ' + name if name else ''} must be one non-negative number per member"
    return None

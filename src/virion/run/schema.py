"""The versioned contents of `metadata.json` and `dataset.json`, as dataclasses.

Folders written before the schema had a version (virion 0.1) read as version 0: the same keys,
no `schema_version`. Unknown keys are kept in `extra` and written back, so a newer writer's
additions survive a round trip through an older reader. A file from a newer schema than this
code knows is refused with one line saying to upgrade virion.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virion.errors import VirionError

SCHEMA_VERSION = 1
MODEL_STATUSES = ("trained", "failed")  # metadata.json "status"; absent (older runs) reads as "trained"
DEFAULT_STRETCH = (0.5, 99.5)
_LINEAR = ("none", "linear", "off", "false")


def parse_stretch(value: Any, where: str = "stretch") -> tuple[float, float] | None:
    """The one parser of the stretch setting: [low, high] percentiles, or None for linear scaling.

    Accepts None / False / "none" / "linear" / "off" (linear) and any two numbers 0 <= low < high <= 100.
    """
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in _LINEAR):
        return None
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise VirionError(f"{where}: stretch must be two percentiles [LOW, HIGH] or 'linear', got {value!r}") from None
    if not 0 <= low < high <= 100:
        raise VirionError(f"{where}: stretch must be two percentiles 0 <= LOW < HIGH <= 100, got {value!r}")
    return (low, high)


def _check_version(values: dict, where: str) -> int:
    version = values.get("schema_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise VirionError(f"{where}: schema_version must be a whole number, got {version!r}")
    if version > SCHEMA_VERSION:
        raise VirionError(
            f"{where}: written by a newer virion (schema {version}, this one reads up to "
            f"{SCHEMA_VERSION}); upgrade virion with `pip install -U virion`"
        )
    return version


@dataclass
class ModelMetadata:
    """Everything a later stage needs to use a trained model without the run's config."""

    class_names: list[str]
    input_size: int
    name: str = ""  # the model's key (resnet50, xception, ...), written as "model"
    stretch: tuple[float, float] | None = DEFAULT_STRETCH  # how images were decoded in training
    scaling: str | None = None
    weights: str | None = None
    base_frozen: bool | None = None
    kind: str | None = None  # "scratch" | "transfer"
    display_name: str | None = None
    last_conv_layer: str | None = None
    data_fingerprint: str | None = None
    best_epoch: int | None = None
    best_val_accuracy: float | None = None
    best_val_macro_f1: float | None = None
    train_seconds: float | None = None
    images_per_second: float | None = None
    params: int | None = None
    epochs_run: int | None = None
    status: str = "trained"  # or "failed": training stopped (loss became NaN) and wrote no model file
    failure: str | None = None  # why it failed, one line (shown by evaluate, compare and the report)
    files: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not name
    schema_version: int = SCHEMA_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def failed(self) -> bool:
        """Training of this model failed: there is nothing to load, evaluate or compare."""
        return self.status == "failed"

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("extra", "name")}
        values["stretch"] = list(self.stretch) if self.stretch is not None else None
        values["schema_version"] = SCHEMA_VERSION
        return {"schema_version": SCHEMA_VERSION, "model": self.name, **values, **self.extra}

    @classmethod
    def from_dict(
        cls, values: dict, where: str = "metadata.json", *, run_config: dict | None = None, default_name: str = ""
    ) -> ModelMetadata:
        """Read a metadata dict (any schema up to SCHEMA_VERSION); `where` names the file in errors.

        stretch: the model's own key, else its embedded config's, else the run's config.json
        (`run_config`), else the default (0.5, 99.5) that every release used.
        """
        if not isinstance(values, dict):
            raise VirionError(f"{where}: expected a JSON object with class_names and input_size")
        _check_version(values, where)
        names = values.get("class_names")
        if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
            raise VirionError(f"{where}: class_names must be a list of at least two class names in model output order")
        size = values.get("input_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 8:
            raise VirionError(
                f"{where}: input_size must be a whole number of pixels per side (8 or more), got {size!r}"
            )
        config = values.get("config") if isinstance(values.get("config"), dict) else {}
        stretch = DEFAULT_STRETCH
        for source in (values, config, run_config or {}):
            if "stretch" in source:
                stretch = parse_stretch(source["stretch"], where)
                break
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in known and k not in ("stretch", "extra", "name")}
        kwargs.update(
            class_names=list(names),
            input_size=size,
            stretch=stretch,
            config=dict(config),
            name=str(values.get("model") or values.get("name") or default_name),
        )
        status = values.get("status", "trained")
        if status not in MODEL_STATUSES:
            raise VirionError(f"{where}: status must be one of {', '.join(MODEL_STATUSES)}, got {status!r}")
        kwargs["status"] = status
        kwargs["failure"] = None if values.get("failure") is None else str(values["failure"])
        kwargs["files"] = dict(values.get("files") or {})
        kwargs["versions"] = dict(values.get("versions") or {})
        kwargs["schema_version"] = SCHEMA_VERSION
        extra = {k: v for k, v in values.items() if k not in known and k not in ("model", "name")}
        return cls(**kwargs, extra=extra)


@dataclass
class DatasetInfo:
    """dataset.json: what the run was trained on (classes, counts, files left out, fingerprint)."""

    root: str
    class_names: list[str]
    layout: str | None = None
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> images
    ignored: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}: not images
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}: undecodable
    fingerprint: str | None = None
    synthetic: bool = False  # made by `virion synth` (reports say so)
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_dataset(cls, dataset, failures=()) -> DatasetInfo:
        """From a `virion.data.layout.Dataset` and the decode failures of its splits."""
        root = Path(dataset.root)
        return cls(
            root=str(root),
            layout=dataset.layout,
            class_names=list(dataset.class_names),
            counts=dataset.counts(),
            ignored=[{"path": str(p), "reason": r} for p, r in dataset.ignored],
            skipped=[{"path": str(p), "reason": r} for p, r in failures],
            fingerprint=dataset.fingerprint(),
            synthetic=is_synthetic(root),
        )

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        values["schema_version"] = SCHEMA_VERSION
        return {**values, **self.extra}

    @classmethod
    def from_dict(cls, values: dict, where: str = "dataset.json") -> DatasetInfo:
        if not isinstance(values, dict):
            raise VirionError(f"{where}: expected a JSON object; the run folder is damaged")
        _check_version(values, where)
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in known and k != "extra"}
        kwargs.setdefault("root", "")
        kwargs["class_names"] = list(values.get("class_names") or values.get("classes") or [])
        kwargs["schema_version"] = SCHEMA_VERSION
        return cls(**kwargs, extra={k: v for k, v in values.items() if k not in known and k != "classes"})


def is_synthetic(root: str | Path) -> bool:
    """Whether a dataset folder was written by `virion synth` (it leaves synth.json and a README)."""
    root = Path(root)
    try:
        if (root / "synth.json").is_file():
            return True
        readme = root / "README.txt"
        return readme.is_file() and readme.read_text(encoding="utf-8", errors="replace")[:200].upper().startswith(
            "SYNTHETIC"
        )
    except OSError:
        return False

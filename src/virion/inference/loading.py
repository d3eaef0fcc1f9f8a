"""Load saved models with the metadata needed to use them on new images.

A saved model alone is not enough to predict: the class order, the input size and the
decoding settings live in `metadata.json` beside it (see docs/architecture.md, training).
This module turns a path the user typed (a `.keras` or `.h5` file, a model folder or a
whole run folder) into `LoadedModel`s that carry all of that together.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virion.data.decode import DecodeSettings
from virion.errors import VirionError

METADATA_FILE = "metadata.json"
MODEL_SUFFIXES = (".keras", ".h5")  # preference order: the native format first
DEFAULT_STRETCH = (0.5, 99.5)


@dataclass
class LoadedModel:
    """A Keras model plus what is needed to feed it and to read its output."""

    name: str
    model: Any  # keras.Model; typed loosely so this module imports without Keras being loaded
    class_names: list[str]
    input_size: int
    decode: DecodeSettings
    source: Path
    metadata: dict

    @property
    def decode_settings(self) -> DecodeSettings:
        return self.decode

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_predictor(path: str | Path, model_name: str | None = None) -> list[LoadedModel]:
    """Load every model that `path` names (or only `model_name` from a run folder).

    path: a `.keras` / `.h5` file (metadata.json in the same folder), a model folder
    (holding metadata.json and a model file) or a run folder (one sub-folder per model).
    """
    path = Path(path)
    if not path.exists():
        raise VirionError(f"{path}: no such file or folder; pass a .keras/.h5 model, a model folder or a run folder")
    if path.is_file():
        if path.suffix.lower() not in MODEL_SUFFIXES:
            raise VirionError(f"{path}: not a model file; pass a .keras or .h5 file, a model folder or a run folder")
        loaded = _load_model_file(path)
        if model_name and model_name not in (loaded.name, path.parent.name):
            raise VirionError(f"--model {model_name}: {path} holds model '{loaded.name}'; drop --model or pick that model")
        return [loaded]
    if (path / METADATA_FILE).is_file():
        loaded = _load_model_file(_pick_model_file(path))
        if model_name and model_name not in (loaded.name, path.name):
            raise VirionError(f"--model {model_name}: {path} holds model '{loaded.name}'; drop --model or pick that model")
        return [loaded]
    model_dirs = sorted(p for p in path.iterdir() if p.is_dir() and (p / METADATA_FILE).is_file())
    if not model_dirs:
        raise VirionError(
            f"{path}: no model found; expected a run folder with <model>/{METADATA_FILE} sub-folders, "
            f"a model folder with {METADATA_FILE}, or a .keras/.h5 file"
        )
    if model_name:
        chosen = [d for d in model_dirs if d.name == model_name or _metadata_name(d) == model_name]
        if not chosen:
            names = ", ".join(d.name for d in model_dirs)
            raise VirionError(f"--model {model_name}: not in run {path}; choose one of: {names}")
        model_dirs = chosen
    return [_load_model_file(_pick_model_file(d)) for d in model_dirs]


def _metadata_name(model_dir: Path) -> str | None:
    try:
        meta = json.loads((model_dir / METADATA_FILE).read_text())
        return meta.get("name") or meta.get("model")
    except (OSError, ValueError, AttributeError):
        return None


def _pick_model_file(model_dir: Path) -> Path:
    """The model file of a model folder: the native `.keras` if present, else the `.h5`."""
    for suffix in MODEL_SUFFIXES:
        candidates = sorted(p for p in model_dir.iterdir() if p.is_file() and p.suffix.lower() == suffix)
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            # Several files: the one named after the model wins (runs/NAME/resnet50/resnet50_virus_...).
            named = [p for p in candidates if p.stem == f"{model_dir.name}_virus_classification"]
            if len(named) == 1:
                return named[0]
            names = ", ".join(p.name for p in candidates)
            raise VirionError(f"{model_dir}: several model files ({names}); pass the file you want instead of the folder")
    raise VirionError(f"{model_dir}: no .keras or .h5 model file beside {METADATA_FILE}; pass a folder written by `virion train`")


def read_metadata(model_file: Path) -> dict:
    """Read and check `metadata.json` beside a model file."""
    meta_path = model_file.parent / METADATA_FILE
    if not meta_path.is_file():
        raise VirionError(
            f"{model_file}: no {METADATA_FILE} beside it; it needs class_names (list, in output order) "
            f"and input_size (the models from `virion train` have one, keep it in the same folder)"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise VirionError(f"{meta_path}: not readable JSON ({exc}); restore it from the run folder") from None
    if not isinstance(meta, dict):
        raise VirionError(f"{meta_path}: expected a JSON object with class_names and input_size")
    names = meta.get("class_names")
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise VirionError(f"{meta_path}: class_names must be a list of at least two class names in model output order")
    return meta


def _stretch_from(meta: dict, model_file: Path) -> tuple[float, float] | None:
    """The percentile stretch used in training: metadata first, then the run's config.json.

    A key that is present with null / "none" / "linear" / false means plain linear scaling.
    """
    run_config: dict = {}
    config_path = model_file.parent.parent / "config.json"
    if config_path.is_file():
        try:
            loaded = json.loads(config_path.read_text())
            run_config = loaded if isinstance(loaded, dict) else {}
        except (OSError, UnicodeDecodeError, ValueError):
            run_config = {}
    model_config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    sources = [meta, meta.get("decode"), model_config, model_config.get("data"),
               run_config, run_config.get("decode"), run_config.get("data")]
    for source in sources:
        if not isinstance(source, dict):
            continue
        for key in ("stretch", "percentile_stretch"):
            if key in source:
                return _parse_stretch(source[key], model_file)
    return DEFAULT_STRETCH


def _parse_stretch(value: Any, model_file: Path) -> tuple[float, float] | None:
    if value is None or value is False or (isinstance(value, str) and value.lower() in ("none", "linear", "off")):
        return None
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise VirionError(
            f"{model_file.parent / METADATA_FILE}: stretch must be [low, high] percentiles or null, got {value!r}"
        ) from None
    return (low, high)


def _register_custom_objects() -> None:
    """Import virion's model code so any layer it registers with Keras can be deserialized."""
    for module in ("virion.models.batchnorm", "virion.models.registry"):
        try:
            importlib.import_module(module)
        except ImportError:
            pass


def _load_model_file(model_file: Path) -> LoadedModel:
    import keras

    meta = read_metadata(model_file)
    _register_custom_objects()
    try:
        model = keras.saving.load_model(model_file, compile=False)
    except VirionError:
        raise
    except Exception as exc:  # Keras raises many types for a bad file; the user needs one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VirionError(f"{model_file}: could not load the model ({reason}); re-save it with `virion train`") from None

    outputs = model.outputs
    if len(outputs) != 1 or outputs[0].shape[-1] != len(meta["class_names"]):
        raise VirionError(
            f"{model_file}: the model gives {outputs[0].shape[-1] if len(outputs) == 1 else len(outputs)} outputs "
            f"but {METADATA_FILE} lists {len(meta['class_names'])} class_names; use the metadata.json of this model"
        )
    input_size = meta.get("input_size")
    shape = model.inputs[0].shape
    if input_size is None and shape[1] is not None:
        input_size = int(shape[1])
    if not isinstance(input_size, int) or isinstance(input_size, bool) or input_size < 8:
        raise VirionError(f"{model_file.parent / METADATA_FILE}: input_size must be an integer (pixels per side)")
    if shape[1] is not None and (shape[1], shape[2]) != (input_size, input_size):
        raise VirionError(
            f"{model_file}: model input is {shape[1]}x{shape[2]} but {METADATA_FILE} says input_size {input_size}; "
            "use the metadata.json of this model"
        )
    name = meta.get("name") or meta.get("model") or model_file.parent.name
    settings = DecodeSettings(size=input_size, stretch=_stretch_from(meta, model_file))
    return LoadedModel(
        name=str(name),
        model=model,
        class_names=list(meta["class_names"]),
        input_size=input_size,
        decode=settings,
        source=model_file,
        metadata=meta,
    )

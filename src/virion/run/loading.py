"""The only model loader: find the model file of a run/model folder and load it in safe mode.

Nothing loaded from a file runs code: `safe_mode=True` always (virion's own layers are registered
serializable classes, so nothing needs unsafe deserialization); the texture model (metadata kind
"texture") is JSON + NumPy arrays read without pickle. A model file alone is not enough to use a
model; `metadata.json` beside it gives the class order, input size and decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virion.errors import VirionError
from virion.run.layout import METADATA_FILE, STATE_DIR, model_file_stem
from virion.run.schema import ModelMetadata
from virion.run.store import read_config, read_metadata

MODEL_SUFFIXES = (".keras", ".h5")  # preference order: the native format first
TEXTURE_KIND = "texture"  # metadata.json "kind" of the texture model (virion.models.texture)
TEXTURE_FILE = "texture_model.json"  # its default file name (arrays beside it in texture_model.npz)


@dataclass
class LoadedModel:
    """A Keras model plus its metadata and the file it came from."""

    name: str
    model: Any  # keras.Model, or a TextureModel (typed loosely so this module imports without Keras)
    metadata: ModelMetadata
    source: Path

    @property
    def kind(self) -> str | None:
        """metadata "kind": "scratch" | "transfer" (Keras networks) | "texture" (no network)."""
        return self.metadata.kind

    @property
    def is_network(self) -> bool:
        """A Keras network (Grad-CAM applies); the texture model is not."""
        return self.metadata.kind != TEXTURE_KIND

    @property
    def class_names(self) -> list[str]:
        return self.metadata.class_names

    @property
    def input_size(self) -> int:
        return self.metadata.input_size

    @property
    def num_classes(self) -> int:
        return len(self.metadata.class_names)

    @property
    def decode(self):
        """The `DecodeSettings` the model was trained with (size and stretch)."""
        from virion.data.decode import DecodeSettings

        return DecodeSettings(size=self.metadata.input_size, stretch=self.metadata.stretch)


def find_model_file(model_folder: str | Path) -> Path:
    """The trained model's file in a model folder (never the resume checkpoint under state/).

    metadata.json's `files` entry wins; then `<folder>_virus_classification.keras|.h5`; then the
    only `.keras` (else the only `.h5`) file of the folder.
    """
    folder = Path(model_folder)
    named: list[Path] = []
    try:
        metadata = read_metadata(folder)
    except VirionError:
        metadata = None
    if metadata is not None and metadata.failed:
        why = metadata.failure or "no reason recorded"
        raise VirionError(
            f"{folder}: the training of this model failed ({why}); there is no model to load; "
            "train it again with a lower learning rate (`virion train ... --overwrite`)"
        )
    if metadata is not None and metadata.kind == TEXTURE_KIND:
        path = folder / (metadata.files.get("texture") or TEXTURE_FILE)
        if path.is_file():
            return path
        raise VirionError(
            f"{folder}: no {path.name}; the texture model was not saved whole; train it again with "
            f"`virion train --resume {folder.parent}`"
        )
    if metadata is not None:
        named = [folder / metadata.files[k] for k in ("keras", "h5") if metadata.files.get(k)]
    named += [folder / f"{model_file_stem(folder.name)}{s}" for s in MODEL_SUFFIXES]
    for candidate in named:
        if candidate.is_file() and candidate.parent.name != STATE_DIR:
            return candidate
    for suffix in MODEL_SUFFIXES:
        found = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == suffix and not p.name.startswith(".")
        )
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise VirionError(
                f"{folder}: several model files ({', '.join(p.name for p in found)}); pass the "
                "file you want instead of the folder"
            )
    raise VirionError(
        f"{folder}: no .keras or .h5 model file; the training of this model did not finish, "
        f"resume it with `virion train --resume {folder.parent}`"
    )


def register_custom_objects() -> None:
    """Import the modules that register virion's layers with Keras (batch norm, augmentation)."""
    import virion.data.augment  # noqa: F401
    import virion.models.application_layers  # noqa: F401 - ConvNeXt's LayerScale, for .h5 files
    import virion.models.batchnorm  # noqa: F401


def load_keras_model(path: str | Path, compile: bool = False):
    """Load a `.keras`/`.h5` file in safe mode; a bad file is one `VirionError` line, not a traceback."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise VirionError(f"{path}: no such model file; pass a .keras or .h5 file written by `virion train`")
    register_custom_objects()
    try:
        return keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file; the user needs one line
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        raise VirionError(
            f"{path}: could not load the model ({reason[:300]}); re-save it with `virion train` "
            "(models are loaded in safe mode: files that run code are refused)"
        ) from None


def load_texture_model(path: str | Path):
    """A saved texture model (JSON + arrays, no pickle); a bad file is one `VirionError` line."""
    from virion.models.texture.model import TextureModel

    path = Path(path)
    try:
        return TextureModel.load(path)
    except VirionError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VirionError(
            f"{path}: could not load the texture model ({str(exc).strip()[:300] or type(exc).__name__}); "
            "train it again with `virion train --models texture`"
        ) from None


def load_model_file(model_file: str | Path, metadata: ModelMetadata | None = None) -> LoadedModel:
    """One model file plus the metadata.json beside it, checked against each other."""
    model_file = Path(model_file)
    metadata = metadata or read_metadata(model_file)
    where = model_file.parent / METADATA_FILE
    if metadata.kind == TEXTURE_KIND or model_file.suffix.lower() == ".json":
        model = load_texture_model(model_file)
        names = list(getattr(model, "class_names", []) or [])
        if names != list(metadata.class_names):
            raise VirionError(
                f"{model_file}: the model's classes {names} differ from the class_names of {where}; "
                "use the metadata.json of this model"
            )
        return LoadedModel(
            name=metadata.name or model_file.parent.name, model=model, metadata=metadata, source=model_file
        )
    model = load_keras_model(model_file)
    outputs = model.outputs
    if len(outputs) != 1 or outputs[0].shape[-1] != metadata.num_classes:
        got = outputs[0].shape[-1] if len(outputs) == 1 else len(outputs)
        raise VirionError(
            f"{model_file}: the model gives {got} outputs but {where} lists {metadata.num_classes} "
            "class_names; use the metadata.json of this model"
        )
    shape = model.inputs[0].shape
    if shape[1] is not None and (shape[1], shape[2]) != (metadata.input_size, metadata.input_size):
        raise VirionError(
            f"{model_file}: model input is {shape[1]}x{shape[2]} but {where} says input_size "
            f"{metadata.input_size}; use the metadata.json of this model"
        )
    return LoadedModel(name=metadata.name or model_file.parent.name, model=model, metadata=metadata, source=model_file)


def resolve_model_files(path: str | Path, model_name: str | list[str] | None = None) -> list[Path]:
    """The model files that `path` names (a file, a model folder or a run folder), without loading them."""
    path = Path(path)
    wanted = [model_name] if isinstance(model_name, str) else list(model_name or [])
    if not path.exists():
        raise VirionError(f"{path}: no such file or folder; pass a .keras/.h5 model, a model folder or a run folder")
    if path.is_file():
        if path.suffix.lower() not in MODEL_SUFFIXES and not _is_texture_file(path):
            raise VirionError(f"{path}: not a model file; pass a .keras or .h5 file, a model folder or a run folder")
        folders, files = [path.parent], [path]
    elif (path / METADATA_FILE).is_file():
        folders, files = [path], [find_model_file(path)]
    else:
        folders = sorted(p for p in path.iterdir() if p.is_dir() and (p / METADATA_FILE).is_file())
        if not folders:
            raise VirionError(
                f"{path}: no model found; expected a run folder with <model>/{METADATA_FILE} "
                f"sub-folders, a model folder with {METADATA_FILE}, or a .keras/.h5 file"
            )
        files = []
        for folder in folders:
            if wanted and folder.name not in wanted and _meta_name(folder) not in wanted:
                continue
            if not wanted and _failed(folder):
                continue  # a whole run: its failed models are skipped (asked for by name: find_model_file says why)
            files.append(find_model_file(folder))
        if not files and not wanted:
            raise VirionError(
                f"{path}: the training of every model of this run failed (see each model's "
                f"{METADATA_FILE}); there is no model to load"
            )
        missing = [w for w in wanted if w not in {f.parent.name for f in files} | {_meta_name(f.parent) for f in files}]
        if missing:
            names = ", ".join(f.name for f in folders)
            raise VirionError(f"--model {missing[0]}: not in run {path}; choose one of: {names}")
        return files
    if wanted and not set(wanted) & {folders[0].name, _meta_name(folders[0])}:
        raise VirionError(
            f"--model {wanted[0]}: {path} holds model '{_meta_name(folders[0]) or folders[0].name}'; "
            "drop --model or pick that model"
        )
    return files


def _is_texture_file(path: Path) -> bool:
    """The JSON file of a texture model (its metadata.json beside it says kind "texture")."""
    if path.suffix.lower() != ".json" or path.name == METADATA_FILE:
        return False
    try:
        return read_metadata(path.parent).kind == TEXTURE_KIND
    except VirionError:
        return False


def _failed(folder: Path) -> bool:
    try:
        return read_metadata(folder).failed
    except VirionError:
        return False


def _meta_name(folder: Path) -> str | None:
    try:
        return read_metadata(folder).name or None
    except VirionError:
        return None


def load_models(path: str | Path, model_name: str | list[str] | None = None) -> list[LoadedModel]:
    """Every model that `path` names (or only `model_name`, a name or list of names, from a run folder).

    path: a `.keras`/`.h5` file (metadata.json beside it), a model folder or a run folder.
    """
    files = resolve_model_files(path, model_name)
    run_config = None
    if Path(path).is_dir() and not (Path(path) / METADATA_FILE).is_file():
        try:
            run_config = read_config(path)
        except VirionError:
            run_config = None
    return [load_model_file(f, read_metadata(f, run_config=run_config)) for f in files]

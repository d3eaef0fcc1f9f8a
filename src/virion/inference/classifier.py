"""`Classifier`: trained model(s) + metadata + the decode settings they were trained with.

The one prediction path: `virion predict`, `virion explain`, evaluation, the web page and a
notebook all decode and batch through here. Inputs may be paths, folders, NumPy arrays (any
dtype, grayscale or RGB, any size) or PIL images; each is decoded exactly as training decoded
its files (`virion.data.decode`), at each model's own input size and stretch, and handed to the
model's `predict_proba` (`virion.inference.proba`: Keras networks and the texture model alike).

A run folder's `recommended.json` (chosen on the validation split) names the classifier that
`predict(model=None)` uses: one model, the mean of the models ("ensemble") or their validation-
fitted weighted mean ("ensemble-weighted").
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from virion.data.decode import DecodeError, DecodeSettings, decode_array, decode_image
from virion.errors import VirionError
from virion.inference.inputs import as_items
from virion.inference.proba import as_predictor
from virion.run.layout import ENSEMBLE, METADATA_FILE, WEIGHTED_ENSEMBLE
from virion.run.loading import LoadedModel, load_models
from virion.run.schema import ModelMetadata
from virion.run.store import read_recommended

__all__ = ["ENSEMBLE", "WEIGHTED_ENSEMBLE", "Classifier", "Predictions", "Explanation", "load"]


@dataclass
class Predictions:
    """Class probabilities for the readable inputs, in input order, plus the unreadable ones."""

    probabilities: np.ndarray  # (N, C) float, rows line up with `sources`
    class_names: list[str]
    sources: list[str]  # the readable inputs (file paths, or "array[i]" / "image[i]")
    failures: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    model: str = ""
    order: list[str] = field(default_factory=list)  # every input, in order (readable or not)

    @property
    def predicted(self) -> list[str]:
        return [self.class_names[i] for i in np.argmax(self.probabilities, axis=1)] if len(self.sources) else []

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(axis=1) if len(self.sources) else np.zeros(0)

    def top_k(self, k: int = 3) -> list[list[tuple[str, float]]]:
        """Per input, the k most likely (class, probability) pairs, most likely first."""
        k = max(1, min(int(k), len(self.class_names)))
        order = np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]
        return [[(self.class_names[j], float(p[j])) for j in idx] for p, idx in zip(self.probabilities, order)]

    def to_rows(self, k: int = 3) -> list[dict]:
        """Rows with exactly the columns of `virion predict --out` (unreadable inputs get an error row)."""
        return rows_for([self], k)


def csv_columns(k: int) -> list[str]:
    """`virion predict --out`: file (as given), class, probability, the classifier, the top k, error."""
    header = ["file", "class", "probability", "model"]
    for i in range(1, k + 1):
        header += [f"top{i}_class", f"top{i}_probability"]
    return header + ["error"]


def rows_for(predictions: list[Predictions], k: int = 3) -> list[dict]:
    """CSV rows of several models' predictions: per input in order, one row per model."""
    columns = csv_columns(k)
    errors: dict[str, str] = {}
    per_source: dict[str, list[dict]] = {}
    order: list[str] = []
    seen: set[str] = set()
    for p in predictions:
        for source, reason in p.failures:
            errors.setdefault(source, reason)
        for source, top in zip(p.sources, p.top_k(k)):
            row = dict.fromkeys(columns, "")
            row.update(file=source, model=p.model, **{"class": top[0][0]}, probability=f"{top[0][1]:.6f}")
            for i, (name, prob) in enumerate(top, 1):
                row[f"top{i}_class"], row[f"top{i}_probability"] = name, f"{prob:.6f}"
            per_source.setdefault(source, []).append(row)
        for source in p.order or p.sources:
            if source not in seen:
                seen.add(source)
                order.append(source)
    rows = []
    for source in order:
        if source in errors:
            rows.append({**dict.fromkeys(columns, ""), "file": source, "error": errors[source]})
        else:
            rows.extend(per_source.get(source, []))
    return rows


@dataclass
class Explanation:
    """Grad-CAM of one image: where the model looked for `class_name`."""

    image: np.ndarray  # uint8 (H, W) grayscale, as decoded (at the display size)
    heatmap: np.ndarray  # float32 (H, W) in 0..1
    overlay: np.ndarray  # uint8 (H, W, 3): heatmap in colour over the image
    class_index: int
    class_name: str
    confidence: float  # the model's probability for class_name
    probabilities: np.ndarray  # the model's full distribution for the image
    model: str = ""
    layer: str = ""
    class_names: list[str] = field(default_factory=list, repr=False)

    @property
    def predicted(self) -> str:
        """The model's top class for the image (may differ from the explained `class_name`)."""
        return self.class_names[int(np.argmax(self.probabilities))] if self.class_names else ""


class Classifier:
    """Predict and explain with the models of a run (or one model file/folder)."""

    def __init__(self, models: list[LoadedModel], recommended: dict | None = None):
        if not models:
            raise VirionError("no model to predict with; pass a model file, model folder or run folder")
        self._models = {m.name: m for m in models}
        self._predictors = {m.name: as_predictor(m.model) for m in models}
        self.recommended = recommended  # the run's recommended.json (None: none recorded)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{m.name} {m.input_size}px" for m in self.models)
        return f"Classifier({sizes}; {len(self.class_names)} classes)"

    @classmethod
    def load(cls, path: str | Path, models: str | list[str] | None = None) -> Classifier:
        """A run folder, model folder or model file; `models`: None (all) or names to keep.

        A run folder's recommended.json comes along: `predict(model=None)` uses that classifier.
        """
        path = Path(path)
        is_run = path.is_dir() and not (path / METADATA_FILE).is_file()
        return cls(load_models(path, models), recommended=read_recommended(path) if is_run else None)

    # ------------------------------------------------------------------ facts
    @property
    def model_names(self) -> list[str]:
        return list(self._models)

    @property
    def models(self) -> list[LoadedModel]:
        return list(self._models.values())

    @property
    def class_names(self) -> list[str]:
        return list(self.models[0].class_names)

    @property
    def input_size(self) -> int:
        return self.models[0].input_size

    @property
    def metadata(self) -> dict[str, ModelMetadata]:
        return {name: m.metadata for name, m in self._models.items()}

    def combinations(self) -> dict[str, tuple[list[str], list[float]]]:
        """The ensembles this classifier can answer as: name -> (member models, weights summing to 1).

        "ensemble": the equal-weight mean of the loaded models (two or more); "ensemble-weighted":
        recommended.json's validation-fitted weights, when all its members are loaded.
        """
        combos: dict[str, tuple[list[str], list[float]]] = {}
        if len(self._models) > 1:
            combos[ENSEMBLE] = (self.model_names, [1.0 / len(self._models)] * len(self._models))
        for name, combo in ((self.recommended or {}).get("ensembles") or {}).items():
            members = list(combo.get("members") or [])
            if name == ENSEMBLE or not members or not all(m in self._models for m in members):
                continue
            weights = [float(w) for w in combo.get("weights") or [1.0] * len(members)]
            combos[name] = (members, [w / sum(weights) for w in weights])
        return combos

    @property
    def choices(self) -> list[str]:
        """Every name `predict(model=...)` accepts: the models, then the ensembles."""
        return self.model_names + [c for c in self.combinations() if c not in self._models]

    @property
    def default_model(self) -> str:
        """What `predict(model=None)` uses: the recommended classifier when loaded, else the ensemble
        of several models, else the only one."""
        chosen = (self.recommended or {}).get("classifier")
        if chosen and (chosen in self._models or chosen in self.combinations()):
            return chosen
        return ENSEMBLE if len(self._models) > 1 else self.model_names[0]

    @property
    def why(self) -> str:
        """Why `default_model` is the default, in one line (recommended.json's reason when it applies)."""
        if self.recommended and self.recommended.get("classifier") == self.default_model:
            return str(self.recommended.get("why") or "recommended for this run")
        if self.default_model == ENSEMBLE:
            return "the mean of the loaded models (no recommendation recorded for them)"
        return "the only loaded model"

    def predictor(self, model: str):
        """The object answering `predict_proba` for one loaded model (virion.inference.proba)."""
        return self._predictors[self.get(model).name]

    def get(self, model: str | None = None) -> LoadedModel:
        """One loaded model by name (None: the only / first one)."""
        if model is None:
            return self.models[0]
        if model not in self._models:
            raise VirionError(f"--model {model}: not loaded; choose one of: {', '.join(self.choices)}")
        return self._models[model]

    # ------------------------------------------------------------------ decoding
    def decode(self, inputs, *, model: str | None = None) -> np.ndarray:
        """uint8 (N, size, size) grayscale exactly as the model sees them (unreadable inputs raise)."""
        images, _, failures = self._decode(as_items(inputs), self.get(model).decode)
        if failures:
            source, reason = failures[0]
            raise VirionError(f"{source}: cannot be decoded ({reason})")
        return images

    @staticmethod
    def _decode(items, settings: DecodeSettings, workers: int | None = None, progress: bool = False):
        def one(item):
            name, value = item
            try:
                image = (
                    decode_image(value, settings)
                    if isinstance(value, (str, Path))
                    else decode_array(value, settings, name=name)
                )
                return name, image, None
            except DecodeError as exc:
                return name, None, exc.reason
            except (OSError, ValueError, MemoryError) as exc:  # the decoder wraps these; be safe anyway
                return name, None, f"{type(exc).__name__}: {exc}"

        workers = workers or min(4, os.cpu_count() or 1)
        from tqdm.auto import tqdm

        with (
            ThreadPoolExecutor(max_workers=workers) as pool,
            tqdm(  # decoders release the GIL
                total=len(items),
                desc=f"decode {settings.size}px",
                unit="img",
                file=sys.stderr,
                disable=not progress or len(items) <= 64,
            ) as bar,
        ):
            results = []
            for result in pool.map(one, items):
                results.append(result)
                bar.update()
        images = [img for _, img, why in results if why is None]
        sources = [name for name, _, why in results if why is None]
        failures = [(name, why) for name, _, why in results if why is not None]
        size = settings.size
        stacked = np.stack(images) if images else np.zeros((0, size, size), np.uint8)
        return stacked, sources, failures

    # ------------------------------------------------------------------ predicting
    def predict(
        self, inputs, *, model: str | None = None, tta: bool = False, batch_size: int = 32, progress: bool = False
    ) -> Predictions:
        """Probabilities for every readable input, one row per input.

        model: a model name, "ensemble" (mean of the loaded models), "ensemble-weighted" (the run's
        validation-fitted weights) or None (`default_model`: the run's recommended classifier).
        tta: average over the 8 flips/90-degree turns.
        """
        if model is None:
            model = self.default_model
        if model == ENSEMBLE and len(self._models) == 1:
            model = self.model_names[0]  # the ensemble of one model is that model
        combos = self.combinations()
        if model not in combos:
            return self.predict_each(
                inputs, models=[self.get(model).name], tta=tta, batch_size=batch_size, progress=progress
            )[0]
        names, weights = combos[model]
        first = self.get(names[0])
        for name in names[1:]:
            if self.get(name).class_names != first.class_names:
                raise VirionError(
                    f"ensemble: models {first.name} and {name} have different class lists; "
                    "ensemble only models trained on the same classes"
                )
        each = self.predict_each(inputs, models=names, tta=tta, batch_size=batch_size, progress=progress)
        rows = [{s: i for i, s in enumerate(p.sources)} for p in each]
        readable = [s for s in each[0].sources if all(s in r for r in rows)]
        stacked = sum(
            w * np.asarray(p.probabilities, dtype=np.float64)[[r[s] for s in readable]]
            for w, p, r in zip(weights, each, rows)
        )
        failures = {s: r for p in each for s, r in p.failures}
        return Predictions(
            np.asarray(stacked, dtype=np.float64).reshape(len(readable), len(first.class_names)),
            list(first.class_names),
            readable,
            list(failures.items()),
            model,
            each[0].order,
        )

    def predict_each(
        self,
        inputs,
        *,
        models: list[str] | None = None,
        tta: bool = False,
        batch_size: int = 32,
        progress: bool = False,
    ) -> list[Predictions]:
        """One `Predictions` per model; images are decoded once per distinct decode setting."""
        if int(batch_size) < 1:
            raise VirionError(f"--batch-size {batch_size}: must be at least 1")
        items = as_items(inputs)
        chosen = [self.get(name) for name in (models or self.model_names)]
        decoded: dict[DecodeSettings, tuple] = {}
        out = []
        for m in chosen:
            if m.decode not in decoded:
                decoded[m.decode] = self._decode(items, m.decode, progress=progress)
            images, sources, failures = decoded[m.decode]
            probs = self._predictors[m.name].predict_proba(images, batch_size=int(batch_size), tta=bool(tta))
            out.append(
                Predictions(
                    probs, list(m.class_names), list(sources), list(failures), m.name, [name for name, _ in items]
                )
            )
        return out

    # ------------------------------------------------------------------ explaining
    def explain(
        self,
        input,
        *,
        class_index: int | str | None = None,
        model: str | None = None,
        layer: str | None = None,
        size: int | None = None,
    ) -> Explanation:
        """Grad-CAM for one image (a path, array or PIL image): heatmap and overlay.

        class_index: an index or class name (default: the predicted class). size: pixels per side
        of the returned image/heatmap (default: the model's input size; larger shows more detail).
        """
        from virion.inference.gradcam import find_last_conv_layer, gradcam_with_probabilities, overlay

        m = self.get(None if model in self.combinations() else model)
        if not m.is_network:
            raise VirionError(
                f"{m.name}: the {m.kind or 'non-network'} model has no Grad-CAM (it is not a network); "
                "explain a network of the run with --model NAME"
            )
        items = as_items(input)
        if len(items) != 1:
            raise VirionError(f"explain takes one image at a time, got {len(items)}")
        if isinstance(class_index, str):
            if class_index not in m.class_names:
                raise VirionError(
                    f"--class {class_index}: not a class of model {m.name}; choose one of: {', '.join(m.class_names)}"
                )
            class_index = m.class_names.index(class_index)
        seen, _, failures = self._decode(items, m.decode, workers=1)
        if failures:
            raise VirionError(f"{failures[0][0]}: cannot be decoded ({failures[0][1]})")
        shown = seen[0]
        if size and size != m.input_size:
            from dataclasses import replace

            shown = self._decode(items, replace(m.decode, size=int(size)), workers=1)[0][0]
        layer = layer or find_last_conv_layer(m.model, preferred=_preferred_layer(m))
        heatmap, index, confidence, probs = gradcam_with_probabilities(
            m.model, seen[0], class_index, layer, out_size=shown.shape[:2]
        )
        return Explanation(
            image=shown,
            heatmap=heatmap,
            overlay=overlay(shown, heatmap),
            class_index=index,
            class_name=m.class_names[index],
            confidence=confidence,
            probabilities=probs,
            model=m.name,
            layer=layer,
            class_names=list(m.class_names),
        )


def _preferred_layer(m: LoadedModel) -> str | None:
    """The architecture's known last conv layer (metadata, else the model catalogue), if recorded."""
    if m.metadata.last_conv_layer:
        return m.metadata.last_conv_layer
    try:
        from virion.models.registry import model_info

        return getattr(model_info(m.name), "last_conv_layer", None)
    except (VirionError, KeyError, ValueError):  # not one of virion's architectures: search instead
        return None


def load(path: str | Path, models: str | list[str] | None = None) -> Classifier:
    """`virion.load(run)`: a `Classifier` for a run folder, model folder or .keras/.h5 file."""
    return Classifier.load(path, models)

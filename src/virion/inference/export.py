"""Export trained models for use outside virion: TensorFlow SavedModel, TFLite and ONNX.

Each export holds the traced forward pass only (no Python classes, nothing from virion), so it
loads with `tf.saved_model.load`, a TFLite interpreter or ONNX Runtime alone. Beside it goes
`export.json`: the class order and exactly what the input must be (float32 (N, S, S, 3) raw pixel
values 0..255, grayscale replicated to 3 channels, decoded with the recorded stretch); the
model scales inside its own graph, as in training.

After writing, each export is run on a few test images and compared with the Keras model
(the largest absolute difference in probability is reported), so a broken conversion is
caught here and not on a user's microscope PC.

SavedModel and TFLite come with TensorFlow. ONNX goes through Keras' own `model.export(format=
"onnx")`, which uses tf2onnx on the TensorFlow backend (extra: `pip install "virion[export]"`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from virion.errors import VirionError

FORMATS = ("savedmodel", "tflite", "onnx")
EXTRA_HINT = 'pip install "virion[export]"'
INFO_FILE = "export.json"
CHECK_IMAGES = 4
WARN_DIFF = 1e-3  # a larger difference in probability than this is reported as a warning


@dataclass
class ExportResult:
    """One exported model: where it went and how closely it matches the Keras model."""

    model: str
    format: str
    path: Path  # the SavedModel folder, the .tflite or the .onnx file
    folder: Path  # the model's export folder (also holds export.json)
    max_abs_diff: float | None  # vs Keras on CHECK_IMAGES images; None when no runtime could check
    check_note: str | None = None


def _need_tensorflow(fmt: str) -> None:
    import keras

    if keras.backend.backend() != "tensorflow":
        raise VirionError(
            f"--format {fmt}: exporting needs the TensorFlow backend (KERAS_BACKEND=tensorflow), "
            f"not '{keras.backend.backend()}'"
        )


def check_format_available(fmt: str) -> None:
    """Raise one line saying why `fmt` cannot be written here (before any model is loaded)."""
    if fmt not in FORMATS:
        raise VirionError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        missing = [name for name in ("tf2onnx", "onnx") if not _importable(name)]
        if missing:
            raise VirionError(
                f"--format onnx needs {' and '.join(missing)} (Keras converts TensorFlow graphs "
                f"with tf2onnx): {EXTRA_HINT}"
            )


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def check_images(input_size: int, count: int = CHECK_IMAGES, seed: int = 0) -> np.ndarray:
    """float32 (count, S, S, 3) in 0..255: noise, a smooth blob and flat areas, grayscale replicated.

    What matters is that the exported graph and Keras see identical numbers across the whole
    input range, not that the images look like virus particles.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:input_size, :input_size] / max(input_size - 1, 1)
    images = [
        rng.uniform(0, 255, (input_size, input_size)),
        255 * np.exp(-((yy - 0.4) ** 2 + (xx - 0.6) ** 2) / 0.05),
        np.full((input_size, input_size), 255.0) * (xx > 0.5),
        rng.normal(128, 30, (input_size, input_size)),
    ]
    gray = np.clip(np.stack((images * ((count + 3) // 4))[:count]), 0, 255).astype(np.float32)
    return np.repeat(gray[..., None], 3, axis=3)


# ---------------------------------------------------------------------------- writers
def _quiet_export(model, path: Path, fmt: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf2onnx/numpy FutureWarnings say nothing to a user
        model.export(str(path), format=fmt, verbose=False)


def _write_savedmodel(model, folder: Path) -> Path:
    path = folder / "saved_model"
    _quiet_export(model, path, "tf_saved_model")
    return path


def _write_tflite(model, folder: Path, name: str) -> Path:
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="virion-export-") as tmp:
        saved = _write_savedmodel(model, Path(tmp))
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        try:
            flatbuffer = converter.convert()
        except Exception as exc:  # noqa: BLE001 - the converter raises many types; one line for the user
            raise VirionError(
                f"{name}: TFLite conversion failed ({_first_line(exc)}); try --format savedmodel"
            ) from None
    path = folder / f"{name}.tflite"
    path.write_bytes(flatbuffer)
    return path


def _write_onnx(model, folder: Path, name: str) -> Path:
    path = folder / f"{name}.onnx"
    try:
        _quiet_export(model, path, "onnx")
    except ImportError as exc:
        raise VirionError(f"--format onnx needs {exc.name or 'tf2onnx'}: {EXTRA_HINT}") from None
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises many types; one line for the user
        raise VirionError(
            f"{name}: ONNX conversion failed ({_first_line(exc)}); try --format savedmodel or tflite"
        ) from None
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


# ---------------------------------------------------------------------------- runners (for the check)
def run_savedmodel(path: Path, images: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    return np.asarray(loaded.serve(tf.constant(images, tf.float32)))


def run_tflite(path: Path, images: np.ndarray) -> np.ndarray:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "tf.lite.Interpreter is deprecated": still the one TF ships
            interpreter = tf.lite.Interpreter(model_path=str(path))
    else:
        interpreter = Interpreter(model_path=str(path))
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], list(images.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], images.astype(np.float32))
    interpreter.invoke()
    return np.asarray(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))


def run_onnx(path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: images.astype(np.float32)})[0])


RUNNERS = {
    "savedmodel": (run_savedmodel, "tensorflow"),
    "tflite": (run_tflite, "tensorflow"),
    "onnx": (run_onnx, "onnxruntime"),
}


# ---------------------------------------------------------------------------- the job
def _info(loaded, fmt: str, artifact: Path, folder: Path) -> dict:
    from virion import __version__

    meta = loaded.metadata
    size = int(loaded.input_size)
    stretch = getattr(meta, "stretch", None)
    return {
        "model": loaded.name,
        "format": fmt,
        "file": artifact.relative_to(folder).as_posix(),
        "class_names": list(loaded.class_names),
        "input": {
            "shape": [None, size, size, 3],
            "dtype": "float32",
            "layout": "NHWC",
            "values": "raw pixel values 0..255 (the model scales them itself)",
            "channels": "grayscale replicated to 3 channels",
            "decode": {
                "size": size,
                "stretch_percentiles": list(stretch) if stretch else None,
                "note": "grayscale, percentile-stretched to 0..255 (16-bit aware), resized to size x size",
            },
        },
        "output": {"shape": [None, len(loaded.class_names)], "values": "softmax probabilities in class_names order"},
        "source": str(loaded.source),
        "exported_by": f"virion {__version__}",
    }


def export_models(
    path: str | Path,
    out: str | Path,
    fmt: str,
    *,
    model_name: str | None = None,
    overwrite: bool = False,
    check: bool = True,
) -> list[ExportResult]:
    """Export every model of `path` (a run, model folder or file; or only `model_name`) to out/<model>/."""
    from virion.run.loading import load_models

    fmt = str(fmt).lower()
    check_format_available(fmt)
    _need_tensorflow(fmt)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VirionError(f"--out {out}: is a file; give a folder for the exports")
    loaded_models = load_models(path, model_name)
    others = [m.name for m in loaded_models if not m.is_network]  # the texture model: JSON + arrays already
    loaded_models = [m for m in loaded_models if m.is_network]
    if not loaded_models:
        raise VirionError(
            f"{path}: {', '.join(others)} is not a network, so there is nothing to export to {fmt}; its "
            "texture_model.json + .npz (no pickle) are already the portable form"
        )
    for name in others:
        warnings.warn(
            f"{name} is not a network; not exported (its .json + .npz are portable as they are)", stacklevel=2
        )
    for loaded in loaded_models:
        target = out / loaded.name
        if target.exists() and not overwrite:
            raise VirionError(f"--out {out}: {target} already exists; choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for loaded in loaded_models:
        results.append(_export_one(loaded, out, fmt, check=check))
    return results


def _export_one(loaded, out: Path, fmt: str, *, check: bool) -> ExportResult:
    target = out / loaded.name
    # Written beside the target and renamed into place: an interrupted export leaves no half folder.
    staging = Path(tempfile.mkdtemp(prefix=f".{loaded.name}-", dir=out))
    try:
        # Keras' ONNX export refuses a model never called; one call on zeros is enough to trace it.
        size = int(loaded.input_size)
        loaded.model(np.zeros((1, size, size, 3), np.float32), training=False)
        if fmt == "savedmodel":
            artifact = _write_savedmodel(loaded.model, staging)
        elif fmt == "tflite":
            artifact = _write_tflite(loaded.model, staging, loaded.name)
        else:
            artifact = _write_onnx(loaded.model, staging, loaded.name)
        info = _info(loaded, fmt, artifact, staging)
        diff, note = (None, "not checked") if not check else _check(loaded, fmt, artifact)
        info["check"] = {"images": CHECK_IMAGES, "max_abs_diff_vs_keras": diff, "note": note}
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(loaded.name, fmt, target / artifact.relative_to(staging), target, diff, note)


def _check(loaded, fmt: str, artifact: Path) -> tuple[float | None, str | None]:
    runner, needs = RUNNERS[fmt]
    if not _importable(needs):
        return None, f"not checked: {needs} is not installed ({EXTRA_HINT})"
    images = check_images(int(loaded.input_size))
    expected = np.asarray(loaded.model.predict(images, verbose=0), dtype=np.float64)
    got = np.asarray(runner(artifact, images), dtype=np.float64)
    if got.shape != expected.shape:
        raise VirionError(
            f"{loaded.name}: the {fmt} export gives outputs of shape {got.shape}, Keras {expected.shape}; "
            "the conversion is broken, try another --format"
        )
    return float(np.abs(got - expected).max()), None

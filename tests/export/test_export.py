"""`virion export`: SavedModel, TFLite and ONNX give the Keras model's predictions, without virion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

CLASSES = ["Adenovirus", "Ebola", "Nipah virus", "Rotavirus"]
SIZE = 32
TOLERANCE = 1e-4  # probabilities; float32 graphs agree to ~1e-7 in practice


def _tiny_model():
    """Conv + virion's fused BatchNormalization (with non-trivial statistics) + softmax head."""
    import keras

    from virion.models.batchnorm import BatchNormalization

    keras.utils.set_random_seed(3)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same")(x)
    x = BatchNormalization(name="bn")(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    bn = model.get_layer("bn")
    rng = np.random.default_rng(0)
    bn.set_weights([rng.uniform(0.5, 2, 8), rng.normal(0, 0.3, 8), rng.normal(0, 0.2, 8), rng.uniform(0.2, 2, 8)])
    return model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("export") / "run"
    folder = run / "tiny"
    folder.mkdir(parents=True)
    _tiny_model().save(folder / "tiny_virus_classification.keras")
    (folder / "metadata.json").write_text(
        json.dumps(
            {
                "model": "tiny",
                "class_names": CLASSES,
                "input_size": SIZE,
                "stretch": [0.5, 99.5],
                "files": {"keras": "tiny_virus_classification.keras"},
            }
        )
    )
    (run / "config.json").write_text(json.dumps({"seed": 0}))
    return run


@pytest.fixture(scope="module")
def images(run_dir, tmp_path_factory) -> np.ndarray:
    """Real decodes (16-bit TIFF, 8-bit PNG) as the model is fed, float32 (N, S, S, 3)."""
    import tifffile
    from PIL import Image

    from virion.inference import Classifier

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:80, :80]
    blob = np.exp(-((yy - 30) ** 2 + (xx - 45) ** 2) / 90.0)
    tifffile.imwrite(folder / "a.tif", (900 + 2500 * blob + rng.normal(0, 40, blob.shape)).astype(np.uint16))
    Image.fromarray(rng.integers(0, 256, (50, 60), dtype=np.uint8)).save(folder / "b.png")
    Image.fromarray((230 - 200 * blob).astype(np.uint8)).save(folder / "c.png")
    gray = Classifier.load(run_dir).decode(sorted(folder.iterdir()))
    return np.repeat(gray[..., None], 3, axis=3).astype(np.float32)


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    from virion.inference.export import FORMATS, export_models

    out = tmp_path_factory.mktemp("exports")
    results = {}
    for fmt in FORMATS:
        if fmt == "onnx":
            pytest.importorskip("tf2onnx", reason='ONNX export needs the export extra: pip install "virion[export]"')
        (result,) = export_models(run_dir, out / fmt, fmt)
        results[fmt] = result
    return results


def _keras(run_dir, images):
    from virion.run.loading import load_models

    return load_models(run_dir)[0].model.predict(images, verbose=0)


def _run_savedmodel(path, x):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))  # keep a reference: its variables die with it
    return loaded.serve(tf.constant(x)).numpy()


def _run_tflite(path, x):
    import warnings

    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _run_onnx(path, x):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


RUN = {"savedmodel": _run_savedmodel, "tflite": _run_tflite, "onnx": _run_onnx}


@pytest.mark.parametrize("fmt", ["savedmodel", "tflite", "onnx"])
def test_export_predicts_like_keras(fmt, exported, run_dir, images):
    if fmt not in exported:
        pytest.skip(f"{fmt} not exported here")
    result = exported[fmt]
    expected = _keras(run_dir, images)
    got = RUN[fmt](result.path, images)
    diff = float(np.abs(got - expected).max())
    print(f"\n{fmt}: max abs difference vs Keras on {len(images)} decoded images: {diff:.2e}")
    assert got.shape == expected.shape == (len(images), len(CLASSES))
    assert diff < TOLERANCE
    # Same top class wherever Keras' top two are further apart than the tolerance (a near-tie may
    # flip between kernels: oneDNN in Keras, XNNPACK in TFLite, ONNX Runtime's own).
    top2 = np.sort(expected, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * TOLERANCE
    assert clear.any()
    assert np.argmax(got, axis=1)[clear].tolist() == np.argmax(expected, axis=1)[clear].tolist()
    # the export's own check found the same agreement, and export.json says how to feed it
    assert result.max_abs_diff is not None and result.max_abs_diff < TOLERANCE
    info = json.loads((result.folder / "export.json").read_text())
    assert info["class_names"] == CLASSES and info["input"]["shape"] == [None, SIZE, SIZE, 3]
    assert (result.folder / info["file"]).exists() and info["format"] == fmt


BLOCK_VIRION = """
import sys, importlib.abc
class _NoVirion(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "virion" or name.startswith("virion."):
            raise ImportError("virion is not available in this process")
sys.meta_path.insert(0, _NoVirion())
sys.path = [p for p in sys.path if not p.rstrip("/").endswith("src")]
"""


def test_exports_load_and_run_without_virion(exported, run_dir, images, tmp_path):
    np.save(tmp_path / "x.npy", images)
    paths = {fmt: str(r.path) for fmt, r in exported.items()}
    script = BLOCK_VIRION + textwrap.dedent(f"""
        import json, warnings, numpy as np
        try:
            import virion
            raise SystemExit("virion was importable")
        except ImportError:
            pass
        x = np.load({str(tmp_path / "x.npy")!r})
        paths = json.loads({json.dumps(paths)!r})
        out = {{}}
        import tensorflow as tf
        saved = tf.saved_model.load(paths["savedmodel"])
        out["savedmodel"] = saved.serve(tf.constant(x)).numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            it = tf.lite.Interpreter(model_path=paths["tflite"])
        i = it.get_input_details()[0]["index"]
        it.resize_tensor_input(i, list(x.shape)); it.allocate_tensors(); it.set_tensor(i, x); it.invoke()
        out["tflite"] = it.get_tensor(it.get_output_details()[0]["index"])
        if "onnx" in paths:
            import onnxruntime as ort
            s = ort.InferenceSession(paths["onnx"], providers=["CPUExecutionProvider"])
            out["onnx"] = s.run(None, {{s.get_inputs()[0].name: x}})[0]
        np.savez({str(tmp_path / "out.npz")!r}, **out)
    """)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    expected = _keras(run_dir, images)
    outputs = np.load(tmp_path / "out.npz")
    assert set(outputs.files) == set(paths)
    for fmt in outputs.files:
        assert float(np.abs(outputs[fmt] - expected).max()) < TOLERANCE, fmt


def test_cli_export_prints_the_check_and_refuses_to_overwrite(run_dir, tmp_path, capsys):
    from virion.cli.main import main

    out = tmp_path / "out"
    assert main(["export", str(run_dir), "--format", "tflite", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tiny: tflite ->" in printed and "max |difference| vs Keras" in printed
    assert (out / "tiny" / "tiny.tflite").is_file()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    assert main(["export", str(run_dir), "--format", "tflite", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--format", "tflite", "--out", str(out), "--model", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_missing_onnx_converter_is_one_clear_line(monkeypatch):
    from virion.errors import VirionError
    from virion.inference import export

    monkeypatch.setattr(export, "_importable", lambda name: name != "tf2onnx")
    with pytest.raises(VirionError, match=r"tf2onnx.*virion\[export\]"):
        export.check_format_available("onnx")
    export.check_format_available("tflite")  # the others need nothing extra

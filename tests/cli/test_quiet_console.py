"""No TensorFlow/absl C++ log lines on the console unless --verbose (real processes: the lines are
written to file descriptor 2 while TensorFlow loads, which no in-process capture sees).

virion's own errors still reach stderr, and --verbose with VIRION_DEBUG still shows TensorFlow's
lines and the Python traceback.
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR" and
# absl/glog lines such as "I0000 00:00:1796650846.280019   24466 port.cc:153] oneDNN custom operations ..."
# or "E0000 00:00:1796683268.091300   11107 util.cc:131] oneDNN supports DT_INT32 only on ..."
BACKEND_LINE = re.compile(
    r"absl::InitializeLog|oneDNN custom operations|cpu_feature_guard"
    r"|^[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+\s+\S+:\d+\]",  # seconds may be a whole epoch time
    re.MULTILINE,
)
VIRION = [sys.executable, "-m", "virion.cli.main"]


def _env(**extra) -> dict[str, str]:
    """A user's environment: no TF_CPP_MIN_LOG_LEVEL (the test session sets one), TensorFlow backend."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "VIRION_DEBUG")}
    return {**env, "KERAS_BACKEND": "tensorflow", **extra}


@pytest.fixture(scope="module")
def model_and_broken_image(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny untrained model folder (loading it imports TensorFlow) and a file that is no image."""
    import keras

    root = tmp_path_factory.mktemp("quiet")
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x), name="tiny")
    folder = root / "tiny"
    folder.mkdir()
    model.save(folder / "tiny_virus_classification.keras")
    meta = {
        "model": "tiny",
        "class_names": ["a", "b"],
        "input_size": 32,
        "weights": "none",
        "files": {"keras": "tiny_virus_classification.keras"},
    }
    (folder / "metadata.json").write_text(json.dumps(meta))
    broken = root / "broken.png"
    broken.write_bytes(b"not a png")
    return folder, broken


def test_predict_prints_no_backend_lines_but_its_own_error(model_and_broken_image):
    model, broken = model_and_broken_image
    # The error comes after the model (and TensorFlow) loaded: stderr is working again by then.
    quiet = subprocess.run(
        [*VIRION, "predict", str(model), str(broken)], capture_output=True, text=True, env=_env(), timeout=300
    )
    assert quiet.returncode == 2, quiet.stderr
    assert "virion: error: none of the 1 input file(s) could be read" in quiet.stderr
    assert not BACKEND_LINE.search(quiet.stderr), quiet.stderr
    assert not BACKEND_LINE.search(quiet.stdout), quiet.stdout


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="oneDNN's start-up line is x86's")
def test_verbose_shows_them_and_the_traceback(model_and_broken_image):
    model, broken = model_and_broken_image
    loud = subprocess.run(
        [*VIRION, "--verbose", "predict", str(model), str(broken)],
        capture_output=True,
        text=True,
        env=_env(VIRION_DEBUG="1"),
        timeout=300,
    )
    assert loud.returncode != 0
    assert BACKEND_LINE.search(loud.stderr), loud.stderr  # the pattern above matches what TensorFlow prints
    assert "Traceback (most recent call last)" in loud.stderr and "VirionError: none of the 1" in loud.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True
    except OSError:
        return False


def test_serve_prints_no_backend_lines(model_and_broken_image, tmp_path):
    pytest.importorskip("starlette", reason='the web page needs the app extra: pip install "virion[app]"')
    pytest.importorskip("uvicorn", reason='the web page needs the app extra: pip install "virion[app]"')
    model, _ = model_and_broken_image
    port = _free_port()
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as out_file, err.open("w") as err_file:
        server = subprocess.Popen(
            [*VIRION, "serve", str(model), "--port", str(port)], stdout=out_file, stderr=err_file, env=_env()
        )
        try:  # the model (and TensorFlow) loads before the server listens
            deadline = time.monotonic() + 300
            while not _listening(port):
                assert server.poll() is None, err.read_text()
                assert time.monotonic() < deadline, "virion serve did not start"
                time.sleep(0.2)
        finally:
            server.terminate()
            server.wait(timeout=60)
    assert f"http://127.0.0.1:{port}/" in out.read_text()
    assert not BACKEND_LINE.search(err.read_text()), err.read_text()


def test_train_prints_no_backend_lines(tmp_path):
    """`virion train` asks whether backends are installed (importlib's find_spec) before it imports
    TensorFlow: such a probe must not use up the muting of the real import."""
    from virion.data.synth import generate_dataset

    data = tmp_path / "data"
    generate_dataset(data, per_class=5, seed=0, size=64, progress=False)
    done = subprocess.run(
        [*VIRION, "train", "--data", str(data), "--out", str(tmp_path / "run"), "--models", "texture"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "texture" in done.stdout + done.stderr
    assert not BACKEND_LINE.search(done.stderr), done.stderr
    assert not BACKEND_LINE.search(done.stdout), done.stdout


def _boxes_csv(root: Path, count: int = 9, size: int = 600) -> Path:
    """Small micrographs with a bright disk each, and their boxes. Nine of 600 px (a full batch of 8
    and a batch of 1, 150-px detector inputs) make this TensorFlow log its DT_INT32 notice."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    lines = ["path,label,xmin,ymin,xmax,ymax"]
    for i in range(count):
        img = rng.normal(100, 10, (size, size)) + 80 * (((xx - 64) ** 2 + (yy - 60) ** 2) < 15**2)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"m{i}.png")
        lines.append(f"m{i}.png,A,49,45,79,75")
    (root / "boxes.csv").write_text("\n".join(lines) + "\n")
    return root / "boxes.csv"


def test_training_a_detector_prints_no_backend_lines(tmp_path):
    """Training (not only loading) makes TensorFlow log: with the U-Net it logged an ERROR-level notice
    ("E0000 ... oneDNN supports DT_INT32 only ...") that TF_CPP_MIN_LOG_LEVEL=2 let through."""
    boxes = _boxes_csv(tmp_path)
    proc = subprocess.run(
        [*VIRION, "detector", str(boxes), "--out", str(tmp_path / "det"), "--epochs", "1", "--quiet"],
        capture_output=True, text=True, env=_env(), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "det" / "detector.json").is_file()
    assert not BACKEND_LINE.search(proc.stderr), proc.stderr
    assert not BACKEND_LINE.search(proc.stdout), proc.stdout

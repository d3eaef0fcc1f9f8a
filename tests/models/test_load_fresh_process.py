"""Saved models must load in a fresh process: our custom layers register themselves on import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from virion.models.registry import build_model
from virion.training.saving import save_model_files

LOAD = """
import sys, numpy as np
from virion.training.saving import load_model
x = np.load(sys.argv[1])
for path in sys.argv[2:]:
    model = load_model(path, compile=False)
    np.save(path + ".npy", model.predict(x, verbose=0))
"""


def test_resnet50_files_load_in_a_fresh_process(tmp_path):
    model = build_model("resnet50", 3, 32)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    files = save_model_files(model, tmp_path, "resnet50_virus_classification")
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    expected = model.predict(x, verbose=0)
    paths = [str(files["keras"]), str(files["h5"])]
    proc = subprocess.run([sys.executable, "-c", LOAD, str(tmp_path / "x.npy"), *paths],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for path in paths:
        np.testing.assert_allclose(np.load(path + ".npy"), expected, rtol=1e-5, atol=1e-6)

"""A file-size limit (`ulimit -f`) reached while `virion train` saves a model.

Run in a child process under RLIMIT_FSIZE: the decode cache and the JSON files fit under the limit,
the first model save does not. The command must end with one line on stderr naming the cause,
a non-zero exit, no traceback, and no model file anywhere that could pass for a complete one
(no .keras/.h5 at all, no temporary file).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import tiny_run

from virion.training.progress import is_temp_file

LIMIT = 256 * 1024  # bytes: the tiny model below saves to about 1 MB (3 MB with Adam's moments)


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def test_file_size_limit_during_the_model_save(tmp_path):
    data = tiny_run.make_images(tmp_path / "data", per_class=6)
    run = tmp_path / "run"
    env = {**os.environ, "TINY_DENSE": "4096", "VIRION_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("VIRION_DEBUG", None)
    args = [
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        "--models",
        "resnet50",
        "--epochs",
        "1",
        "--input-size",
        "16",
        "--batch-size",
        "6",
        "--weights",
        "none",
        "--linear",
        "--no-augment",
    ]
    proc = subprocess.run(
        [sys.executable, str(Path(tiny_run.__file__)), "cli", *args],
        env=env,
        preexec_fn=_limit_file_size,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("virion: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert "file-size limit" in errors[0] or "File too large" in errors[0], errors[0]
    assert (run / "config.json").is_file()  # the limit hit the model save, not the run folder's start
    models = [p for p in run.rglob("*") if p.suffix in (".keras", ".h5")]
    assert models == [], models
    assert [p for p in run.rglob("*") if is_temp_file(p)] == []

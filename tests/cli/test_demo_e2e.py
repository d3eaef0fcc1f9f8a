"""The one end-to-end test: the real `virion demo` command, at its smallest size, in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from virion.errors import VirionError
from virion.workflow import PRESETS, choose_weights, cpu_flags, machine_line, new_run_dir

# Two of the three models keep the suite under 10 minutes on 2 cores (each model costs about a
# minute of graph tracing even at the tiny size): the from-scratch ResNet-50 and one transfer model.
# DenseNet121 trains through the same code in tests/models and tests/training.
MODELS = ("resnet50", "xception")


def test_demo_runs_end_to_end_through_the_cli(tmp_path):
    out = tmp_path / "demo"
    virion = Path(sys.executable).with_name("virion")
    command = [str(virion)] if virion.exists() else [sys.executable, "-m", "virion.cli.main"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as in a user's shell: the CLI alone keeps TensorFlow quiet
    # --weights none: "auto" would try the real ImageNet download, and tests never touch the
    # network; the offline fallback of "auto" is tested below with the download made to fail.
    proc = subprocess.run(
        command + ["demo", "--preset", "tiny", "--out", str(out), "--weights", "none", "--models", *MODELS],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "absl::InitializeLog" not in proc.stderr and "oneDNN custom operations" not in proc.stderr
    assert "Ignored nothing." in proc.stdout  # the demo's and synth's own files are not the user's strays

    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 1
    run = runs[0]
    config = json.loads((run / "config.json").read_text())
    assert config["input_size"] == PRESETS["tiny"].input_size
    assert config["weights"] == "none"
    assert "RANDOM INITIALIZATION" in proc.stdout
    assert "random initialization" in (run / "report.html").read_text().lower()

    for name in MODELS:
        folder = run / name
        assert (folder / f"{name}_virus_classification.h5").stat().st_size > 0
        assert (folder / f"{name}_virus_classification.keras").stat().st_size > 0
        meta = json.loads((folder / "metadata.json").read_text())
        assert len(meta["class_names"]) == 14
        summary = json.loads((folder / "evaluation" / "summary.json").read_text())
        assert 0.0 <= summary["accuracy"] <= 1.0
        assert (folder / "evaluation" / "confusion_matrix.png").stat().st_size > 0
        assert f"{name}: test accuracy" in proc.stdout
    assert (run / "comparison.md").read_text().count("|") > 0
    assert f"Report: {(run / 'report.html').resolve()}" in proc.stdout
    # The closing line is what this run measured: its wall time and this CPU's flags.
    closing = proc.stdout.strip().splitlines()[-1]
    assert closing.startswith("virion demo finished in ") and "CPU" in closing, closing

    # The synthetic data is generated once and reused by the next demo.
    data = out / "synthetic-tiny-seed0"
    assert len(list((data / "test").glob("*/*"))) >= 14


def test_each_demo_gets_a_new_run_folder(tmp_path):
    first = new_run_dir(tmp_path, "tiny")
    first.mkdir(parents=True)
    second = new_run_dir(tmp_path, "tiny")
    assert second != first and not second.exists()


def test_auto_weights_fall_back_to_none_when_the_download_fails(monkeypatch):
    def no_network(arch, weights):
        raise VirionError(f"--weights imagenet: could not get the ImageNet weights for {arch}")

    monkeypatch.setattr("virion.models.weights.imagenet_available", lambda arch: False)
    monkeypatch.setattr("virion.models.weights.resolve_weights", no_network)
    weights, note = choose_weights("auto", ["resnet50", "xception", "densenet121"])
    assert weights == "none"
    assert "RANDOM INITIALIZATION" in note


def test_auto_weights_use_imagenet_when_cached(monkeypatch):
    monkeypatch.setattr("virion.models.weights.imagenet_available", lambda arch: True)
    monkeypatch.setattr("virion.models.weights.resolve_weights", pytest.fail)  # no download needed
    assert choose_weights("auto", ["xception"])[0] == "imagenet"


def test_the_closing_line_names_this_cpus_flags_and_a_onednn_cap():
    amx = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile\n"
    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
    assert cpu_flags(amx) == ["avx2", "avx512f", "avx512_bf16", "amx_tile"]
    assert cpu_flags(avx2) == ["avx2"]
    assert "CPU flags: avx2 avx512f avx512_bf16 amx_tile" in machine_line(amx, environ={})
    capped = machine_line(amx, environ={"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in capped
    assert "ONEDNN" not in machine_line(avx2, environ={})


def test_summary_has_one_line_per_model_a_failed_one_and_the_ensembles(tmp_path):
    from virion.workflow import accuracy_lines

    def model(name, status="trained", summary=None, folder=None):
        folder = tmp_path / (folder or name)
        (folder / "evaluation").mkdir(parents=True)
        if status is not None:
            meta = {"schema_version": 1, "model": name, "class_names": ["a", "b"], "input_size": 32, "status": status}
            if status == "failed":
                meta["failure"] = "the training loss became nan at epoch 2"
            (folder / "metadata.json").write_text(json.dumps(meta))
        if summary is not None:
            (folder / "evaluation" / "summary.json").write_text(json.dumps(summary))

    model("resnet50", summary={"accuracy": 0.8125, "macro_f1": 0.75})
    model("xception", status="failed")
    model("densenet121")  # trained, never evaluated
    model("ensemble", status=None, summary={"accuracy": 0.9, "macro_f1": None})
    lines = accuracy_lines(tmp_path, ["resnet50", "xception", "densenet121"], 2)
    assert lines == [
        "resnet50: test accuracy 0.812, macro-F1 0.750 (chance 0.500)",
        "xception: FAILED in training (the training loss became nan at epoch 2)",
        "densenet121: no test evaluation found",
        "ensemble: test accuracy 0.900, macro-F1 n/a (chance 0.500)",
    ]

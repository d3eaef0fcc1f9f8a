"""`virion train --models tem_cnn texture`: the texture model as a model of the run, end to end.

Tiny textured images made here (stripes, dots, plain noise), split folders; one run with the
compact CNN (1 epoch, 32 px) and the texture model (its own 256 px decode), then: the run folder,
evaluation and comparison rows (ensemble included), the recommendation, predict, explain, resume,
and a fresh process that loads the run and gives the same probabilities.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from virion.errors import VirionError

pytest.importorskip("virion.models.texture.model", reason="the texture model (virion.models.texture) is not there")

CLASSES = ["dots", "noise", "stripes"]
SIZE = 40


def _image(kind: str, rng) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    base = rng.normal(120, 12, (SIZE, SIZE))
    if kind == "stripes":
        base += 70 * np.sin(2 * np.pi * (xx * np.cos(rng.uniform(0, np.pi)) + yy * np.sin(1.0)) / 6)
    elif kind == "dots":
        base += 90 * ((np.sin(2 * np.pi * xx / 8) > 0.6) & (np.sin(2 * np.pi * yy / 8) > 0.6))
    else:
        base += rng.normal(0, 45, (SIZE, SIZE))
    return np.clip(base, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from PIL import Image

    from virion.cli.main import main

    root = tmp_path_factory.mktemp("texture-run")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("validation", 4), ("test", 4)):
        for kind in CLASSES:
            (root / "data" / split / kind).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_image(kind, rng)).save(root / "data" / split / kind / f"{kind}_{i}.png")
    run = root / "run"
    args = ["train", "--data", str(root / "data"), "--out", str(run), "--models", "tem_cnn", "texture"]
    args += ["--epochs", "1", "--input-size", "32", "--batch-size", "8"]
    assert main(args) == 0
    return root, run


def test_texture_is_a_model_of_the_run(trained):
    root, run = trained
    meta = json.loads((run / "texture" / "metadata.json").read_text())
    assert meta["kind"] == "texture" and meta["input_size"] == 256 and meta["class_names"] == CLASSES
    assert meta["files"] == {"texture": "texture_model.json", "arrays": "texture_model.npz"}
    assert all((run / "texture" / f).is_file() for f in meta["files"].values())
    assert meta["config"]["models"] == ["tem_cnn", "texture"] and 0.0 <= meta["best_val_accuracy"] <= 1.0
    assert set(meta["timings"]) >= {"fit_seconds"} and meta["status"] == "trained"
    assert json.loads((run / "tem_cnn" / "metadata.json").read_text())["input_size"] == 32
    summary = json.loads((run / "texture" / "evaluation" / "summary.json").read_text())
    assert summary["n_images"] == 12 and summary["kind"] == "texture" and "log_loss" in summary
    with (run / "comparison.csv").open(newline="") as fh:
        models = [r["model"] for r in csv.DictReader(fh)]
    assert models[:2] == ["tem_cnn", "texture"] and "ensemble" in models
    chosen = json.loads((run / "recommended.json").read_text())
    assert chosen["split"] == "validation" and chosen["classifier"] in chosen["candidates"]
    assert "Recommended classifier" in (run / "report.html").read_text()


def test_the_recommendation_sees_the_texture_models_out_of_fold_validation_probabilities(trained):
    from virion.evaluation.ensemble import split_probabilities
    from virion.models.texture.model import VALIDATION_OOF_FILE, TextureModel, read_validation_oof

    root, run = trained
    model = TextureModel.load(run / "texture")
    assert model.pooled_  # it trained on the validation images too
    oof = read_validation_oof(run / "texture")
    validation = sorted((root / "data" / "validation").rglob("*.png"))
    assert sorted(oof) == sorted(f.relative_to(root / "data").as_posix() for f in validation)
    names, files, labels, probs = split_probabilities(run, "validation", progress=False)
    keys = [Path(f).resolve().relative_to((root / "data").resolve()).as_posix() for f in files]
    np.testing.assert_allclose(probs["texture"], np.stack([oof[k] for k in keys]), rtol=0, atol=1e-12)
    seen = model.predict_proba(np.stack([_decode256(f) for f in files]))
    # not the predictions of the model that saw them (log-probabilities: these tiny classes are separable)
    assert not np.allclose(np.log(probs["texture"] + 1e-300), np.log(seen + 1e-300), atol=1e-3)
    meta = json.loads((run / "texture" / "metadata.json").read_text())
    oof_accuracy = float((probs["texture"].argmax(1) == labels).mean())
    assert meta["best_val_accuracy"] == pytest.approx(oof_accuracy)
    chosen = meta["hyperparameters"]
    assert chosen["classifier"] == "logistic+lda" and chosen["pooled_validation"] is True
    assert chosen["shrinkage"] == model.gamma_ and chosen["C"] == model.C_ and "gamma" not in chosen
    # Validation data that the out-of-fold file does not cover: a clear error, not optimistic probabilities.
    saved = (run / "texture" / VALIDATION_OOF_FILE).read_text()
    try:
        # An image its out-of-fold split could not predict fairly (class unseen there) is left out for every model.
        data = json.loads(saved)
        gone = data["files"].pop(0)
        data["probabilities"].pop(0)
        data["left_out"] = [*data.get("left_out", []), gone]
        (run / "texture" / VALIDATION_OOF_FILE).write_text(json.dumps(data))
        assert read_validation_oof(run / "texture")[gone] is None
        _, fewer, _, fewer_probs = split_probabilities(run, "validation", progress=False)
        fewer_keys = [Path(f).resolve().relative_to((root / "data").resolve()).as_posix() for f in fewer]
        assert len(fewer) == len(files) - 1 and gone not in fewer_keys
        assert all(len(p) == len(fewer) for p in fewer_probs.values())
        data = json.loads(saved)
        data["files"] = [f + ".other" for f in data["files"]]
        (run / "texture" / VALIDATION_OOF_FILE).write_text(json.dumps(data))
        with pytest.raises(VirionError, match="no out-of-fold"):
            split_probabilities(run, "validation", progress=False)
        (run / "texture" / VALIDATION_OOF_FILE).unlink()
        with pytest.raises(VirionError, match="out-of-fold probabilities of them are missing"):
            split_probabilities(run, "validation", progress=False)
    finally:
        (run / "texture" / VALIDATION_OOF_FILE).write_text(saved)


def _decode256(path):
    from virion.data.decode import DecodeSettings, decode_image

    return decode_image(path, DecodeSettings(size=256))


def test_predict_and_explain_on_a_texture_run(trained, capsys):
    from virion.cli.main import main

    root, run = trained
    files = sorted((root / "data" / "test").rglob("*.png"))
    out = root / "p.csv"
    assert main(["predict", str(run), str(root / "data" / "test"), "--out", str(out), "--model", "texture"]) == 0
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["file"] for r in rows] == [str(f) for f in files] and {r["model"] for r in rows} == {"texture"}
    cam = root / "cam"
    # no Grad-CAM for a model that is not a network: the radial profile against the class means instead
    assert main(["explain", str(run), str(files[0]), "--out", str(cam), "--model", "texture"]) == 0
    assert [p.name for p in cam.glob("*.png")] == [f"{files[0].stem}_texture.png"]
    assert "radial profile" in capsys.readouterr().out


def test_resume_skips_a_finished_fit_and_refits_a_killed_one(trained, capsys):
    from virion.training.trainer import load_run_config, train_run

    root, run = trained
    model_file = run / "texture" / "texture_model.npz"
    before = model_file.stat().st_mtime_ns
    train_run(load_run_config(run), resume=True)  # the trainer alone: evaluation is tested above
    assert "texture: already trained" in capsys.readouterr().out and model_file.stat().st_mtime_ns == before
    (run / "texture" / "metadata.json").unlink()  # killed before its metadata.json was written
    result = train_run(load_run_config(run), resume=True)
    assert "tem_cnn: already trained" in capsys.readouterr().out and result.models["texture"].epochs_run == 1
    assert json.loads((run / "texture" / "metadata.json").read_text())["kind"] == "texture"


def test_a_texture_run_loads_in_a_fresh_process(trained):
    import virion

    root, run = trained
    files = sorted((root / "data" / "test").rglob("*.png"))[:5]
    clf = virion.load(run)
    assert clf.default_model == json.loads((run / "recommended.json").read_text())["classifier"]
    here = clf.predict(files, model="texture").probabilities
    for path in (run / "texture", run / "texture" / "texture_model.json"):  # the model folder or its file
        alone = virion.load(path)
        assert alone.model_names == ["texture"] and alone.input_size == 256
        np.testing.assert_allclose(alone.predict(files).probabilities, here, rtol=0, atol=1e-9)
    code = textwrap.dedent(
        f"""
        import json, sys, virion
        clf = virion.load({str(run)!r}, models="texture")
        p = clf.predict({[str(f) for f in files]!r})
        print(json.dumps({{"probs": p.probabilities.tolist(), "model": p.model}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["model"] == "texture"
    np.testing.assert_allclose(np.array(got["probs"]), here, atol=1e-6)
    assert (np.array(got["probs"]).argmax(1) == here.argmax(1)).all()


def test_a_texture_only_run(trained, tmp_path, monkeypatch):
    import virion.data.cache as cache
    from virion.cli.main import main

    root, _ = trained
    sizes = []
    real = cache.load_split_arrays
    monkeypatch.setattr(cache, "load_split_arrays", lambda split, s, **kw: sizes.append(s.size) or real(split, s, **kw))
    run = tmp_path / "alone"
    args = ["train", "--data", str(root / "data"), "--out", str(run), "--models", "texture", "--input-size", "32"]
    assert main(args) == 0
    assert set(sizes) == {256}  # decoded at the texture model's own size only, never at --input-size
    assert json.loads((run / "recommended.json").read_text())["classifier"] == "texture"
    assert [p.name for p in run.iterdir() if p.name.startswith("ensemble")] == []  # one model: no ensemble row
    with (run / "comparison.csv").open(newline="") as fh:
        assert [r["model"] for r in csv.DictReader(fh)] == ["texture"]


def test_a_run_keeps_its_datas_class_sizes_for_scanning(trained, tmp_path):
    """`virion crops` writes class_sizes.json beside its manifest; the run keeps a copy (scan's size prior)."""
    import shutil

    from virion.cli.main import main
    from virion.micrograph.sizes import CLASS_SIZES_FILE, find_class_sizes

    root, _ = trained
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    (data / CLASS_SIZES_FILE).write_text(json.dumps({"unit": "nm", "classes": {"dots": 40, "stripes": 120}}))
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--models", "texture", "--input-size", "32"]) == 0
    shutil.rmtree(data)
    assert find_class_sizes(run) == {"dots": 40.0, "stripes": 120.0}

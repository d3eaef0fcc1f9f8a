"""The learned heat-map detector end to end: it finds planted particles and nothing in the padding,
reloads exactly (in a fresh process, from plain files), `virion detector` trains one from a boxes
CSV, `virion crops --detected --detector` cuts windows on its candidates and hands it on, `virion
train` keeps it, and `virion scan` uses it (or LoG with `--detector log`). A killed `virion detector`
training resumes from its last finished epoch and ends with the weights of an uninterrupted one.

One detector is trained per module (about 15 s on 2 cores) on tiny synthetic micrographs made here:
bright discs of 40 nm on Gaussian noise, black padding on the left; every test reuses it.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scan_helpers import CentreBrightness

from virion.cli.main import main
from virion.data.layout import BACKGROUND_CLASS
from virion.errors import VirionError
from virion.micrograph.heatmap import DETECTOR_DIR, META_FILE, TrainingMicrograph, is_detector, load_detector

SIZE, PAD, DIAMETER = 256, 40, 40  # px at 1 nm/px


def synthetic(seed: int, count: int = 4, extra: int = 0):
    """(uint8 micrograph, (count, 4) boxes, (extra, 2) unannotated disc centres): discs on noise, padding left."""
    rng = np.random.default_rng(seed)
    values = 110 + rng.normal(0, 8, (SIZE, SIZE))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    grid = [(x, y) for x in (84, 148, 212) for y in (36, 100, 164, 224)]  # 64 px apart, clear of the padding
    picked = rng.choice(len(grid), count + extra, replace=False)
    centres = [(grid[i][0] + dx, grid[i][1] + dy) for i, (dx, dy) in zip(picked, rng.uniform(-6, 6, (len(picked), 2)))]
    for x, y in centres:
        values += 60 / (1 + np.exp((np.hypot(xx - x, yy - y) - DIAMETER / 2) / 2))
    values[:, :PAD] = 0
    r = DIAMETER / 2
    boxes = np.array([(x - r, y - r, x + r, y + r) for x, y in centres[:count]])
    return np.clip(values, 0, 255).astype(np.uint8), boxes, np.array(centres[count:]).reshape(-1, 2)


@pytest.fixture(scope="module")
def trained():
    from virion.micrograph.heatmap import train_detector

    data = [TrainingMicrograph(pixels, 1.0, boxes) for pixels, boxes, _ in map(synthetic, range(8))]
    return train_detector(data, epochs=60, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory) -> Path:
    return trained.save(tmp_path_factory.mktemp("detector") / DETECTOR_DIR)


def write_boxes(folder: Path, seeds, extra: int = 0) -> Path:
    """Micrographs m<seed>.png and boxes.csv (path,label,xmin,ymin,xmax,ymax,x,y) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in seeds:
        pixels, boxes, _ = synthetic(seed, extra=extra)
        Image.fromarray(pixels).save(folder / f"m{seed}.png")
        rows += [{"path": f"m{seed}.png", "label": "AB"[i % 2], **dict(zip(("xmin", "ymin", "xmax", "ymax"), b))}
                 for i, b in enumerate(boxes)]  # fmt: skip
    with open(folder / "boxes.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "xmin", "ymin", "xmax", "ymax", "x", "y"])
        writer.writeheader()
        writer.writerows(rows)
    return folder / "boxes.csv"


def test_learned_detector_finds_planted_particles_and_nothing_in_padding(trained):
    for seed in (100, 101):  # micrographs it never saw
        pixels, boxes, _ = synthetic(seed)
        c = trained.detect(pixels, 1.0)
        assert len(c) and c.x.min() > PAD and (c.score >= trained.threshold).all()
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        nearest = [int(np.argmin(np.hypot(c.x - x, c.y - y))) for x, y in zip(cx, cy)]
        assert all(np.hypot(c.x[j] - x, c.y[j] - y) <= 6 for j, x, y in zip(nearest, cx, cy))
        assert all(20 <= c.diameter[j] <= 70 for j in nearest)  # the size head: about 40 nm
        strong = c.score >= trained.no_background_min_score
        assert strong.sum() == len(boxes)  # nothing else is particle-like


def test_saved_detector_reloads_identically_in_a_fresh_process_from_plain_files(trained, saved, tmp_path):
    pixels = synthetic(102)[0]
    Image.fromarray(pixels).save(tmp_path / "m.png")
    script = (
        "import json, sys, numpy as np; from PIL import Image; from virion.micrograph.heatmap import load_detector;"
        "c = load_detector(sys.argv[1]).detect(np.asarray(Image.open(sys.argv[2])), 1.0);"
        "print(json.dumps([c.x.tolist(), c.y.tolist(), c.diameter.tolist(), c.score.tolist()]))"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(saved), str(tmp_path / "m.png")],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    here = trained.detect(pixels, 1.0)
    there = json.loads(proc.stdout.strip().splitlines()[-1])
    for a, b in zip(there, (here.x, here.y, here.diameter, here.score)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    meta = json.loads((saved / META_FILE).read_text())  # plain data: numbers, strings, lists
    assert meta["format"] == "virion-heatmap-detector" and meta["threshold"] == trained.threshold
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for f in saved.iterdir():
        (tampered / f.name).write_bytes(f.read_bytes())
    (tampered / META_FILE).write_text(json.dumps({**meta, "format": "keras-lambda-layer"}))
    with pytest.raises(VirionError, match="not a detector this virion can read"):
        load_detector(tampered)
    (tampered / META_FILE).write_text("[1]")  # JSON, but not an object
    with pytest.raises(VirionError, match="not a detector this virion can read"):
        load_detector(tampered)


def test_cli_detector_trains_from_a_boxes_csv_and_refuses_a_used_out(tmp_path, capsys):
    from virion.cli.detector import DEFAULT_EPOCHS
    from virion.micrograph.heatmap import DEFAULT_EPOCHS as LIBRARY_EPOCHS

    assert DEFAULT_EPOCHS == LIBRARY_EPOCHS  # the CLI repeats it to keep `--help` light
    boxes = write_boxes(tmp_path / "data", [0, 1])
    (tmp_path / "data" / "broken.png").write_bytes(b"not a png")
    with open(boxes, "a") as fh:
        fh.write("broken.png,A,50,50,90,90,,\nm0.png,A,,,,,100,100\n")  # an unreadable micrograph; a point
    out = tmp_path / "det"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["detector", str(boxes), "--out", str(out), "--epochs", "1", "--quiet"]
    assert main(argv) == 2  # a used --out is refused before training, naming the option
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "--overwrite" in err and str(out) in err
    assert main([*argv, "--overwrite"]) == 2  # ... and --overwrite replaces only an earlier detector
    assert "not a `virion detector` output" in capsys.readouterr().err and (out / "notes.txt").is_file()
    (out / "notes.txt").unlink()
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "8 boxes in 2 micrographs" in printed and "Unreadable micrographs: 1" in printed and "broken.png" in printed
    assert "Points skipped: 1" in printed
    assert is_detector(out) and load_detector(out).info["trained_on"] == {"micrographs": 2, "boxes": 8}
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    only_broken = tmp_path / "data" / "broken.csv"
    only_broken.write_text("path,label,xmin,ymin,xmax,ymax\nbroken.png,A,50,50,90,90\n")
    assert main(["detector", str(only_broken), "--out", str(tmp_path / "none"), "--quiet"]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "no micrograph with boxes" in err and "1 unreadable" in err and not (tmp_path / "none").exists()


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A 3-epoch `train_from_boxes` (2 micrographs, batch 1: 2 steps an epoch) killed while it wrote
    epoch 2's checkpoint: epoch 2's files are written, state.json still names epoch 1.
    Returns (boxes CSV, the state folder it left)."""
    from virion.micrograph.heatmap_training import state_folder, train_from_boxes
    from virion.training import faults

    folder = tmp_path_factory.mktemp("interrupted")
    boxes = write_boxes(folder / "data", [0, 1])
    seen = []

    def kill(phase):
        seen.append(phase)
        if seen.count("before_commit") == 2:
            raise KeyboardInterrupt

    faults.set_handler(kill)
    try:
        with pytest.raises(KeyboardInterrupt):
            train_from_boxes(boxes, folder / "det", epochs=3, batch_size=1, progress=False)
    finally:
        faults.set_handler(None)
    assert sorted(p.name for p in folder.iterdir()) == [".det.detector-state", "data"]  # no half output
    return boxes, state_folder(folder / "det")


def copy_state(interrupted, out: Path) -> None:
    import shutil

    from virion.micrograph.heatmap_training import state_folder

    shutil.copytree(interrupted[1], state_folder(out))


@pytest.fixture
def count_steps(monkeypatch):
    """A list that gets one entry per `train_on_batch` call."""
    import keras

    calls, original = [], keras.Model.train_on_batch

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "train_on_batch", counted)
    return calls


def test_detector_checkpoint_is_plain_data_and_a_killed_save_leaves_the_previous_one(interrupted):
    state = interrupted[1]
    record = json.loads((state / "state.json").read_text())
    assert record["epochs_done"] == 1 and len(record["losses"]) == 1 and record["rng"]["bit_generator"] == "PCG64"
    assert (record["weights"], record["optimizer"]) == ("weights-e0001.weights.h5", "optimizer-e0001.npz")
    assert {p.name for p in state.iterdir()} == {  # epoch 2's uncommitted files: debris for the next commit
        "state.json", "weights-e0001.weights.h5", "optimizer-e0001.npz",
        "weights-e0002.weights.h5", "optimizer-e0002.npz",
    }  # fmt: skip
    with np.load(state / record["optimizer"], allow_pickle=False) as npz:  # no pickle: no code runs
        values = [npz[name] for name in sorted(npz.files)]
    assert int(values[0]) == 2  # the iteration counter first: 1 epoch of 2 steps
    assert all(v.dtype.kind in "iuf" for v in values) and len(values) > 2


def test_killed_detector_training_resumes_at_the_next_epoch_like_an_uninterrupted_one(
    interrupted, tmp_path, count_steps, capsys
):
    from virion.micrograph.heatmap_training import state_folder, train_from_boxes

    boxes, _ = interrupted
    full = train_from_boxes(boxes, tmp_path / "full", epochs=3, batch_size=1, progress=False)
    assert len(count_steps) == 6 and full.resumed_after == 0
    copy_state(interrupted, tmp_path / "det")
    capsys.readouterr()
    count_steps.clear()
    resumed = train_from_boxes(boxes, tmp_path / "det", epochs=3, batch_size=1, progress=False)
    assert "resuming the training at epoch 2/3" in capsys.readouterr().out
    assert len(count_steps) == 4  # epochs 2 and 3 only
    assert resumed.resumed_after == 1 and resumed.epochs == 3 and "Resumed after epoch 1" in resumed.summary()
    assert is_detector(tmp_path / "det") and not state_folder(tmp_path / "det").exists()
    # The weights, the optimizer (its iteration counter drives the cosine decay) and the random
    # generator (batches, crops) are restored, and CPU training is deterministic: exactly equal.
    expected, got = (load_detector(tmp_path / name).model.get_weights() for name in ("full", "det"))
    assert len(expected) == len(got) and all(np.array_equal(a, b) for a, b in zip(expected, got))
    assert resumed.final_loss == full.final_loss


def test_detector_checkpoint_of_other_settings_is_not_resumed(interrupted, tmp_path, count_steps, capsys):
    from virion.micrograph.heatmap_training import state_folder, train_from_boxes

    boxes, _ = interrupted
    copy_state(interrupted, tmp_path / "det")
    result = train_from_boxes(boxes, tmp_path / "det", epochs=2, batch_size=1, progress=False)  # it had 3
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "checkpoint" in line]
    assert "ignoring the checkpoint" in line and "another training" in line and "training from epoch 1" in line
    assert len(count_steps) == 4 and result.resumed_after == 0  # 2 epochs from the start
    assert is_detector(tmp_path / "det") and not state_folder(tmp_path / "det").exists()


def test_ctrl_c_during_detector_training_says_how_to_continue(tmp_path, monkeypatch, capsys):
    import virion.micrograph.heatmap_training as heatmap_training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(heatmap_training, "train_from_boxes", interrupted)
    boxes = write_boxes(tmp_path / "data", [0])
    assert main(["detector", str(boxes), "--out", str(tmp_path / "det"), "--quiet"]) == 130
    assert "run the same command again to continue" in capsys.readouterr().err


def test_crops_cut_detected_windows_on_the_learned_detectors_candidates(trained, saved, tmp_path):
    from virion.micrograph.crops import cut_crops

    boxes = write_boxes(tmp_path / "data", [103, 104], extra=2)  # two unannotated discs each: hard negatives
    result = cut_crops(boxes, tmp_path / "out", size=64, detected=True, detector=saved, background=3, progress=False)
    with open(tmp_path / "out" / "manifest.csv") as fh:
        manifest = list(csv.DictReader(fh))
    for seed in (103, 104):
        pixels, planted, debris = synthetic(seed, extra=2)
        c = trained.detect(pixels, 1.0)
        rows = [r for r in manifest if r["micrograph"] == f"m{seed}.png"][len(planted) :]  # after the box windows
        inside = [(x, y) for x, y in zip(c.x, c.y) if any(b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in planted)]
        positives = [r for r in rows if r["label"] != BACKGROUND_CLASS]
        assert sorted((float(r["x"]), float(r["y"])) for r in positives) == sorted(
            (round(float(x), 1), round(float(y), 1)) for x, y in inside
        )
        for r in (r for r in rows if r["label"] == BACKGROUND_CLASS):  # candidates in no box: the debris
            x, y = float(r["x"]), float(r["y"])
            assert min(np.hypot(c.x - x, c.y - y)) < 0.1 and min(np.hypot(*(debris - (x, y)).T)) <= 6
    assert result.detected >= 8 and result.background == 4  # two debris discs per micrograph
    assert is_detector(tmp_path / "out" / DETECTOR_DIR) and "Detector: learned heat map" in result.summary()
    # `--detector` without `--detected` only hands the detector on.
    argv = ["crops", str(boxes), "--out", str(tmp_path / "plain"), "--size", "64", "--detector", str(saved), "--quiet"]
    assert main(argv) == 0
    assert is_detector(tmp_path / "plain" / DETECTOR_DIR)


def test_training_keeps_the_datas_detector_in_the_run(saved, tmp_path, monkeypatch):
    import shutil

    import virion.training.trainer as trainer
    from virion import workflow
    from virion.micrograph.detector_files import find_detector, keep_detector
    from virion.micrograph.sizes import CLASS_SIZES_FILE

    crops = tmp_path / "crops"
    shutil.copytree(saved, crops / DETECTOR_DIR)
    (crops / CLASS_SIZES_FILE).write_text(json.dumps({"unit": "nm", "classes": {"A": 40}}))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": str(crops / "manifest.csv")}))
    assert find_detector(run) == crops / DETECTOR_DIR  # before training copies it: the data's
    monkeypatch.setattr(trainer, "train_run", lambda config, **kw: types.SimpleNamespace(run_dir=run))
    workflow.train(data=str(crops / "manifest.csv"), out=str(run), evaluate_after=False, progress=False)
    shutil.rmtree(crops)  # the crops folder moved away: the run keeps its detector (and class sizes)
    assert is_detector(run / DETECTOR_DIR) and find_detector(run) == run / DETECTOR_DIR
    assert (run / CLASS_SIZES_FILE).is_file()
    assert keep_detector(tmp_path / "elsewhere", run) is None  # nothing there: nothing copied
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken / DETECTOR_DIR)
    (broken / DETECTOR_DIR / META_FILE).write_text(json.dumps({"format": "something-else", "version": 1}))
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(VirionError, match="not a detector"):  # a broken detector is reported, not copied
        keep_detector(broken, other)
    assert not (other / DETECTOR_DIR).exists()


def test_scan_uses_the_runs_detector_and_log_on_request(saved, tmp_path, monkeypatch, capsys):
    import shutil

    import virion.micrograph.scan as scan_module

    monkeypatch.setattr(scan_module, "_load_classifier", lambda run, models=None: CentreBrightness())
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(saved, run / DETECTOR_DIR)
    pixels, boxes, _ = synthetic(105)
    Image.fromarray(pixels).save(tmp_path / "m.png")
    learned = scan_module.scan(run, [tmp_path / "m.png"], overlays=False, progress=False)
    assert learned.detector == f"learned heat map ({run / DETECTOR_DIR})" and "Detector: learned" in learned.summary()
    rows = learned.particles
    assert len(rows) == len(boxes) and all(0 < r["score"] <= 1 for r in rows)  # heat, not a z-score
    for x0, y0, x1, y1 in boxes:
        assert any(np.hypot(r["x"] - (x0 + x1) / 2, r["y"] - (y0 + y1) / 2) <= 6 for r in rows)
    blobs = scan_module.scan(run, [tmp_path / "m.png"], detector="log", overlays=False, progress=False)
    assert blobs.detector.startswith("LoG") and any(r["score"] > 1 for r in blobs.particles)
    argv = ["scan", str(run), str(tmp_path / "m.png"), "--no-overlays", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert "Detector: learned heat map" in capsys.readouterr().out
    assert main([*argv, "--out", str(tmp_path / "b"), "--detector", "log"]) == 0
    assert "Detector: LoG blobs (--detector log)" in capsys.readouterr().out
    assert main([*argv, "--out", str(tmp_path / "c"), "--detector", str(tmp_path / "nowhere")]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "--detector" in err and "nowhere" in err

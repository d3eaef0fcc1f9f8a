"""`virion scan`: the detector finds planted particles and nothing in black padding, the verdict rule,
particles.csv / verdicts.csv / overlay agree, an empty micrograph gives `none`, and the command end
to end with a tiny Keras run.

Tiny synthetic micrographs are made in each test (no shared data).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scan_helpers import CentreBrightness
from scipy import ndimage

from virion.cli.main import main
from virion.data.layout import BACKGROUND_CLASS
from virion.errors import VirionError
from virion.micrograph.detect import detect
from virion.micrograph.scan import PARTICLE_COLUMNS, scan
from virion.micrograph.verdict import NONE, UNCERTAIN, decide, particle_weights

# (x, y) centres of the planted particles, diameter 40 px (= 40 nm at 1 nm/px).
PLANTED = [(140, 110), (300, 150), (220, 300), (330, 330)]
DIAMETER = 40
PAD_COLUMNS = 70  # black padding on the left


def micrograph(particles=PLANTED, seed=0, pad=PAD_COLUMNS, size=420) -> np.ndarray:
    """Noisy stain, bright discs with a soft edge, black padding on the left (uint8)."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=(size, size)), 4)
    values = 110 + 40 * smooth / smooth.std() * 0.3 + rng.normal(0, 6, (size, size))
    yy, xx = np.mgrid[:size, :size]
    for x, y in particles:
        r = np.hypot(xx - x, yy - y)
        values += 70 / (1 + np.exp((r - DIAMETER / 2) / 2))
    values[:, :pad] = 0
    return np.clip(values, 0, 255).astype(np.uint8)


def test_detector_finds_planted_particles_and_nothing_in_padding():
    image = micrograph()
    c = detect(image, 1.0)
    strongest = c.take(np.argsort(-c.score)[: len(PLANTED)])
    for x, y in PLANTED:
        d = np.hypot(strongest.x - x, strongest.y - y)
        assert d.min() <= DIAMETER / 4, f"planted particle at {(x, y)} not among the strongest candidates"
        assert 0.6 * DIAMETER <= strongest.diameter[d.argmin()] <= 1.6 * DIAMETER
    assert len(c) and (c.x >= PAD_COLUMNS).all(), "a candidate in the black padding"
    assert (c.x < image.shape[1]).all() and (c.y < image.shape[0]).all() and (c.y >= 0).all()


def test_detector_on_padding_only_and_on_flat_image():
    assert len(detect(np.zeros((200, 200), np.uint8))) == 0
    flat = np.full((200, 200), 120, np.uint8)
    assert len(detect(flat)) == 0 or detect(flat).score.max() < 1e3  # no NaN/inf from a zero spread


def test_candidates_in_boxes_and_one_to_one_matching():
    from virion.micrograph.detect import box_containing, inside_any_box, match_boxes

    boxes = [(0, 0, 40, 40), (30, 0, 70, 40), (100, 100, 120, 160)]
    x, y = np.array([15.0, 36.0, 40.0, 110.0, 200.0, 110.0]), np.array([15.0, 20.0, 40.0, 130.0, 5.0, 99.0])
    # (36, 20) and (40, 40) (on both boxes' edges) are in the first two boxes, nearer the second's centre.
    np.testing.assert_array_equal(box_containing(boxes, x, y), [0, 1, 1, 2, -1, -1])
    np.testing.assert_array_equal(inside_any_box(boxes, x, y), [True, True, True, True, False, False])
    assert box_containing([], x, y).tolist() == [-1] * 6
    # One-to-one, within half the shorter side: the thin box's radius is 10, so (110, 130) matches it.
    assert sorted(match_boxes(boxes, x, y)) == [(0, 0), (1, 1), (2, 3)]
    assert match_boxes(boxes, [21.0, 20.0], [20.0, 20.0]) == [(0, 1)]  # two on one box: only the nearest matches


def test_verdict_rule():
    names = ["A", "B", BACKGROUND_CLASS]
    assert decide(np.zeros((0, 3)), names).verdict == NONE
    v = decide(np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]]), names)
    assert (v.verdict, v.runner_up, v.particles, v.counts) == ("A", "B", 3, {"A": 2, "B": 1})
    assert v.probability == pytest.approx(1.5 / 2.7)
    assert v.counts_text() == "A:2;B:1"
    close = decide(np.array([[0.5, 0.49, 0.01]]), names)  # leads by 0.01 of the share < margin 0.02
    assert close.verdict == UNCERTAIN and close.leading == "A"
    assert decide(np.array([[0.5, 0.45, 0.05]]), names).verdict == "A"  # 0.05 ahead: a verdict
    assert decide(np.array([[0.5, 0.45, 0.05]]), names, margin=0.10).verdict == UNCERTAIN
    few = decide(np.array([[0.9, 0.1, 0.0]]), names, min_particles=2)
    assert few.verdict == UNCERTAIN


def test_verdict_weights():
    names = ["A", "B", BACKGROUND_CLASS]
    probs = np.array([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.1, 0.9, 0.0]])
    assert decide(probs, names).verdict == "B"  # two B particles outvote one A
    heavy = decide(probs, names, weights=[10.0, 1.0, 1.0])  # ... unless the A particle weighs more
    assert (heavy.verdict, heavy.runner_up, heavy.counts) == ("A", "B", {"A": 1, "B": 2})  # counts stay counts
    assert heavy.probability == pytest.approx(9.2 / 12.0)
    assert decide(probs, names, weights=[0.0, 0.0, 0.0]).verdict == "B"  # no weight at all: unweighted
    with pytest.raises(ValueError, match="weights"):
        decide(probs, names, weights=[1.0, 1.0])
    np.testing.assert_array_equal(particle_weights([4.0, 7.5], "score"), [4.0, 7.5])
    assert particle_weights([4.0, 7.5], "none") is None
    with pytest.raises(ValueError, match="weight_by"):
        particle_weights([4.0], "area")


def two_brightness_micrograph(seed=0, size=420) -> np.ndarray:
    """Two strong bright discs (class A for `TwoLevel`) and three faint ones (class B): the faint
    ones are more numerous, the strong ones have much higher detector scores."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=(size, size)), 4)
    values = 110 + 40 * smooth / smooth.std() * 0.3 + rng.normal(0, 6, (size, size))
    yy, xx = np.mgrid[:size, :size]
    strong = [((100, 100), 90), ((300, 120), 90)]
    faint = [((110, 300), 35), ((210, 210), 35), ((320, 320), 35)]
    for (x, y), amplitude in strong + faint:
        values += amplitude / (1 + np.exp((np.hypot(xx - x, yy - y) - DIAMETER / 2) / 2))
    return np.clip(values, 0, 255).astype(np.uint8)


class TwoLevel(CentreBrightness):
    """A stand-in classifier: a very bright centre is A, a slightly bright one B, else `_background`."""

    def predict(self, windows, *, model=None, tta=False, batch_size=32, progress=False):
        windows = np.asarray(windows, float)
        lift = windows[:, 123:133, 123:133].mean(axis=(1, 2)) - windows[:, 60:196, 60:196].mean(axis=(1, 2))
        probs = np.where(
            (lift > 60)[:, None],
            [0.8, 0.15, 0.05],
            np.where((lift > 12)[:, None], [0.15, 0.8, 0.05], [0.05, 0.05, 0.9]),
        )

        class Out:
            probabilities = probs
            class_names = self.class_names

        return Out()


def test_scan_weighs_particles_by_detector_score(tmp_path):
    folder = tmp_path / "specimen"
    folder.mkdir()
    Image.fromarray(two_brightness_micrograph()).save(folder / "m.png")
    plain = scan(TwoLevel(), [folder], specimen_by="folder", weight_by="none", overlays=False, progress=False)
    (m,) = plain.micrographs
    assert m.weights is None and m.verdict.counts == {"A": 2, "B": 3}
    assert m.verdict.verdict == "B" and plain.specimens["specimen"].verdict == "B"  # three faint B outvote two A
    weighted = scan(TwoLevel(), [folder], specimen_by="folder", weight_by="score", overlays=False, progress=False)
    (w,) = weighted.micrographs
    np.testing.assert_allclose(w.weights, [p["score"] for p in w.particles], atol=1e-3)  # the score column
    assert w.verdict.counts == {"A": 2, "B": 3}
    assert w.verdict.verdict == "A" and weighted.specimens["specimen"].verdict == "A"  # the strong blobs decide
    expected = decide(w.probabilities, weighted.class_names, weights=w.weights)
    assert w.verdict.probability == pytest.approx(expected.probability)


class Doubtful(CentreBrightness):
    """A stand-in classifier that calls every window A with probability 0.4 (B 0.35, background 0.25)."""

    def predict(self, windows, *, model=None, tta=False, batch_size=32, progress=False):
        probs = np.tile([0.4, 0.35, 0.25], (len(windows), 1))

        class Out:
            probabilities = probs
            class_names = self.class_names

        return Out()


def test_scan_keeps_particles_at_the_detectors_own_min_confidence():
    from dataclasses import replace

    from virion.micrograph.detector_files import LogDetector
    from virion.micrograph.scan import scan_pixels

    pixels = micrograph()
    strict = scan_pixels(Doubtful(), pixels, detector=LogDetector())  # LoG's own: 0.5 > 0.4
    assert LogDetector().min_confidence == 0.5 and strict.particles == [] and strict.verdict.verdict == NONE
    lenient = scan_pixels(Doubtful(), pixels, detector=replace(LogDetector(), min_confidence=0.3))
    assert len(lenient.particles) >= len(PLANTED) and lenient.verdict.verdict == "A"
    assert scan_pixels(Doubtful(), pixels, detector=LogDetector(), min_confidence=0.3).particles == lenient.particles


def test_size_prior_keeps_one_particle_per_class_size():
    from virion.micrograph.sizes import suppress_by_class_size

    x, y = np.array([0.0, 10.0, 30.0, 12.0, 100.0]), np.zeros(5)
    labels = ["A", "A", "A", "B", "A"]
    score = np.array([5.0, 9.0, 4.0, 3.0, 6.0])
    # A is 40 px: within 20 px of the strongest A (at 10) go 0 and 30 (20 px: kept, not closer); B has its own.
    np.testing.assert_array_equal(suppress_by_class_size(x, y, labels, score, {"A": 40.0}), [1, 2, 3, 4])
    np.testing.assert_array_equal(suppress_by_class_size(x, y, labels, score, {"A": 41.0}), [1, 3, 4])
    np.testing.assert_array_equal(suppress_by_class_size(x, y, labels, score, {}), [0, 1, 2, 3, 4])  # no sizes


def test_scan_with_class_sizes_merges_particles_closer_than_half_the_class_size(tmp_path):
    path = tmp_path / "m.png"
    Image.fromarray(micrograph()).save(path)
    plain = scan(CentreBrightness(), [path], overlays=False, progress=False)
    assert len(plain.particles) == len(PLANTED) and plain.class_sizes is None
    sized = scan(CentreBrightness(), [path], class_sizes={"A": 400.0}, overlays=False, progress=False)
    rows = sized.particles
    assert 1 <= len(rows) < len(PLANTED) and sized.class_sizes == {"A": 400.0}
    assert "Size prior: sizes of 1 classes" in sized.summary() and "Size prior" not in plain.summary()
    for i, p in enumerate(rows):  # what stays: the strongest, each at least half of A's size from another
        assert all(np.hypot(p["x"] - q["x"], p["y"] - q["y"]) >= 200 for q in rows[i + 1 :])
    strongest = max(plain.particles, key=lambda p: p["score"])
    assert any((p["x"], p["y"]) == (strongest["x"], strongest["y"]) for p in rows)
    assert sized.micrographs[0].verdict.particles == len(rows)  # the verdict counts what is kept
    off = scan(CentreBrightness(), [path], class_sizes={"A": 400.0}, size_prior=False, overlays=False, progress=False)
    assert len(off.particles) == len(PLANTED)
    # In nm: at 2 nm/px the same 400 nm is 200 px of the run (1 nm/px), i.e. 100 px of the input.
    small = np.asarray(Image.fromarray(micrograph()).resize((210, 210), Image.Resampling.LANCZOS))
    Image.fromarray(small).save(tmp_path / "half.png")
    half = scan(CentreBrightness(), [tmp_path / "half.png"], nm_per_px=2.0, class_sizes={"A": 400.0},
                overlays=False, progress=False).particles  # fmt: skip
    assert len(half) == len(rows)


def test_class_sizes_are_found_for_a_run_and_absent_for_an_old_one(tmp_path):
    from virion.micrograph.sizes import CLASS_SIZES_FILE, find_class_sizes, read_class_sizes

    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"data": str(tmp_path / "gone")}))
    assert find_class_sizes(old) is None  # an older run: no sizes, scanned as before
    crops = tmp_path / "crops"
    crops.mkdir()
    (crops / CLASS_SIZES_FILE).write_text(json.dumps({"unit": "nm", "classes": {"A": 80, "B": 30.5}}))
    (crops / "manifest.csv").write_text("path,label\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": str(crops / "manifest.csv")}))
    assert find_class_sizes(run) == {"A": 80.0, "B": 30.5}  # the training data's (a manifest path)
    (run / "config.json").write_text(json.dumps({"data": str(crops)}))
    assert find_class_sizes(run) == {"A": 80.0, "B": 30.5}  # ... or its folder
    (run / CLASS_SIZES_FILE).write_text(json.dumps({"classes": {"A": 90}}))
    assert find_class_sizes(run) == {"A": 90.0}  # the run's own wins
    (run / CLASS_SIZES_FILE).write_text("[1, 2]")
    with pytest.raises(VirionError, match="class sizes"):
        read_class_sizes(run / CLASS_SIZES_FILE)


def test_training_keeps_the_datas_class_sizes_in_the_run(tmp_path):
    from virion.micrograph.sizes import CLASS_SIZES_FILE, find_class_sizes, keep_class_sizes

    crops = tmp_path / "crops"
    crops.mkdir()
    (crops / CLASS_SIZES_FILE).write_text(json.dumps({"unit": "nm", "classes": {"A": 80, "B": 30.5}}))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": str(crops / "manifest.csv")}))
    assert keep_class_sizes(crops / "manifest.csv", run) == run / CLASS_SIZES_FILE
    shutil.rmtree(crops)  # the crops folder moved away: the run still has its sizes
    assert find_class_sizes(run) == {"A": 80.0, "B": 30.5}
    assert keep_class_sizes(tmp_path / "elsewhere", run) is None  # no sizes there: nothing copied
    (run / CLASS_SIZES_FILE).write_text(json.dumps({"classes": {"A": 90}}))
    crops.mkdir()
    (crops / CLASS_SIZES_FILE).write_text(json.dumps({"classes": {"A": 10}}))
    assert keep_class_sizes(crops, run) is None and find_class_sizes(run) == {"A": 90.0}  # never overwritten
    (crops / CLASS_SIZES_FILE).write_text("[1]")
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(VirionError, match="class sizes"):  # a broken file is reported, not copied
        keep_class_sizes(crops, other)
    assert not (other / CLASS_SIZES_FILE).exists()


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_scan_outputs_agree(tmp_path):
    folder = tmp_path / "specimen1"
    folder.mkdir()
    Image.fromarray(micrograph()).save(folder / "one.png")
    Image.fromarray(micrograph(particles=[], seed=3)).save(folder / "empty.png")
    (folder / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    result = scan(CentreBrightness(), [folder], out, specimen_by="folder", progress=False)

    particles = _read(out / "particles.csv")
    verdicts = {r["micrograph"]: r for r in _read(out / "verdicts.csv")}
    assert list(particles[0]) == list(PARTICLE_COLUMNS)
    one, empty, broken = (str(folder / n) for n in ("one.png", "empty.png", "broken.png"))
    rows = [p for p in particles if p["micrograph"] == one]
    assert len(rows) == len(PLANTED), rows  # every planted particle, nothing else
    for x, y in PLANTED:
        assert min(np.hypot(float(p["x"]) - x, float(p["y"]) - y) for p in rows) <= DIAMETER / 4
    for p in rows:
        assert float(p["xmin"]) < float(p["x"]) < float(p["xmax"]) and p["class"] == "A"
        assert float(p["diameter_nm"]) == pytest.approx(float(p["xmax"]) - float(p["xmin"]), abs=0.2)
    assert verdicts[one]["verdict"] == "A" and verdicts[one]["particles"] == str(len(rows))
    assert verdicts[one]["counts"] == f"A:{len(rows)}"
    assert verdicts[empty]["verdict"] == NONE and verdicts[empty]["particles"] == "0"
    assert verdicts[broken]["verdict"] == "unreadable" and verdicts[broken]["error"]
    assert [f for f, _ in result.failures] == [broken]

    overlay = Image.open(out / "overlays" / "one.png")
    share = float(verdicts[one]["probability"])
    assert share == pytest.approx(0.8 / 0.95, abs=1e-4)  # A's share of the summed virus probability
    assert f"A ({share:.2f}; A:4)" in overlay.info["Title"]  # the overlay says what verdicts.csv says
    specimens = _read(out / "specimens.csv")
    assert specimens == [
        {
            "specimen": "specimen1",
            "micrographs": "2",
            "verdict": "A",
            "probability": verdicts[one]["probability"],
            "runner_up": "B",
            "particles": "4",
            "counts": "A:4",
            "leading": "A",
        }
    ]
    with pytest.raises(VirionError, match="--overwrite"):
        scan(CentreBrightness(), [folder], out, progress=False)


def test_scan_resamples_to_the_run_pixel_size(tmp_path):
    # The same micrograph at 2 nm/px (half the pixels): particles come back in its own pixels.
    small = np.asarray(Image.fromarray(micrograph()).resize((210, 210), Image.Resampling.LANCZOS))
    path = tmp_path / "half.png"
    Image.fromarray(small).save(path)
    result = scan(CentreBrightness(), [path], nm_per_px=2.0, overlays=False, progress=False)
    rows = result.particles
    assert len(rows) == len(PLANTED)
    for x, y in PLANTED:
        assert min(np.hypot(p["x"] - x / 2, p["y"] - y / 2) for p in rows) <= DIAMETER / 8
    assert all(30 <= p["diameter_nm"] <= 60 for p in rows)


def test_a_filament_is_one_particle(tmp_path):
    image = micrograph(particles=[(120, 330)])
    values = image.astype(float)
    values[150:190, 100:380] += 70  # a bright filament 40 px wide, 280 px long
    path = tmp_path / "filament.png"
    Image.fromarray(np.clip(values, 0, 255).astype(np.uint8)).save(path)
    rows = scan(CentreBrightness(), [path], overlays=False, progress=False).particles
    long = [p for p in rows if p["xmax"] - p["xmin"] > 150]
    assert len(long) == 1, rows
    (f,) = long
    assert f["xmin"] <= 130 and f["xmax"] >= 350 and 150 <= f["y"] <= 190  # its box spans it, its centre is on it
    assert 20 <= f["diameter_nm"] <= 70  # the filament's width
    assert any(np.hypot(p["x"] - 120, p["y"] - 330) <= 10 for p in rows)  # the round particle stays separate
    assert all(not (150 <= p["y"] <= 190) or p is f for p in rows)  # no second row on the filament


def _tiny_run(root: Path) -> Path:
    """A run folder with one tiny Keras model that always answers class A with probability ~0.9."""
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("predictions").set_weights([np.zeros((3, 3)), np.array([3.0, 0.0, 0.0])])
    folder = root / "tiny"
    folder.mkdir(parents=True)
    model.save(folder / "tiny_virus_classification.keras")
    meta = {"name": "tiny", "class_names": ["A", "B", BACKGROUND_CLASS], "input_size": 32, "weights": "none"}
    (folder / "metadata.json").write_text(json.dumps(meta))
    (root / "config.json").write_text(json.dumps({"seed": 0}))
    return root


def test_cli_end_to_end(tmp_path, capsys):
    run = _tiny_run(tmp_path / "run")
    data = tmp_path / "mics"
    data.mkdir()
    Image.fromarray(micrograph(particles=PLANTED[:2], size=300)).save(data / "m1.png")
    out = tmp_path / "scan"
    code = main(["scan", str(run), str(data), "--out", str(out), "--no-progress", "--min-confidence", "0.8"])
    assert code == 0, capsys.readouterr().err
    particles = _read(out / "particles.csv")
    (verdict,) = _read(out / "verdicts.csv")
    assert particles and {p["class"] for p in particles} == {"A"}
    assert verdict["verdict"] == "A" and int(verdict["particles"]) == len(particles)
    assert (out / "overlays" / "m1.png").is_file()
    assert "A" in capsys.readouterr().out


def test_cli_scan_finds_the_class_sizes_of_the_runs_training_data(tmp_path, capsys):
    run = _tiny_run(tmp_path / "run")  # answers A everywhere: every candidate is a particle
    data = tmp_path / "mics"
    data.mkdir()
    Image.fromarray(micrograph()).save(data / "m1.png")
    argv = ["scan", str(run), str(data), "--no-progress", "--min-confidence", "0.8", "--no-overlays"]
    assert main([*argv, "--out", str(tmp_path / "old")]) == 0  # an older run: no sizes anywhere
    before = _read(tmp_path / "old" / "particles.csv")
    assert len(before) > 1 and "Size prior" not in capsys.readouterr().out
    crops = tmp_path / "crops"  # the dataset the run was trained on, as `virion crops` writes it
    crops.mkdir()
    (crops / "class_sizes.json").write_text(json.dumps({"unit": "nm", "classes": {"A": 1000.0}}))
    (run / "config.json").write_text(json.dumps({"seed": 0, "data": str(crops / "manifest.csv")}))
    assert main([*argv, "--out", str(tmp_path / "new")]) == 0
    after = _read(tmp_path / "new" / "particles.csv")
    (verdict,) = _read(tmp_path / "new" / "verdicts.csv")
    assert len(after) == 1 and verdict["particles"] == "1"  # all within 500 px of the strongest: one particle
    strongest = max(before, key=lambda p: float(p["score"]))
    assert (after[0]["x"], after[0]["y"]) == (strongest["x"], strongest["y"])
    assert "Size prior" in capsys.readouterr().out
    assert main([*argv, "--out", str(tmp_path / "off"), "--no-size-prior"]) == 0  # turned off: as before
    assert _read(tmp_path / "off" / "particles.csv") == before


def test_cli_scan_passes_the_verdict_weights_and_size_prior_switch(tmp_path, monkeypatch, capsys):
    import virion.micrograph.scan as scan_module

    seen = {}

    def fake_scan(*args, **kwargs):
        seen.update(kwargs)
        return scan_module.ScanResult([], ["A"])

    monkeypatch.setattr(scan_module, "scan", fake_scan)
    argv = ["scan", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(argv) == 0 and (seen["weight_by"], seen["size_prior"], seen["min_confidence"]) == ("score", True, None)
    assert main([*argv, "--weight-by", "none", "--no-size-prior", "--min-confidence", "0.7"]) == 0
    assert (seen["weight_by"], seen["size_prior"], seen["min_confidence"]) == ("none", False, 0.7)
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--weight-by", "votes"])
    assert exc.value.code == 2 and "--weight-by" in capsys.readouterr().err

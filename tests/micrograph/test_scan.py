"""`virion scan`: the detector finds planted particles and nothing in black padding, the verdict rule,
particles.csv / verdicts.csv / overlay agree, an empty micrograph gives `none`, and the command end
to end with a tiny Keras run.

Tiny synthetic micrographs are made in each test (no shared data).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from virion.cli.main import main
from virion.data.layout import BACKGROUND_CLASS
from virion.errors import VirionError
from virion.micrograph.detect import detect
from virion.micrograph.scan import PARTICLE_COLUMNS, scan
from virion.micrograph.verdict import NONE, UNCERTAIN, decide

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


class CentreBrightness:
    """A stand-in classifier: a window whose centre is bright is class A, else `_background`."""

    class_names = ["A", "B", BACKGROUND_CLASS]
    metadata: dict = {}
    default_model = "centre-brightness"

    def predict(self, windows, *, model=None, tta=False, batch_size=32, progress=False):
        windows = np.asarray(windows, float)
        centre = windows[:, 118:138, 118:138].mean(axis=(1, 2))
        ring = windows[:, 60:196, 60:196].mean(axis=(1, 2))
        particle = centre > ring + 25
        probs = np.where(particle[:, None], [0.8, 0.15, 0.05], [0.05, 0.05, 0.9])

        class Out:
            probabilities = probs
            class_names = self.class_names

        return Out()


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


def test_verdict_rule():
    names = ["A", "B", BACKGROUND_CLASS]
    assert decide(np.zeros((0, 3)), names).verdict == NONE
    v = decide(np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]]), names)
    assert (v.verdict, v.runner_up, v.particles, v.counts) == ("A", "B", 3, {"A": 2, "B": 1})
    assert v.probability == pytest.approx(1.5 / 2.7)
    assert v.counts_text() == "A:2;B:1"
    close = decide(np.array([[0.5, 0.45, 0.05]]), names)  # leads by 0.05 of the share < margin 0.10
    assert close.verdict == UNCERTAIN and close.leading == "A"
    few = decide(np.array([[0.9, 0.1, 0.0]]), names, min_particles=2)
    assert few.verdict == UNCERTAIN


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

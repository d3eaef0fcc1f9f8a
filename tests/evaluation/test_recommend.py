"""The recommended classifier is chosen on the validation split, never on test; ensembles are rows.

The run holds two hand-wired Keras models over two classes: `right` calls bright images "bright",
`flipped` calls them "dark". The validation split is labelled as `right` sees it and the test split
the other way round, so `flipped` is perfect on test and `right` is perfect on validation: a choice
made on test data would pick `flipped`.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

SIZE = 32
CLASSES = ["bright", "dark"]


def brightness_model(flipped: bool):
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs)
    sign = -1.0 if flipped else 1.0
    kernel = np.full((3, 2), 0.0, np.float32)
    kernel[:, 0], kernel[:, 1] = sign * 6.0, -sign * 6.0  # logit(bright) - logit(dark) = sign * 36 * (x - 0.5)
    model.get_layer("head").set_weights([kernel, np.array([-sign * 9.0, sign * 9.0], np.float32)])
    return model


def _images(folder, level, n, seed):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(np.clip(rng.normal(level, 6, (SIZE, SIZE)), 0, 255).astype(np.uint8)).save(
            folder / f"{seed}_{i}.png"
        )


@pytest.fixture()
def swapped_run(tmp_path):
    data = tmp_path / "data"
    for split, seed, n in (("train", 0, 4), ("validation", 1, 16), ("test", 2, 6)):
        swap = split == "test"  # test labels disagree with validation labels
        _images(data / split / ("dark" if swap else "bright"), 220, n, seed)
        _images(data / split / ("bright" if swap else "dark"), 35, n, seed + 10)
    run = tmp_path / "run"
    run.mkdir()
    config = {"data": str(data), "input_size": SIZE, "batch_size": 4, "seed": 0, "stretch": None}
    (run / "config.json").write_text(json.dumps(config))
    for name, flipped in (("right", False), ("flipped", True)):
        (run / name).mkdir()
        brightness_model(flipped).save(run / name / f"{name}_virus_classification.keras")
        meta = {"model": name, "class_names": CLASSES, "input_size": SIZE, "stretch": None, "kind": "scratch"}
        (run / name / "metadata.json").write_text(json.dumps(meta))
    return run, data


def test_recommendation_is_chosen_on_validation_not_test(swapped_run, capsys):
    from virion.cli.main import main
    from virion.run.store import read_recommended

    run, data = swapped_run
    assert main(["evaluate", str(run)]) == 0
    chosen = read_recommended(run)
    assert chosen["classifier"] == "right" and chosen["members"] == ["right"] and chosen["split"] == "validation"
    assert chosen["candidates"]["right"]["macro_f1"] == 1.0 and chosen["candidates"]["flipped"]["macro_f1"] == 0.0
    assert "best validation log-loss" in chosen["why"] and chosen["why"].endswith("on 32 validation images")
    # the setup discriminates: on the test split the other model is the perfect one
    summaries = {n: json.loads((run / n / "evaluation" / "summary.json").read_text()) for n in ("right", "flipped")}
    assert summaries["flipped"]["accuracy"] == 1.0 and summaries["right"]["accuracy"] == 0.0
    # the mean of the two is a row of the comparison and of the report
    table = (run / "comparison.md").read_text()
    assert "| ensemble |" in table.replace("| run |", "") or "ensemble" in table
    with (run / "comparison.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["model"] for r in rows][:2] == ["flipped", "right"] and "ensemble" in [r["model"] for r in rows]
    ensemble = json.loads((run / "ensemble" / "evaluation" / "summary.json").read_text())
    assert ensemble["members"] == ["flipped", "right"] and ensemble["n_images"] == 12
    report = (run / "report.html").read_text()
    assert "Recommended classifier:</b> right" in report and "Ensemble: ensemble" in report


def test_predict_writes_one_row_per_image_with_the_recommended_classifier(swapped_run, tmp_path, capsys):
    from virion.cli.main import main
    from virion.evaluation.ensemble import recommend

    run, data = swapped_run
    recommend(run, progress=False)
    files = sorted((data / "test").rglob("*.png"))[:3]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    out = tmp_path / "p.csv"
    args = ["predict", str(run), *map(str, files), str(broken), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert "classifier: right (best validation log-loss" in capsys.readouterr().out
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:3] == ["file", "class", "probability"]
    assert [r["file"] for r in rows] == [*map(str, files), str(broken)]  # one row per image, as given
    assert {r["model"] for r in rows[:3]} == {"right"} and rows[3]["error"] and not rows[3]["class"]
    assert [r["class"] for r in rows[:3]] == ["bright" if f.parent.name == "dark" else "dark" for f in files]
    # per-model rows only when asked for
    assert main([*args, "--overwrite", "--all-models"]) == 0
    with out.open(newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 2 * 3 + 1
    capsys.readouterr()
    # the validation-fitted weights (adopted here: they learn to trust `right`) answer as that model does
    assert main(["predict", str(run), str(files[0]), "--model", "ensemble-weighted"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split()[1:] == ["dark", "1.000"]
    assert main(["predict", str(run), str(files[0]), "--model", "nothing"]) == 2
    assert "choose one of: flipped, right" in capsys.readouterr().err


def test_weights_fitted_on_validation_favour_the_better_model():
    from virion.evaluation.ensemble import choose, fit_weights

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    good = np.full((60, 3), 0.1)
    good[np.arange(60), labels] = 0.8
    noise = rng.dirichlet(np.ones(3), 60)
    weights = fit_weights([good, noise], labels)
    assert weights.sum() == pytest.approx(1.0) and weights[0] > 0.9
    chosen = choose(labels, {"good": good, "noise": noise})
    assert chosen["classifier"] in ("good", "ensemble-weighted")
    assert set(chosen["candidates"]) >= {"good", "noise", "ensemble"}
    assert chosen["ensembles"]["ensemble"]["weights"] == [0.5, 0.5]
    few = choose(labels[:12], {"good": good[:12], "noise": noise[:12]})
    assert "ensemble-weighted" not in few["candidates"] and "only 12 validation images" in few["notes"][0]


def test_log_loss_ranks_before_macro_f1():
    """A confidently wrong model can win macro-F1 on a small split; the proper score decides."""
    from virion.evaluation.ensemble import choose

    labels = np.repeat(np.arange(4), 10)
    # `sharp`: right on 36 of 40 images with certainty, certain and wrong on the other 4
    sharp = np.full((40, 4), 1e-6)
    sharp[np.arange(40), labels] = 1.0
    wrong = np.arange(0, 40, 10)
    sharp[wrong] = 1e-6
    sharp[wrong, (labels[wrong] + 1) % 4] = 1.0
    # `soft`: right on 34 of 40 with 0.6, and never sure of the wrong answers
    soft = np.full((40, 4), 0.4 / 3)
    soft[np.arange(40), labels] = 0.6
    missed = np.arange(0, 40, 7)[:6]
    soft[missed] = 0.3
    soft[missed, labels[missed]] = 0.1
    chosen = choose(labels, {"sharp": sharp, "soft": soft})
    cands = chosen["candidates"]
    assert cands["sharp"]["macro_f1"] > cands["soft"]["macro_f1"]  # macro-F1 alone would pick `sharp`
    assert cands["soft"]["log_loss"] < cands["sharp"]["log_loss"]
    assert chosen["classifier"] != "sharp" and chosen["metric"].startswith("validation log-loss")

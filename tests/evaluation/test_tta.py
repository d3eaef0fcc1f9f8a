"""Test-time augmentation as an evaluation setting: the mean over the 8 dihedral views, said everywhere.

The model here is NOT rotation-invariant (a Flatten keeps positions), so TTA changes its probabilities
and every check below can fail; the views are built by hand with NumPy, not with `dihedral_views`.
"""

import csv
import json

import numpy as np
import pytest

from virion.evaluation import evaluate, metrics

SIZE = 32
pytestmark = pytest.mark.filterwarnings("ignore:.*set to 0 for class:RuntimeWarning")  # tiny sets miss classes


def position_model(num_classes: int, seed: int, size: int = SIZE):
    """conv → flatten → softmax with seeded weights: its answer depends on where things are in the image."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(2, 5, strides=4, name="base_conv")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs, name=f"position{seed}")
    kernel, bias = model.get_layer("head").get_weights()
    model.get_layer("head").set_weights([kernel * 8.0, bias])  # confident enough for views to disagree
    return model


def asymmetric_images(n: int, seed: int = 0, size: int = SIZE) -> np.ndarray:
    """uint8 (n, size, size): a bright blob off-centre, somewhere different in each image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, size, size), np.uint8)
    for i in range(n):
        cy, cx = rng.integers(3, size // 2, 2)
        img = 40 + rng.normal(0, 4, (size, size)) + 180 * ((yy - cy) ** 2 + (xx - cx) ** 2 < 20)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def views_by_hand(images: np.ndarray) -> list[np.ndarray]:
    """The 8 flips x quarter turns of uint8 (N, H, W), widened to float32 (N, H, W, 3)."""
    out = []
    for flipped in (images, images[:, :, ::-1]):
        for k in range(4):
            view = np.rot90(flipped, k=k, axes=(1, 2))
            out.append(np.repeat(view[..., None], 3, axis=-1).astype(np.float32))
    return out


def tta_by_hand(model, images: np.ndarray) -> np.ndarray:
    return np.mean([np.asarray(model.predict(v, verbose=0), np.float64) for v in views_by_hand(images)], axis=0)


def _rows(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_tta_is_the_mean_of_the_8_views(tmp_path):
    model = position_model(3, seed=1)
    images = asymmetric_images(10)
    labels = np.arange(10) % 3
    plain = np.asarray(model.predict(views_by_hand(images)[0], verbose=0), np.float64)
    expected = tta_by_hand(model, images)
    assert np.abs(expected - plain).max() > 0.05, "the test model must not be rotation-invariant"

    probs, _ = evaluate.predict_probabilities(model, images, batch_size=4, tta=True)  # 10 = 4 + 4 + a partial 2
    np.testing.assert_allclose(probs, expected, atol=1e-5)

    summary = evaluate.evaluate_model(
        model, images, labels, ["a", "b", "c"], tmp_path / "tta", batch_size=4, tta=True, model_name="m"
    )
    assert summary["tta"] is True and summary["tta_views"] == 8
    assert summary["log_loss"] == pytest.approx(metrics.log_loss(labels, expected), abs=1e-4)
    assert summary["accuracy"] == pytest.approx(float((expected.argmax(1) == labels).mean()))
    confidence = [float(r["confidence"]) for r in _rows(tmp_path / "tta" / "predictions.csv")]
    np.testing.assert_allclose(confidence, expected.max(axis=1), atol=1e-4)
    assert json.loads((tmp_path / "tta" / "summary.json").read_text())["tta"] is True

    off = evaluate.evaluate_model(model, images, labels, ["a", "b", "c"], tmp_path / "plain", batch_size=4)
    assert off["tta"] is False and off["tta_views"] == 1
    assert off["log_loss"] == pytest.approx(metrics.log_loss(labels, plain), abs=1e-4)


def _run_with_data(tmp_path, helpers, eval_tta: bool | None = None):
    """Two position models (different weights) in a run over class folders of asymmetric images."""
    from PIL import Image

    names = helpers.CLASS_NAMES[:3]
    data = tmp_path / "data"
    for label, name in enumerate(names):
        (data / name).mkdir(parents=True)
        for i, img in enumerate(asymmetric_images(8, seed=label)):
            Image.fromarray(img).save(data / name / f"{i}.png")
    run = helpers.make_run(
        tmp_path / "run", {"resnet50": {"class_names": names}, "xception": {"class_names": names}}, data=data
    )
    for seed, name in enumerate(("resnet50", "xception"), start=3):
        for f in (run / name).glob("*.keras"):
            position_model(3, seed=seed).save(f)
    config = json.loads((run / "config.json").read_text())
    config["stretch"] = "linear"  # the pixels as saved, so the hand-made views match what evaluation decodes
    if eval_tta is not None:
        config["eval_tta"] = eval_tta
    (run / "config.json").write_text(json.dumps(config))
    return run, data


def _split_arrays(run, split="test"):
    from virion.data.cache import load_split_arrays
    from virion.run import store
    from virion.run.splits import decode_settings, open_dataset

    config = store.read_config(run)
    dataset = open_dataset(config)
    return load_split_arrays(dataset.splits[split], decode_settings(config, SIZE), progress=False)


def test_evaluate_tta_never_clobbers_the_plain_evaluation(tmp_path, helpers, capsys):
    from virion.cli.main import main
    from virion.run.loading import find_model_file, load_keras_model

    run, _ = _run_with_data(tmp_path, helpers)
    assert main(["evaluate", str(run)]) == 0
    plain = {
        name: (run / name / "evaluation" / "summary.json").read_text() for name in ("resnet50", "xception", "ensemble")
    }
    plain_report = (run / "report.html").read_text()
    assert json.loads(plain["resnet50"])["tta"] is False
    capsys.readouterr()

    assert main(["evaluate", str(run), "--tta"]) == 0
    out = capsys.readouterr().out
    assert "8-way" in out and "report-tta.html" in out
    for name, text in plain.items():  # the plain evaluation is untouched
        assert (run / name / "evaluation" / "summary.json").read_text() == text
    assert (run / "report.html").read_text() == plain_report

    arrays = _split_arrays(run)
    member = {}
    for name in ("resnet50", "xception"):
        summary = json.loads((run / name / "evaluation-tta" / "summary.json").read_text())
        assert summary["tta"] is True and summary["tta_is_run_setting"] is False
        member[name] = tta_by_hand(load_keras_model(find_model_file(run / name)), arrays.images)
        assert summary["log_loss"] == pytest.approx(metrics.log_loss(arrays.labels, member[name]), abs=1e-4)
        assert summary["log_loss"] != pytest.approx(json.loads(plain[name])["log_loss"], abs=1e-4)
    ensemble = json.loads((run / "ensemble" / "evaluation-tta" / "summary.json").read_text())
    mean = (member["resnet50"] + member["xception"]) / 2  # the ensemble averages the members' TTA probabilities
    assert ensemble["tta"] is True
    assert ensemble["log_loss"] == pytest.approx(metrics.log_loss(arrays.labels, mean), abs=1e-4)

    rows = {r["model"]: r for r in _rows(run / "comparison-tta.csv")}
    assert {r["tta"] for r in rows.values()} == {"8-way"}
    assert {r["tta"] for r in _rows(run / "comparison.csv")} == {"none"}
    report = (run / "report-tta.html").read_text()
    assert "with 8-way TTA" in report and "with 8-way test-time augmentation" in report
    assert "with 8-way" not in plain_report


def test_eval_tta_setting_makes_the_runs_own_evaluation_tta(tmp_path, helpers, capsys):
    """config.json eval_tta: true → evaluation/ and recommended.json are TTA; --no-tta goes beside them."""
    from virion.cli.main import main
    from virion.run.loading import find_model_file, load_keras_model

    run, _ = _run_with_data(tmp_path, helpers, eval_tta=True)
    assert main(["evaluate", str(run)]) == 0
    validation = _split_arrays(run, "validation")
    chosen = json.loads((run / "recommended.json").read_text())
    expected = tta_by_hand(load_keras_model(find_model_file(run / "resnet50")), validation.images)
    assert chosen["candidates"]["resnet50"]["log_loss"] == pytest.approx(
        metrics.log_loss(validation.labels, expected), abs=1e-4
    )
    summary = json.loads((run / "resnet50" / "evaluation" / "summary.json").read_text())
    assert summary["tta"] is True and summary["tta_is_run_setting"] is True
    assert json.loads((run / "ensemble" / "evaluation" / "summary.json").read_text())["tta"] is True
    assert json.loads((run / "recommended.json").read_text())["tta"] is True  # chosen on TTA validation probabilities
    report = (run / "report.html").read_text()
    assert "with 8-way TTA" in report and 'id="tta"' in report
    from virion.app.card import build_card
    from virion.inference.classifier import Classifier

    assert any("8-way test-time augmentation" in note for note in build_card(run, Classifier.load(run)).notes)
    before = (run / "resnet50" / "evaluation" / "summary.json").read_text()

    assert main(["evaluate", str(run), "--no-tta", "--no-report"]) == 0
    assert (run / "resnet50" / "evaluation" / "summary.json").read_text() == before
    assert json.loads((run / "resnet50" / "evaluation-no-tta" / "summary.json").read_text())["tta"] is False


def test_other_tta_in_the_same_folder_is_refused(tmp_path, helpers):
    """A folder already holding the other TTA setting (e.g. a dataset named "tta") is never replaced silently."""
    from virion.errors import VirionError

    run, _ = _run_with_data(tmp_path, helpers)
    folder = run / "resnet50" / "evaluation-tta"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"tta": False, "accuracy": 0.5}))
    with pytest.raises(VirionError, match="evaluation-tta: holds an evaluation without TTA"):
        evaluate.evaluate_run(run, tta=True, progress=False)


def test_options_exist(capsys):
    from virion.cli.main import main
    from virion.training.config import TrainConfig

    for command in (["evaluate", "--help"], ["train", "--help"]):
        with pytest.raises(SystemExit):
            main(command)
    text = capsys.readouterr().out
    assert "--tta" in text and "--no-tta" in text and "--eval-tta" in text
    assert TrainConfig().eval_tta is False
    assert main(["train", "--eval-tta", "--print-config"]) == 0
    assert "eval_tta = true" in capsys.readouterr().out
    assert TrainConfig(eval_tta=True).to_dict()["eval_tta"] is True

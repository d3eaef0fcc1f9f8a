"""evaluate_model on a model whose every answer we know; evaluate_run on a run folder."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from virion.errors import VirionError
from virion.evaluation import evaluate
from virion.inference.batching import as_model_input
from virion.run.loading import find_model_file, load_keras_model

OUTPUTS = [
    "classification_report.txt",
    "classification_report.json",
    "classification_report.csv",
    "per_class_reference_metrics.csv",
    "confusion_matrix.csv",
    "confusion_matrix.png",
    "confusion_matrix_normalized.png",
    "curves.png",
    "predictions.csv",
    "mistakes.png",
    "summary.json",
]


def _rows(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, model, known_set, helpers):
    out = tmp_path_factory.mktemp("eval")
    history = helpers.write_history(out / "history.csv")
    with pytest.warns(RuntimeWarning, match="'Rift Valley'"):  # class 3 is never predicted
        summary = evaluate.evaluate_model(
            model,
            known_set["images"],
            known_set["labels"],
            helpers.CLASS_NAMES,
            out / "evaluation",
            files=known_set["files"],
            history_csv=history,
            batch_size=4,
        )  # 11 images: the last batch is partial
    return out / "evaluation", summary


def test_all_outputs_written(evaluated):
    out, _ = evaluated
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name


def test_confusion_matrix_and_summary_by_hand(evaluated, known_set, helpers):
    out, summary = evaluated
    # truth 0 0 0 1 1 1 2 2 2 3 3 / predicted 0 0 1 1 1 2 2 2 0 2 0
    expected = [[2, 1, 0, 0], [0, 2, 1, 0], [1, 0, 2, 0], [1, 0, 1, 0]]
    rows = _rows(out / "confusion_matrix.csv")
    assert [r["true_class"] for r in rows] == helpers.CLASS_NAMES
    assert [[int(r[c]) for c in helpers.CLASS_NAMES] for r in rows] == expected
    assert summary["accuracy"] == pytest.approx(6 / 11)
    assert summary["n_mistakes"] == 5 and summary["n_images"] == 11
    precision = [2 / 4, 2 / 3, 2 / 4, 0.0]
    recall = [2 / 3, 2 / 3, 2 / 3, 0.0]
    assert summary["macro_precision"] == pytest.approx(np.mean(precision))
    assert summary["macro_recall"] == pytest.approx(np.mean(recall))
    assert "inference_images_per_second" in summary  # measured, so its value is not asserted
    assert any("precision set to 0 for class 'Rift Valley'" in w for w in summary["warnings"])
    assert json.loads((out / "summary.json").read_text())["accuracy"] == pytest.approx(6 / 11)

    ref = _rows(out / "per_class_reference_metrics.csv")
    assert list(ref[0]) == ["class", "TP", "TN", "FP", "FN", "accuracy", "recall", "precision", "f1"]
    assert [int(r["TP"]) for r in ref] == [2, 2, 2, 0]
    assert [int(r["FP"]) for r in ref] == [2, 1, 2, 0]
    assert [int(r["FN"]) for r in ref] == [1, 1, 1, 2]
    assert [int(r["TN"]) for r in ref] == [6, 7, 6, 9]
    np.testing.assert_allclose([float(r["precision"]) for r in ref], precision, atol=1e-6)
    assert all(r["f1"] != "nan" for r in ref)


def test_predictions_line_up_with_files(evaluated, model, known_set, helpers):
    out, _ = evaluated
    rows = _rows(out / "predictions.csv")
    assert list(rows[0]) == ["file", "true_class", "predicted_class", "confidence", "top3"]
    assert [r["file"] for r in rows] == known_set["files"]
    names = helpers.CLASS_NAMES
    assert [r["true_class"] for r in rows] == [names[i] for i in known_set["labels"]]
    assert [r["predicted_class"] for r in rows] == [names[i] for i in known_set["predicted"]]
    # each row's confidence is the model's own answer for that image, predicted alone
    single = np.stack(
        [model.predict_on_batch(as_model_input(known_set["images"][i : i + 1]))[0] for i in range(len(rows))]
    )
    np.testing.assert_allclose([float(r["confidence"]) for r in rows], single.max(axis=1), atol=1e-4)
    for r in rows:
        top = [(p.rsplit(":", 1)[0], float(p.rsplit(":", 1)[1])) for p in r["top3"].split(";")]
        assert len(top) == 3 and top[0][0] == r["predicted_class"]
        assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)


def test_mistakes_grid_shows_the_most_confident_mistakes(tmp_path, model, known_set, helpers, monkeypatch):
    shown = {}

    def spy(images, true_names, pred_names, confidences, path, **kw):
        shown.update(true=list(true_names), pred=list(pred_names), conf=list(confidences))
        return path

    monkeypatch.setattr(evaluate.plots, "plot_mistakes", spy)
    with pytest.warns(RuntimeWarning):
        evaluate.evaluate_model(model, known_set["images"], known_set["labels"], helpers.CLASS_NAMES, tmp_path)
    wrong = np.flatnonzero(known_set["labels"] != known_set["predicted"])
    assert sorted(shown["true"]) == sorted(helpers.CLASS_NAMES[known_set["labels"][i]] for i in wrong)
    assert shown["conf"] == sorted(shown["conf"], reverse=True)
    assert all(t != p for t, p in zip(shown["true"], shown["pred"]))


def test_no_mistakes_and_no_history(tmp_path, model, known_set, helpers):
    labels = known_set["predicted"]  # labels equal to the predictions: a perfect score
    with pytest.warns(RuntimeWarning):  # class 3 is neither present nor predicted
        summary = evaluate.evaluate_model(model, known_set["images"], labels, helpers.CLASS_NAMES, tmp_path)
    assert summary["accuracy"] == 1.0 and summary["n_mistakes"] == 0
    assert (tmp_path / "mistakes.png").stat().st_size > 0
    assert not (tmp_path / "curves.png").exists()
    assert [r["file"] for r in _rows(tmp_path / "predictions.csv")] == [f"#{i}" for i in range(len(labels))]


def test_class_count_mismatch_is_a_user_error(tmp_path, model, known_set):
    with pytest.raises(VirionError, match="4 outputs but 3 class names"):
        evaluate.evaluate_model(model, known_set["images"], known_set["labels"], ["a", "b", "c"], tmp_path)


def test_missing_run_folder_is_one_line_error(tmp_path, capsys):
    from virion.cli.main import main

    with pytest.raises(VirionError, match="run folder not found"):
        evaluate.evaluate_run(tmp_path / "nope")
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("virion: error:") and "nope" in err and "\n" not in err
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", str(tmp_path / "empty")]) == 2
    assert "no trained models" in capsys.readouterr().err


def test_evaluate_run_with_the_data_layer(tmp_path, helpers, capsys):
    """End to end through the real data layer: class folders → test split → cache → every model."""
    pytest.importorskip("virion.data.layout", reason="data layer (issue 2) not written yet")
    pytest.importorskip("virion.data.cache", reason="data layer (issue 2) not written yet")
    from PIL import Image

    from virion.data.layout import load_dataset

    data = tmp_path / "data"
    for label, name in enumerate(helpers.CLASS_NAMES[:3]):
        (data / name).mkdir(parents=True)
        for i, img in enumerate(helpers.flat_images([helpers.LEVELS[label]] * 6, seed=label)):
            Image.fromarray(img).save(data / name / f"{i}.png")
    names = helpers.CLASS_NAMES[:3]
    run = helpers.make_run(
        tmp_path / "run",
        {"resnet50": {"class_names": names}, "densenet121": {"class_names": names}},
        data=tmp_path / "moved",
    )
    for mdir in (run / "resnet50", run / "densenet121"):  # three-class models for the three folders
        for f in mdir.glob("*.keras"):
            helpers.brightness_model(3).save(f)

    # config.json's data path is gone: the error says how to point at the data
    with pytest.raises(VirionError, match=r"moved: dataset folder not found.*--data DIR"):
        evaluate.evaluate_run(run, progress=False)
    # The run's own data, moved: same fingerprint as dataset.json, so it is the run's own evaluation.
    info = json.loads((run / "dataset.json").read_text())
    cfg = json.loads((run / "config.json").read_text())
    info["fingerprint"] = load_dataset(
        data, val_fraction=cfg["val_fraction"], test_fraction=cfg["test_fraction"], seed=cfg["seed"]
    ).fingerprint()
    (run / "dataset.json").write_text(json.dumps(info))
    results = evaluate.evaluate_run(run, data=data, progress=False)
    assert sorted(results) == ["densenet121", "ensemble", "resnet50"]  # two models: their mean is a row too
    assert results["ensemble"]["members"] == ["densenet121", "resnet50"]
    cfg = json.loads((run / "config.json").read_text())
    test_split = load_dataset(
        data, val_fraction=cfg["val_fraction"], test_fraction=cfg["test_fraction"], seed=cfg["seed"]
    ).splits["test"]
    for name, summary in results.items():
        if name == "ensemble":
            continue
        rows = _rows(run / name / "evaluation" / "predictions.csv")
        assert len(rows) == len(test_split.files) == summary["n_images"] > 0
        assert [r["file"] for r in rows] == [str(p.relative_to(data)) for p in test_split.files]
        assert [r["true_class"] for r in rows] == [names[i] for i in test_split.labels]
        assert summary["accuracy"] == 1.0  # flat images: the brightness model is always right
        assert (run / name / "evaluation" / "curves.png").is_file()

    from virion.cli.main import main

    assert main(["evaluate", str(run), "--data", str(data), "--batch-size", "5"]) == 0
    out = capsys.readouterr()
    assert "resnet50" in out.out and "report.html" in out.out
    assert (run / "report.html").is_file() and (run / "comparison.csv").is_file()


def test_cli_prints_evaluation_warnings_on_one_line(tmp_path, monkeypatch, capsys):
    import warnings

    from virion.cli.main import main

    def fake_evaluate_run(run, data=None, batch_size=None):
        warnings.warn("precision set to 0 for class 'Orf': never predicted", RuntimeWarning, stacklevel=2)
        return {"resnet50": {"accuracy": 0.5, "macro_f1": 0.25, "inference_images_per_second": 10.0}}

    monkeypatch.setattr(
        evaluate,
        "evaluate_run",
        lambda run, data=None, tta=None, batch_size=None, progress=True: fake_evaluate_run(run, data, batch_size),
    )
    assert main(["evaluate", str(tmp_path), "--no-report"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "virion: warning: precision set to 0 for class 'Orf': never predicted\n"
    assert "resnet50" in captured.out and "0.2500" in captured.out


def test_model_file_choice(tmp_path):
    mdir = tmp_path / "xception"
    mdir.mkdir()
    for name in ("a.keras", "b.keras"):
        (mdir / name).write_bytes(b"x")
    with pytest.raises(VirionError, match="several model files"):
        find_model_file(mdir)
    (mdir / "xception_virus_classification.keras").write_bytes(b"x")
    assert find_model_file(mdir).name == "xception_virus_classification.keras"
    (mdir / "metadata.json").write_text(
        json.dumps({"class_names": ["a", "b"], "input_size": 32, "files": {"keras": "b.keras"}})
    )
    assert find_model_file(mdir).name == "b.keras"
    with pytest.raises(VirionError, match="could not load the model"):
        load_keras_model(mdir / "b.keras")


def _class_folders(root, helpers, names, per_class=6, seed=0):
    from PIL import Image

    for label, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i, img in enumerate(helpers.flat_images([helpers.LEVELS[label]] * per_class, seed=seed + label)):
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


def test_evaluate_on_other_data_never_replaces_the_runs_own(tmp_path, helpers, capsys):
    """Issue 9: `virion evaluate RUN --data OTHER` writes its own folder, and every output names OTHER."""
    from virion.cli.main import main

    names = helpers.CLASS_NAMES[:3]
    own = _class_folders(tmp_path / "own", helpers, names)
    other = _class_folders(tmp_path / "field images", helpers, names, per_class=9, seed=7)
    run = helpers.make_run(tmp_path / "run", {"resnet50": {"class_names": names}}, data=own)
    for f in (run / "resnet50").glob("*.keras"):
        helpers.brightness_model(3).save(f)

    assert main(["evaluate", str(run)]) == 0
    own_summary = (run / "resnet50" / "evaluation" / "summary.json").read_text()
    own_report = (run / "report.html").read_text()
    assert main(["evaluate", str(run), "--data", str(other)]) == 0
    out = capsys.readouterr().out
    assert "report-field-images.html" in out

    assert (run / "resnet50" / "evaluation" / "summary.json").read_text() == own_summary
    assert (run / "report.html").read_text() == own_report
    theirs = json.loads((run / "resnet50" / "evaluation-field-images" / "summary.json").read_text())
    ours = json.loads(own_summary)
    assert theirs["data"] == "field-images" and not theirs["own_test_split"]
    assert theirs["data_path"] == str(other) and ours["own_test_split"]
    assert theirs["n_images"] != ours["n_images"]  # a different test split was evaluated
    report = (run / "report-field-images.html").read_text()
    assert "Evaluated on other data:</b> field-images" in report and "<h1>virion report: run on field-images" in report
    assert (run / "comparison-field-images.csv").is_file() and (run / "comparison.csv").is_file()


def test_summary_has_top5_and_most_confused_pairs(evaluated):
    _, summary = evaluated
    assert summary["top5_accuracy"] == 1.0  # four classes: the truth is always in the top five
    # truth 0 0 0 1 1 1 2 2 2 3 3 / predicted 0 0 1 1 1 2 2 2 0 2 0: every off-diagonal cell holds 1
    pairs = summary["most_confused"]
    assert all(p["count"] == 1 for p in pairs) and len(pairs) == 5
    assert {"true": "CCHF", "predicted": "Nipah virus", "count": 1} in pairs


# --------------------------------------------------------------------------- failed models
NAN_FAILURE = "the loss became NaN at epoch 1 (lower the learning rate)"


def _run_with_a_failed_model(root, helpers, data):
    """resnet50 trained; xception failed as the trainer leaves it: metadata says so, no model file."""
    names = helpers.CLASS_NAMES[:3]
    run = helpers.make_run(
        root,
        {
            "resnet50": {"class_names": names},
            "xception": {
                "class_names": names,
                "status": "failed",
                "failure": NAN_FAILURE,
                "params": 0,
                "best_epoch": None,
            },
        },
        data=data,
    )
    for f in (run / "resnet50").glob("*.keras"):
        helpers.brightness_model(3).save(f)
    for f in (run / "xception").glob("*.keras"):
        f.unlink()
    return run


def test_failed_model_is_skipped_and_shown_as_failed(tmp_path, helpers, capsys):
    from virion.cli.main import main
    from virion.run import store
    from virion.run.loading import load_models

    own = _class_folders(tmp_path / "own", helpers, helpers.CLASS_NAMES[:3])
    run = _run_with_a_failed_model(tmp_path / "run", helpers, own)
    assert store.read_metadata(run / "xception").failed and not store.read_metadata(run / "resnet50").failed
    assert store.failed_models(run) == {"xception": NAN_FAILURE}
    with pytest.raises(VirionError, match="training of this model failed.*NaN"):
        find_model_file(run / "xception")
    assert [m.source.parent.name for m in load_models(run)] == ["resnet50"]

    assert main(["evaluate", str(run)]) == 0
    captured = capsys.readouterr()
    assert "xception: not evaluated, its training failed" in captured.err and "NaN" in captured.err
    assert (run / "resnet50" / "evaluation" / "summary.json").is_file()
    assert not (run / "xception" / "evaluation").exists()

    rows = {r["model"]: r for r in _rows(run / "comparison.csv")}
    assert rows["resnet50"]["status"] == "trained" and float(rows["resnet50"]["accuracy"]) == 1.0
    assert rows["xception"]["status"] == f"FAILED: {NAN_FAILURE}" and rows["xception"]["accuracy"] == ""
    report = (run / "report.html").read_text()
    assert 'id="failed"' in report and report.count(NAN_FAILURE) >= 2  # banner + the model's own section
    assert "Not every model is evaluated yet" not in report  # the failed model does not hold the table back

    assert main(["compare", str(run)]) == 0
    assert f"FAILED: {NAN_FAILURE}" in capsys.readouterr().out


def test_every_model_failed_is_one_line_error(tmp_path, helpers):
    from virion.run.loading import load_models

    run = _run_with_a_failed_model(tmp_path / "run", helpers, tmp_path / "nodata")
    (run / "resnet50" / "metadata.json").write_text(
        json.dumps({"class_names": ["a", "b"], "input_size": 32, "status": "failed", "failure": "NaN"})
    )
    with pytest.raises(VirionError, match="every model of this run failed"):
        load_models(run)


def test_train_reports_the_models_that_worked_then_exits_non_zero(tmp_path, helpers, monkeypatch, capsys):
    """workflow.train: a model failing in training still gets the run evaluated and reported, then the CLI fails."""
    import virion.training.trainer as trainer
    from virion.cli.main import main

    own = _class_folders(tmp_path / "own", helpers, helpers.CLASS_NAMES[:3])

    def failing_train_run(config, resume=False, extra_callbacks=(), progress=True):
        run = _run_with_a_failed_model(Path(config.out), helpers, own)
        result = trainer.RunResult(run, {}, helpers.CLASS_NAMES[:3])
        raise trainer.TrainingFailed(f"training failed for xception (xception: {NAN_FAILURE})", result)

    monkeypatch.setattr(trainer, "train_run", failing_train_run)
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--data",
            str(own),
            "--out",
            str(run),
            "--models",
            "resnet50",
            "xception",
            "--input-size",
            "72",
            "--epochs",
            "1",
        ]
    )
    assert code != 0
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("virion: error: training failed for xception")
    assert (run / "resnet50" / "evaluation" / "summary.json").is_file()
    report = (run / "report.html").read_text()
    assert "Training failed" in report and NAN_FAILURE in report


def test_metadata_status_round_trip_and_old_files():
    from virion.run.schema import ModelMetadata

    old = ModelMetadata.from_dict({"class_names": ["a", "b"], "input_size": 32})
    assert old.status == "trained" and old.failure is None and not old.failed
    failed = ModelMetadata.from_dict(
        {"class_names": ["a", "b"], "input_size": 32, "status": "failed", "failure": "NaN"}
    )
    values = failed.to_dict()
    assert values["status"] == "failed" and values["failure"] == "NaN" and "status" not in failed.extra
    assert ModelMetadata.from_dict(values).failed
    with pytest.raises(VirionError, match="status must be one of"):
        ModelMetadata.from_dict({"class_names": ["a", "b"], "input_size": 32, "status": "exploded"})


@pytest.mark.filterwarnings("ignore:.*set to 0:RuntimeWarning")  # the one-epoch model is poor
def test_real_nan_training_then_the_rest_is_evaluated_and_reported(tmp_path, helpers, monkeypatch):
    """The trainer's own failed-model state (not a hand-made one): xception's loss is NaN, resnet50 trains."""
    import keras

    import virion.models.catalog as catalog
    import virion.models.registry as registry
    from virion import workflow
    from virion.training.trainer import TrainingFailed

    class NaNLoss(keras.layers.Layer):
        """Adds a NaN term to the training loss. The NaN enters through an addition to the loss itself,
        not through the model's kernels (a ReLU/max kernel on some CPUs returns 0 for a NaN input)."""

        def call(self, x):
            self.add_loss(keras.ops.sum(x) * float("nan"))
            return x

    def tiny(name, num_classes, input_size=32, weights="none"):
        inputs = keras.Input((input_size, input_size, 3))
        x = keras.layers.Rescaling(1 / 255.0)(inputs)
        x = keras.layers.Conv2D(4, 3, activation="relu", name="base_conv")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        if name == "xception":
            x = NaNLoss()(x)
        return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x), name=name)

    monkeypatch.setattr(registry, "build_model", tiny)
    for name in catalog.MIN_INPUT_SIZE:  # the config holds this very dict
        monkeypatch.setitem(catalog.MIN_INPUT_SIZE, name, 8)
    own = _class_folders(tmp_path / "own", helpers, helpers.CLASS_NAMES[:3], per_class=8)
    run = tmp_path / "run"
    with pytest.raises(TrainingFailed, match="xception"):
        workflow.train(
            data=str(own),
            out=str(run),
            models=["resnet50", "xception"],
            input_size=32,
            batch_size=8,
            epochs=1,
            weights="none",
            stretch="linear",
            progress=False,
        )
    meta = json.loads((run / "xception" / "metadata.json").read_text())
    assert meta["status"] == "failed" and meta["failure"]
    assert (run / "resnet50" / "evaluation" / "summary.json").is_file()
    rows = {r["model"]: r for r in _rows(run / "comparison.csv")}
    assert rows["resnet50"]["status"] == "trained" and rows["xception"]["status"].startswith("FAILED: ")
    assert meta["failure"] in (run / "report.html").read_text().replace("&#x27;", "'")

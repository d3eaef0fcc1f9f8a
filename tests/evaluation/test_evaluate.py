"""evaluate_model on a model whose every answer we know; evaluate_run on a run folder."""

import csv
import json

import numpy as np
import pytest

from virion.errors import VirionError
from virion.evaluation import evaluate

OUTPUTS = ["classification_report.txt", "classification_report.json", "classification_report.csv",
           "per_class_reference_metrics.csv", "confusion_matrix.csv", "confusion_matrix.png",
           "confusion_matrix_normalized.png", "curves.png", "predictions.csv", "mistakes.png", "summary.json"]


def _rows(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, model, known_set, helpers):
    out = tmp_path_factory.mktemp("eval")
    history = helpers.write_history(out / "history.csv")
    with pytest.warns(RuntimeWarning, match="'Rift Valley'"):  # class 3 is never predicted
        summary = evaluate.evaluate_model(model, known_set["images"], known_set["labels"], helpers.CLASS_NAMES,
                                          out / "evaluation", files=known_set["files"], history_csv=history,
                                          batch_size=4)  # 11 images: the last batch is partial
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
    single = np.stack([model.predict_on_batch(evaluate._as_model_input(known_set["images"][i:i + 1]))[0]
                       for i in range(len(rows))])
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
    run = helpers.make_run(tmp_path / "run", {"resnet50": {"class_names": names},
                                              "densenet121": {"class_names": names}}, data=tmp_path / "moved")
    for mdir in (run / "resnet50", run / "densenet121"):  # three-class models for the three folders
        for f in mdir.glob("*.keras"):
            helpers.brightness_model(3).save(f)

    # config.json's data path is gone: the error says how to point at the data
    with pytest.raises(VirionError, match=r"moved: dataset folder not found.*--data DIR"):
        evaluate.evaluate_run(run, progress=False)
    results = evaluate.evaluate_run(run, data=data, progress=False)
    assert sorted(results) == ["densenet121", "resnet50"]
    cfg = json.loads((run / "config.json").read_text())
    test_split = load_dataset(data, val_fraction=cfg["val_fraction"], test_fraction=cfg["test_fraction"],
                              seed=cfg["seed"]).splits["test"]
    for name, summary in results.items():
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
        warnings.warn("precision set to 0 for class 'Orf': never predicted", RuntimeWarning)
        return {"resnet50": {"accuracy": 0.5, "macro_f1": 0.25, "inference_images_per_second": 10.0}}

    monkeypatch.setattr(evaluate, "evaluate_run", fake_evaluate_run)
    assert main(["evaluate", str(tmp_path), "--no-report"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "virion: warning: precision set to 0 for class 'Orf': never predicted\n"
    assert "resnet50" in captured.out and "0.2500" in captured.out


def test_model_file_choice(tmp_path):
    mdir = tmp_path / "xception"
    mdir.mkdir()
    for name in ("a.keras", "b.keras"):
        (mdir / name).write_bytes(b"x")
    with pytest.raises(VirionError, match="several .keras files"):
        evaluate.model_file(mdir)
    (mdir / "xception_virus_classification.keras").write_bytes(b"x")
    assert evaluate.model_file(mdir).name == "xception_virus_classification.keras"
    (mdir / "metadata.json").write_text(json.dumps({"files": {"keras": "b.keras"}}))
    assert evaluate.model_file(mdir).name == "b.keras"
    with pytest.raises(VirionError, match="cannot load the model"):
        evaluate.load_model(mdir / "b.keras")

"""Metrics against numbers worked out by hand."""

import csv
import json
import warnings

import numpy as np
import pytest

from virion.evaluation import metrics


def test_confusion_by_hand():
    y_true = [0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0, 2]
    cm = metrics.confusion(y_true, y_pred, 4)  # class 3 absent: still a zero row and column
    np.testing.assert_array_equal(cm, [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]])
    with pytest.raises(ValueError):
        metrics.confusion([0, 5], [0, 1], 3)


def test_counts_and_measures_with_a_never_predicted_class():
    # rows = truth, columns = prediction; class 2 is present once but never predicted
    cm = np.array([[5, 1, 0], [2, 3, 0], [1, 0, 0]])
    counts = metrics.per_class_counts(cm)
    np.testing.assert_array_equal(counts["TP"], [5, 3, 0])
    np.testing.assert_array_equal(counts["FP"], [3, 1, 0])
    np.testing.assert_array_equal(counts["FN"], [1, 2, 1])
    np.testing.assert_array_equal(counts["TN"], [3, 6, 11])

    with pytest.warns(RuntimeWarning, match="Cowpox") as record:
        m = metrics.reference_measures(
            counts["TP"], counts["TN"], counts["FP"], counts["FN"], class_names=["Ebola", "Lassa", "Cowpox"]
        )
    messages = " ".join(str(w.message) for w in record)
    assert "precision" in messages and "never predicted" in messages
    assert "Ebola" not in messages and "Lassa" not in messages
    np.testing.assert_allclose(m["accuracy"], [8 / 12, 9 / 12, 11 / 12])
    np.testing.assert_allclose(m["precision"], [5 / 8, 3 / 4, 0.0])
    np.testing.assert_allclose(m["recall"], [5 / 6, 3 / 5, 0.0])
    np.testing.assert_allclose(m["f1"][:2], [2 * 5 / (2 * 5 + 3 + 1), 2 * 3 / (2 * 3 + 1 + 2)])
    assert m["f1"][2] == 0.0
    assert not any(np.isnan(v).any() for v in m.values())


def test_never_present_class_gives_zero_recall_and_a_warning():
    cm = np.array([[4, 1], [0, 0]])  # class 1 never in the truth, but predicted once
    counts = metrics.per_class_counts(cm)
    with pytest.warns(RuntimeWarning) as record:
        m = metrics.reference_measures(*(counts[k] for k in metrics.COUNT_KEYS), class_names=["Ebola", "Orf"])
    messages = [str(w.message) for w in record]
    assert any("recall" in msg and "'Orf'" in msg and "never present" in msg for msg in messages)
    assert not any("Ebola" in msg for msg in messages)
    assert m["recall"][1] == 0.0 and m["precision"][1] == 0.0 and m["f1"][1] == 0.0
    assert m["recall"][0] == pytest.approx(4 / 5) and m["precision"][0] == pytest.approx(1.0)


@pytest.mark.parametrize("tp,tn,fp,fn", [(8, 80, 2, 10), (1, 0, 3, 0), (50, 7, 0, 0)])
def test_reference_formulas_on_hand_numbers(tp, tn, fp, fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all denominators are non-zero here: no warning allowed
        m = metrics.reference_measures(tp, tn, fp, fn)
    assert m["accuracy"][0] == pytest.approx((tp + tn) / (tp + tn + fp + fn))
    assert m["recall"][0] == pytest.approx(tp / (tp + fn))
    assert m["precision"][0] == pytest.approx(tp / (tp + fp))
    assert m["f1"][0] == pytest.approx(2 * tp / (2 * tp + fp + fn))  # same as 2PR/(P+R)


def test_all_zero_counts_give_zeros_not_nan():
    with pytest.warns(RuntimeWarning):
        m = metrics.reference_measures([0], [0], [0], [0], class_names=["Empty"])
    assert all(float(v[0]) == 0.0 for v in m.values())


def test_label_form_equals_matrix_form():
    rng = np.random.default_rng(1)
    y_true, y_pred = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    a = metrics.per_class_counts(y_true, y_pred, 5)
    b = metrics.per_class_counts(metrics.confusion(y_true, y_pred, 5))
    for k in metrics.COUNT_KEYS:
        np.testing.assert_array_equal(a[k], b[k])
    total = a["TP"] + a["TN"] + a["FP"] + a["FN"]
    assert (total == 200).all()
    assert a["TP"].sum() == (y_true == y_pred).sum()


def test_sklearn_report_matches_our_per_class_figures(tmp_path):
    rng = np.random.default_rng(7)
    names = ["Adenovirus", "Astrovirus", "CCHF", "Cowpox", "Orf"]
    y_true = rng.integers(0, 5, 120)
    y_pred = np.where(rng.random(120) < 0.6, y_true, rng.integers(0, 4, 120))  # "Orf" never predicted
    y_pred[y_pred == 4] = 0
    cm = metrics.confusion(y_true, y_pred, 5)
    with pytest.warns(RuntimeWarning, match="Orf"):
        rows = metrics.per_class_table(cm, names)
    report = metrics.save_classification_report(y_true, y_pred, names, tmp_path)
    for row in rows:
        r = report[row["class"]]
        assert r["precision"] == pytest.approx(row["precision"])
        assert r["recall"] == pytest.approx(row["recall"])
        assert r["f1-score"] == pytest.approx(row["f1"])
        assert r["support"] == row["TP"] + row["FN"]
    assert report["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert report["macro avg"]["f1-score"] == pytest.approx(np.mean([r["f1"] for r in rows]))

    assert json.loads((tmp_path / "classification_report.json").read_text()) == report
    text = (tmp_path / "classification_report.txt").read_text()
    assert all(n in text for n in names) and "macro avg" in text
    with (tmp_path / "classification_report.csv").open() as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [r["label"] for r in csv_rows] == names + ["accuracy", "macro avg", "weighted avg"]
    assert float(csv_rows[2]["recall"]) == pytest.approx(report["CCHF"]["recall"], abs=1e-6)
    assert float(csv_rows[5]["f1-score"]) == pytest.approx(report["accuracy"], abs=1e-6)

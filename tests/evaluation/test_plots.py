"""Plots are written, non-empty, and show the class names in the right order."""

import numpy as np
import pytest
from PIL import Image

from virion.evaluation import plots
from virion.reports import plots as report_plots

FOURTEEN = [
    "Adenovirus",
    "Astrovirus",
    "CCHF",
    "Cowpox",
    "Ebola",
    "Influenza",
    "Lassa",
    "Marburg",
    "Nipah virus",
    "Norovirus",
    "Orf",
    "Papilloma",
    "Rift Valley",
    "Rotavirus",
]


def _png_ok(path, min_side=100):
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        im.load()
        assert min(im.size) >= min_side
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 5  # not a blank canvas


@pytest.mark.parametrize("normalize", [False, True])
def test_confusion_heatmap_labels_in_class_order(tmp_path, normalize):
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 20, (14, 14))
    cm[3] = 0  # an empty row must not give NaN when normalized
    fig = plots.confusion_figure(cm, FOURTEEN, normalize=normalize)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == FOURTEEN
    assert [t.get_text() for t in ax.get_yticklabels()] == FOURTEEN
    assert ax.get_xlabel() == "Predicted class" and ax.get_ylabel() == "True class"
    assert all(t.get_rotation() == 45 for t in ax.get_xticklabels())
    shown = np.asarray(ax.collections[0].get_array()).reshape(14, 14)
    if normalize:
        expected = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        np.testing.assert_allclose(shown, expected)
        np.testing.assert_allclose(shown.sum(axis=1)[cm.sum(axis=1) > 0], 1.0)
    else:
        np.testing.assert_array_equal(shown, cm)
    annotations = [t.get_text() for t in ax.texts]
    assert len(annotations) == 14 * 14
    small = plots.confusion_figure(cm[:3, :3], FOURTEEN[:3])
    assert fig.get_size_inches()[0] > small.get_size_inches()[0]  # grows with the class count
    path = plots.save_figure(fig, tmp_path / "cm.png")
    _png_ok(path, min_side=600)


def test_plot_confusion_rejects_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match="3 class names"):
        plots.plot_confusion(np.zeros((4, 4)), ["a", "b", "c"], tmp_path / "x.png")


def test_curves_from_history_csv(tmp_path, helpers):
    history = helpers.write_history(tmp_path / "history.csv", epochs=4)
    fig = plots.curves_figure(plots.read_history(history))
    acc_ax, loss_ax = fig.axes
    labels = [line.get_label() for line in acc_ax.get_lines()]
    assert labels == ["training", "validation"]
    np.testing.assert_allclose(acc_ax.get_lines()[0].get_xdata(), [1, 2, 3, 4])  # epochs counted from 1
    np.testing.assert_allclose(acc_ax.get_lines()[1].get_ydata(), [0.35, 0.45, 0.55, 0.65])
    np.testing.assert_allclose(loss_ax.get_lines()[0].get_ydata(), [1.5, 1.2, 0.9, 0.6])
    _png_ok(plots.plot_curves(history, tmp_path / "curves.png"))


def test_mistakes_grid_and_placeholder(tmp_path):
    images = [np.full((32, 32), v, np.uint8) for v in (20, 120, 240)]
    fig = plots.mistakes_figure(images, ["Ebola", "Orf", "CCHF"], ["Orf", "Ebola", "Lassa"], [0.9, 0.8, 0.5])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0] == "true: Ebola\npred: Orf (90%)" and len(titles) == 3
    _png_ok(
        plots.plot_mistakes(
            images, ["Ebola", "Orf", "CCHF"], ["Orf", "Ebola", "Lassa"], [0.9, 0.8, 0.5], tmp_path / "m.png"
        )
    )
    fig = plots.mistakes_figure([], [], [], [])
    assert any("no mistakes" in t.get_text() for ax in fig.axes for t in ax.texts)
    assert plots.plot_mistakes([], [], [], [], tmp_path / "none.png").stat().st_size > 500


def test_comparison_chart(tmp_path):
    rows = [
        {
            "label": "resnet50",
            "accuracy": 0.9,
            "macro_precision": 0.8,
            "macro_recall": 0.7,
            "macro_f1": 0.75,
            "weighted_f1": 0.88,
        },
        {
            "label": "xception",
            "accuracy": 0.5,
            "macro_precision": 0.4,
            "macro_recall": 0.3,
            "macro_f1": 0.35,
            "weighted_f1": 0.45,
        },
    ]
    fig = report_plots.comparison_figure(rows)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["resnet50", "xception"]
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, [0.9, 0.8, 0.7, 0.75, 0.88, 0.5, 0.4, 0.3, 0.35, 0.45])
    _png_ok(report_plots.plot_comparison(rows, tmp_path / "cmp.png"))

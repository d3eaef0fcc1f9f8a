"""The comparison table: one row per model with the numbers from metadata and evaluation."""

import csv
import json

import pytest

from virion.errors import VirionError
from virion.reports.compare import compare_runs


def _fake_summary(model_dir, **values):
    (model_dir / "evaluation").mkdir(exist_ok=True)
    (model_dir / "evaluation" / "summary.json").write_text(json.dumps(values))


SUMMARIES = {
    "resnet50": dict(
        accuracy=0.91,
        macro_precision=0.81,
        macro_recall=0.71,
        macro_f1=0.75,
        weighted_f1=0.9,
        inference_images_per_second=250.0,
    ),
    "densenet121": dict(
        accuracy=0.5,
        macro_precision=0.4,
        macro_recall=0.3,
        macro_f1=0.33,
        weighted_f1=0.45,
        inference_images_per_second=80.5,
    ),
}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, helpers):
    root = tmp_path_factory.mktemp("cmp")
    a = helpers.make_run(
        root / "run-a",
        {
            "resnet50": {"params": 1234, "train_seconds": 61.0},
            "densenet121": {"params": 99, "train_seconds": 7.5, "weights": "imagenet"},
        },
    )
    b = helpers.make_run(root / "run-b", {"resnet50": {"params": 1234, "train_seconds": 3.0}})
    for run in (a, b):
        for name, values in SUMMARIES.items():
            if (run / name).is_dir():
                _fake_summary(run / name, **values)
    return a, b


def test_one_row_per_model_with_the_right_numbers(two_runs):
    a, _ = two_runs
    rows = compare_runs([a])
    assert [(r["run"], r["model"]) for r in rows] == [("run-a", "densenet121"), ("run-a", "resnet50")]
    for r in rows:
        for key, value in SUMMARIES[r["model"]].items():
            assert r[key] == pytest.approx(value)
        keras_file = a / r["model"] / f"{r['model']}_virus_classification.keras"
        assert r["size_mb"] == pytest.approx(keras_file.stat().st_size / 1e6)
    assert rows[0]["params"] == 99 and rows[0]["train_seconds"] == 7.5 and rows[0]["weights"] == "ImageNet"
    assert rows[1]["params"] == 1234 and rows[1]["weights"] == "random init"
    for name in ("comparison.md", "comparison.csv", "comparison.png"):  # default: into the run folder
        assert (a / name).stat().st_size > 0

    with (a / "comparison.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [t["model"] for t in table] == ["densenet121", "resnet50"]
    assert float(table[1]["accuracy"]) == pytest.approx(0.91)
    assert int(table[1]["params"]) == 1234
    md = (a / "comparison.md").read_text().splitlines()
    assert len(md) == 2 + 2 and "macro F1" in md[0] and "| 0.9100 |" in md[3]


def test_several_runs_need_out_and_label_by_run(two_runs, tmp_path):
    a, b = two_runs
    with pytest.raises(VirionError, match="--out"):
        compare_runs([a, b])
    rows = compare_runs([a, b], out_dir=tmp_path / "cmp")
    assert [r["label"] for r in rows] == ["run-a/densenet121", "run-a/resnet50", "run-b/resnet50"]
    assert rows[2]["train_seconds"] == 3.0
    assert (tmp_path / "cmp" / "comparison.png").is_file()


def test_unevaluated_model_and_missing_run_are_user_errors(tmp_path, helpers, capsys):
    from virion.cli.main import main

    run = helpers.make_run(tmp_path / "fresh", {"resnet50": {}})
    with pytest.raises(VirionError, match="virion evaluate"):
        compare_runs([run])
    assert main(["compare", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "run folder not found" in err and "\n" not in err


def test_cli_compare_prints_the_table(two_runs, tmp_path, capsys):
    from virion.cli.main import main

    a, b = two_runs
    assert main(["compare", str(a), str(b), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("resnet50") == 2 and "densenet121" in out
    assert (tmp_path / "comparison.md").is_file()

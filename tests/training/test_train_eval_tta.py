"""`virion train --eval-tta`: the setting reaches config.json, and the run's own evaluation is made with TTA."""

import json

import pytest

from virion.cli.main import main

pytestmark = pytest.mark.filterwarnings("ignore:.*set to 0 for class:RuntimeWarning")  # one epoch misses classes


def test_eval_tta_flag_reaches_config_and_evaluation(tiny_data, tiny_registry, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_data), "--models", "resnet50", "--out", str(out), "--input-size", "32"]
    args += ["--epochs", "1", "--batch-size", "4", "--weights", "none", "--linear", "--eval-tta"]
    assert main(args) == 0
    assert json.loads((out / "config.json").read_text())["eval_tta"] is True
    summary = json.loads((out / "resnet50" / "evaluation" / "summary.json").read_text())
    assert summary["tta"] is True and summary["tta_views"] == 8 and summary["tta_is_run_setting"] is True
    assert not (out / "resnet50" / "evaluation-tta").exists()  # the run's own setting: evaluation/ itself
    assert "with 8-way TTA" in (out / "report.html").read_text()
    assert "8-way TTA" in capsys.readouterr().err  # the evaluation's console lines say it

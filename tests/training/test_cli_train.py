import json

import keras
import pytest

from virion.cli.main import main


def _fail_download(*args, **kwargs):
    raise OSError("network is unreachable")


def test_imagenet_offline_is_one_line_and_stops_before_training(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(keras.utils, "get_file", _fail_download)
    out = tmp_path / "run"
    code = main(["train", "--data", str(tiny_data), "--models", "resnet50", "densenet121", "--out", str(out),
                 "--input-size", "32", "--epochs", "1", "--weights", "imagenet", "--linear"])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("virion: error:")]
    assert len(lines) == 1 and "--weights" in lines[0] and "Traceback" not in err
    assert "--weights none" in lines[0] and "--weights PATH" in lines[0]
    assert not list(out.rglob("history.csv"))  # nothing was trained, resnet50 included


def test_cli_trains_resumes_and_refuses_collision(tiny_data, tiny_registry, tmp_path, capsys):
    out = tmp_path / "run"
    toml = tmp_path / "t.toml"
    toml.write_text("epochs = 1\nbatch_size = 4\nlearning_rate = 0.03\n[augment]\nrotation = 0.0\nshift = 0.0\n")
    args = ["train", "--data", str(tiny_data), "--models", "resnet50", "--out", str(out), "--config", str(toml),
            "--input-size", "32", "--epochs", "2", "--linear", "--weights", "none", "--no-horizontal-flip"]
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 2 and config["batch_size"] == 4 and config["stretch"] is None
    assert config["augment"]["horizontal_flip"] is False and config["augment"]["rotation"] == 0.0
    assert (out / "resnet50" / "resnet50_virus_classification.h5").is_file()
    assert "resnet50: best val accuracy" in capsys.readouterr().out

    assert main(args) == 2  # collision
    assert "--overwrite" in capsys.readouterr().err
    assert main(["train", "--resume", str(out)]) == 0  # finished: nothing to do, still fine
    assert "already trained" in capsys.readouterr().out


def test_unknown_model_is_rejected(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--data", "x", "--models", "vgg16", "--out", "y"])
    assert info.value.code == 2 and "vgg16" in capsys.readouterr().err

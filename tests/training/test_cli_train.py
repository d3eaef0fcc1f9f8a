import json

import keras
import pytest

import virion.cli.train as cli_train
from virion.cli.main import build_parser, main
from virion.training import config as cfg
from virion.training.config import tomllib  # tomli on Python 3.10


def _fail_download(*args, **kwargs):
    raise OSError("network is unreachable")


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("virion: error:")]


def test_imagenet_offline_is_one_line_and_stops_before_training(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(keras.utils, "get_file", _fail_download)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--data",
            str(tiny_data),
            "--models",
            "resnet50",
            "densenet121",
            "--out",
            str(out),
            "--input-size",
            "32",
            "--epochs",
            "1",
            "--weights",
            "imagenet",
            "--linear",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    lines = _error_lines(err)
    assert len(lines) == 1 and "--weights" in lines[0] and "Traceback" not in err
    assert "--weights none" in lines[0] and "--weights PATH" in lines[0]
    assert not list(out.rglob("history.csv"))  # nothing was trained, resnet50 included


def test_cli_trains_with_preset_file_and_flags_then_resumes(tiny_data, tiny_registry, tmp_path, capsys):
    out = tmp_path / "run"
    toml = tmp_path / "t.toml"
    toml.write_text("epochs = 1\nbatch_size = 4\nlearning_rate = 0.03\n[augment]\nrotation = 0.0\nshift = 0.0\n")
    args = [
        "train",
        "--data",
        str(tiny_data),
        "--models",
        "resnet50",
        "--out",
        str(out),
        "--config",
        str(toml),
        "--preset",
        "tem",
        "--input-size",
        "32",
        "--epochs",
        "2",
        "--early-stopping",
        "off",
        "--linear",
        "--weights",
        "none",
        "--no-horizontal-flip",
        "--zoom",
        "0",
        "--mixup",
        "0.2",
        "--cutmix",
        "1",
    ]
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["mixup"], config["cutmix"], config["mix_prob"]) == (0.2, 1.0, 1.0)  # tf.data pipeline mixes
    assert config["preset"] == "tem" and config["epochs"] == 2 and config["batch_size"] == 4
    assert config["stretch"] is None and config["early_stopping"] is None
    assert config["augment"]["horizontal_flip"] is False and config["augment"]["zoom"] == 0.0  # flags win
    assert config["augment"]["rotation"] == 0.0  # the file beats the preset
    assert config["augment"]["vertical_flip"] is True and config["class_weight"] == "sqrt"  # the preset fills the rest
    assert (out / "resnet50" / "resnet50_virus_classification.h5").is_file()
    printed = capsys.readouterr().out
    assert f"virion evaluate {out}" in printed and f"virion predict {out}" in printed  # next steps, real paths
    assert f"virion explain {out}" in printed

    assert main(args) == 2  # collision
    assert "--overwrite" in capsys.readouterr().err
    assert main(["train", "--resume", str(out)]) == 0  # finished: nothing to do, still fine
    assert "already trained" in capsys.readouterr().out
    assert main(["train", "--resume", str(out), "--epochs", "3"]) == 2
    assert "drop --epochs" in capsys.readouterr().err


def test_unknown_model_is_rejected(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--data", "x", "--models", "vgg16", "--out", "y"])
    assert info.value.code == 2 and "vgg16" in capsys.readouterr().err


def test_print_config_is_the_full_config_as_toml(capsys):
    assert main(["train", "--print-config"]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    assert cfg.TrainConfig.from_dict(printed) == cfg.TrainConfig()
    assert (
        main(
            [
                "train",
                "--print-config",
                "--preset",
                "tem",
                "--epochs",
                "3",
                "--models",
                "xception",
                "densenet121",
                "--weights",
                "xception=/w/x.h5",
                "densenet121=none",
            ]
        )
        == 0
    )
    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["preset"] == "tem" and printed["epochs"] == 3 and printed["augment"]["vertical_flip"] is True
    assert printed["weights"] == {"xception": "/w/x.h5", "densenet121": "none"}


def test_every_setting_is_a_generated_option_with_its_default_in_the_help():
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    flags = set(train._option_string_actions)
    for key in list(cfg.FIELDS) + list(cfg.TrainConfig().augment):
        flag = cfg.flag_of(key)
        assert flag is None or flag in flags, f"{key}: no {flag} option"
    help_text = train.format_help()
    for name in cfg.preset_names():
        assert name in help_text  # presets are listed
    assert "(default 128)" in help_text and "(default 0.001)" in help_text


def test_tensorboard_missing_is_one_line_naming_the_extra_before_any_data(tiny_data, tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorboard" else real(n, *a))
    monkeypatch.setattr(cli_train, "_train", lambda *a, **k: pytest.fail("training started"))
    out = tmp_path / "run"
    code = main(["train", "--data", str(tiny_data), "--out", str(out), "--tensorboard"])
    err = capsys.readouterr().err
    assert code == 2 and len(_error_lines(err)) == 1 and "virion[tensorboard]" in err and not out.exists()


def test_ctrl_c_hint_names_the_real_run_folder(tiny_data, tmp_path, monkeypatch, capsys):
    def interrupted(config, *, resume):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_train, "_train", interrupted)
    out = tmp_path / "my run"
    assert main(["train", "--data", str(tiny_data), "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"virion train --resume {out}" in err and "RUN`" not in err

import pytest

from virion.errors import VirionError
from virion.training.config import TrainConfig, load_config


def test_defaults_are_the_reference_settings():
    c = TrainConfig()
    assert (c.input_size, c.batch_size, c.epochs, c.learning_rate) == (128, 64, 20, 1e-3)
    assert c.models == ["resnet50", "xception", "densenet121"]
    assert c.augment["rotation"] == 20.0 and c.augment["shift"] == 0.2 and c.augment["horizontal_flip"] is True
    assert c.stretch == (0.5, 99.5) and c.feature_cache is None and c.early_stopping is None


def test_toml_then_command_line_wins(tmp_path):
    toml = tmp_path / "train.toml"
    toml.write_text('epochs = 5\nbatch_size = 16\nmodels = ["xception"]\nstretch = "linear"\n'
                    'early_stopping = 3\n[augment]\nrotation = 5.0\n')
    c = load_config(toml, {"epochs": 7, "learning_rate": None})
    assert c.epochs == 7  # command line wins
    assert c.batch_size == 16 and c.models == ["xception"] and c.stretch is None and c.early_stopping == 3
    assert c.learning_rate == 1e-3  # None = not given on the command line
    assert c.augment["rotation"] == 5.0 and c.augment["shift"] == 0.2  # the rest of the table keeps defaults
    assert TrainConfig.from_dict(c.to_dict()) == c


def test_unknown_key_names_key_and_file(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text("epochs = 3\nepochz = 4\n")
    with pytest.raises(VirionError, match=r"bad\.toml.*epochz"):
        load_config(toml)
    toml.write_text("[augment]\nspin = 4\n")
    with pytest.raises(VirionError, match=r"augment\.spin"):
        load_config(toml)


@pytest.mark.parametrize("values, word", [({"models": ["vgg16"]}, "vgg16"), ({"lr_schedule": "step"}, "lr_schedule"),
                                          ({"unfreeze": 1.5}, "unfreeze"), ({"stretch": [90, 10]}, "stretch")])
def test_bad_values_are_one_line_errors(values, word):
    with pytest.raises(VirionError, match=word) as info:
        TrainConfig.from_dict(values)
    assert "\n" not in str(info.value)


def test_missing_or_broken_toml(tmp_path):
    with pytest.raises(VirionError, match="not found"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "broken.toml").write_text("epochs = = 3")
    with pytest.raises(VirionError, match="not valid TOML"):
        load_config(tmp_path / "broken.toml")

import dataclasses
import json
import math
from pathlib import Path

import pytest

from virion.errors import VirionError
from virion.training import config as cfg
from virion.training.config import TrainConfig, load_config

FIXTURE_RUN = Path(__file__).resolve().parents[1] / "fixtures" / "run_v0_1"


def test_defaults_are_the_reference_settings():
    c = TrainConfig()
    assert (c.input_size, c.batch_size, c.epochs, c.learning_rate) == (128, 64, 20, 1e-3)
    assert (c.optimizer, c.label_smoothing, c.resolved_weight_decay()) == ("adam", 0.0, 0.0)
    assert c.models == ["resnet50", "xception", "densenet121"]
    assert c.augment["rotation"] == 20.0 and c.augment["shift"] == 0.2 and c.augment["horizontal_flip"] is True
    assert c.stretch == (0.5, 99.5) and c.feature_cache is None and c.early_stopping is None
    assert c.preset == "reference" and c.group_by is None


def test_reference_preset_is_exactly_the_defaults():
    # The reference file spells every recipe value out; it must not drift from the code's defaults.
    assert load_config() == TrainConfig()
    assert load_config(preset="reference") == TrainConfig()
    values = cfg.preset_values("reference")
    assert set(values) - {"augment"} <= set(cfg.FIELDS) and set(values["augment"]) == set(TrainConfig().augment)


def test_tem_preset_is_the_measured_recipe_and_differs():
    tem = load_config(preset="tem")
    assert tem.preset == "tem" and tem.models == ["tem_cnn", "texture"] and "texture" in cfg.preset_summary("tem")
    assert tem.augment["vertical_flip"] and tem.augment["fill_mode"] == "reflect" and tem.augment["rotation"] == 180.0
    assert tem.class_weight == "sqrt" and tem.lr_schedule == "cosine" and tem.optimizer == "adamw"
    assert tem.checkpoint_metric == "last" and tem.eval_tta and tem.label_smoothing == 0.1 and tem.batch_size == 32
    assert cfg.preset_names()[0] == "reference" and "tem" in cfg.preset_names()


def test_precedence_preset_then_toml_then_command_line(tmp_path):
    toml = tmp_path / "train.toml"
    toml.write_text(
        'preset = "tem"\nepochs = 5\nbatch_size = 16\nmodels = ["xception"]\nstretch = "linear"\n'
        "early_stopping = 3\n[augment]\nrotation = 5.0\n"
    )
    c = load_config(toml, {"epochs": "7", "learning_rate": None})
    assert c.preset == "tem"  # from the file
    assert c.epochs == 7  # command line wins over the file
    assert c.batch_size == 16 and c.models == ["xception"] and c.stretch is None and c.early_stopping == 3
    assert c.learning_rate == 2e-3  # None = not given on the command line: the preset's value stays
    assert c.augment["rotation"] == 5.0  # the file wins over the preset
    assert c.augment["vertical_flip"] is True and c.class_weight == "sqrt"  # the preset fills the rest
    assert TrainConfig.from_dict(c.to_dict()) == c
    assert load_config(toml, {"preset": "reference"}).augment["vertical_flip"] is False  # --preset beats the file's


@pytest.mark.parametrize("preset", ["reference", "tem"])
def test_print_config_toml_round_trips(tmp_path, preset):
    c = load_config(preset=preset).merged(
        {
            "weights": ["xception=/w/x.h5", "densenet121=none"],
            "models": ["xception", "densenet121"],
            "group_by": r"^(.*)_\d+$",
        }
    )
    path = tmp_path / "printed.toml"
    path.write_text(c.to_toml())
    again = load_config(path)
    assert again == c and again.weights == {"xception": "/w/x.h5", "densenet121": "none"}


def test_unknown_key_names_key_and_file(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text("epochs = 3\nepochz = 4\n")
    with pytest.raises(VirionError, match=r"bad\.toml.*epochz"):
        load_config(toml)
    toml.write_text("[augment]\nspin = 4\n")
    with pytest.raises(VirionError, match=r"augment\.spin"):
        load_config(toml)


@pytest.mark.parametrize(
    "text, words",
    [
        ('epochs = "two"', ["epochs", "'two'", "integer"]),
        ("epochs = 2.5", ["epochs", "2.5", "integer"]),
        ("epochs = true", ["epochs", "True"]),
        ("learning_rate = -1.0", ["learning_rate", "-1.0", "> 0"]),
        ("learning_rate = nan", ["learning_rate", "nan", "finite"]),
        ("learning_rate = inf", ["learning_rate", "inf"]),
        ("batch_size = 0", ["batch_size", "0", ">= 1"]),
        ("seed = 99999999999999", ["seed", "99999999999999"]),
        ('optimizer = "rmsprop"', ["optimizer", "rmsprop", "adamw"]),
        ("label_smoothing = 1.0", ["label_smoothing", "< 1"]),
        ('models = ["vgg16"]', ["models", "vgg16"]),
        ("stretch = [90, 10]", ["stretch", "LOW < HIGH"]),
        ('group_by = "(unclosed"', ["group_by", "regular expression"]),
        ("[augment]\nrotation = -5.0", ["augment.rotation", "-5.0", "0 and 180"]),
        ('[augment]\nfill_mode = "mirror"', ["augment.fill_mode", "reflect"]),
        ('[weights]\nresnet99 = "none"', ["weights", "resnet99"]),
        ("epochs = = 3", ["not valid TOML"]),
    ],
)
def test_bad_toml_values_are_one_line_naming_key_value_and_expectation(tmp_path, text, words):
    toml = tmp_path / "c.toml"
    toml.write_text(text + "\n")
    with pytest.raises(VirionError) as info:
        load_config(toml)
    message = str(info.value)
    assert "\n" not in message and "c.toml" in message
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    "key, value",
    [
        ("learning_rate", -1),
        ("learning_rate", math.nan),
        ("learning_rate", math.inf),
        ("learning_rate", 0),
        ("learning_rate", 1e30),
        ("fine_tune_lr", 0),
        ("epochs", 0),
        ("epochs", 10**9),
        ("batch_size", -4),
        ("val_fraction", 0),
        ("val_fraction", 1),
        ("test_fraction", 1.0),
        ("unfreeze", 1.5),
        ("unfreeze", 0),
        ("feature_cache", -1),
        ("weight_decay", -0.1),
        ("early_stopping", -2),
        ("input_size", 10**6),
        ("mixup", -0.1),
        ("cutmix", 11),
        ("mix_prob", 1.5),
    ],
)
def test_out_of_range_values_are_refused(key, value):
    with pytest.raises(VirionError, match=key.split("_")[0]) as info:
        TrainConfig.from_dict({key: value})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("model", ["resnet50", "xception", "densenet121"])
def test_input_size_is_checked_per_model_before_any_backend(model):
    smallest = cfg.MIN_INPUT_SIZE[model]
    TrainConfig.from_dict({"models": [model], "input_size": smallest})
    with pytest.raises(VirionError, match=f"too small for {model}.*{smallest}"):
        TrainConfig.from_dict({"models": [model], "input_size": smallest - 1})


def test_catalog_agrees_with_the_registry_and_the_builders():
    from virion.models import registry, transfer

    assert tuple(registry.MODEL_NAMES) == cfg.MODEL_NAMES
    for arch, (_, _, min_size) in transfer.ARCHS.items():
        assert cfg.MIN_INPUT_SIZE[arch] == min_size


def test_every_setting_has_help_kind_and_a_flag_or_table():
    flags = set()
    for key, f in cfg.FIELDS.items():
        assert f.metadata["help"] and f.metadata["kind"], key
        flag = cfg.flag_of(key)
        assert flag is None or flag not in flags, f"duplicate flag {flag}"
        flags.add(flag)
    assert cfg.flag_of("learning_rate") == "--lr" and cfg.flag_of("augment") is None
    assert set(cfg.AUGMENT_HELP) == set(TrainConfig().augment)


def test_weights_per_model_and_spellings():
    c = TrainConfig.from_dict(
        {"models": ["resnet50", "xception", "densenet121"], "weights": ["xception=/a/x.h5", "densenet121=NONE"]}
    )
    assert c.weights_for("xception") == "/a/x.h5" and c.weights_for("densenet121") == "none"
    assert TrainConfig.from_dict({"weights": ["ImageNet"]}).weights == "imagenet"
    with pytest.raises(VirionError, match="no entry for densenet121"):
        TrainConfig.from_dict({"models": ["xception", "densenet121"], "weights": ["xception=none"]})
    with pytest.raises(VirionError, match="NAME="):
        TrainConfig.from_dict({"weights": ["xception=none", "densenet121"]})


def test_legacy_config_json_still_loads():
    """config.json of a run from the current release (optimizer/loss keys, no preset)."""
    values = json.loads((FIXTURE_RUN / "config.json").read_text())
    c = TrainConfig.from_dict(values, source="config.json")
    assert c.optimizer == "adam" and c.label_smoothing == 0.0 and c.preset == "reference"


def test_mixing_settings_reach_the_data_layer_and_refuse_the_feature_cache():
    assert not TrainConfig().mix_config().enabled  # the reference mixes nothing
    mix = TrainConfig.from_dict({"mixup": 0.2, "cutmix": 1, "mix_prob": 0.5}).mix_config()
    assert (mix.mixup, mix.cutmix, mix.mix_prob) == (0.2, 1.0, 0.5)
    with pytest.raises(VirionError, match="--feature-cache with --mixup") as info:
        TrainConfig.from_dict({"mixup": 0.2, "feature_cache": 0})
    assert "\n" not in str(info.value)
    TrainConfig.from_dict({"mixup": 0.2, "mix_prob": 0.0, "feature_cache": 0})  # mixing nothing: allowed


def test_optimizer_and_loss_are_real_choices():
    import keras

    adamw = TrainConfig(optimizer="adamw").build_optimizer(1e-3)
    assert isinstance(adamw, keras.optimizers.AdamW) and adamw.weight_decay == pytest.approx(0.004)
    sgd = TrainConfig(optimizer="sgd", weight_decay=1e-4).build_optimizer(0.1)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0.9 and sgd.weight_decay == pytest.approx(1e-4)
    assert type(TrainConfig().build_optimizer(1e-3)) is keras.optimizers.Adam
    assert TrainConfig().build_loss() == "categorical_crossentropy"
    smoothed = TrainConfig(label_smoothing=0.1).build_loss()
    assert smoothed.get_config()["label_smoothing"] == pytest.approx(0.1)


def test_weights_folder_resolves_keras_file_names(tmp_path):
    from virion.models.weights import IMAGENET_WEIGHTS, resolve_weights

    name = IMAGENET_WEIGHTS["xception"].file_name
    (tmp_path / name).write_bytes(b"stand-in")
    assert resolve_weights("xception", str(tmp_path)) == str(tmp_path / name)
    with pytest.raises(VirionError, match=IMAGENET_WEIGHTS["densenet121"].file_name):
        resolve_weights("densenet121", str(tmp_path))


def test_check_environment_refuses_missing_inputs_and_extras(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    ok = TrainConfig(data=str(tmp_path / "data"), out=str(tmp_path / "run"))
    ok.check_environment()
    with pytest.raises(VirionError, match="--data"):
        dataclasses.replace(ok, data=str(tmp_path / "missing")).check_environment()
    with pytest.raises(VirionError, match="--weights"):
        dataclasses.replace(ok, weights=str(tmp_path / "w.h5")).check_environment()
    (tmp_path / "file").write_text("x")
    with pytest.raises(VirionError, match="--out .*which is a file"):
        dataclasses.replace(ok, out=str(tmp_path / "file" / "run")).check_environment()
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorboard" else real(n, *a))
    with pytest.raises(VirionError, match=r"virion\[tensorboard\]"):
        dataclasses.replace(ok, tensorboard=True).check_environment()


def test_example_config_for_the_tem_dataset_loads():
    example = Path(__file__).resolve().parents[2] / "examples" / "tem14.toml"
    c = load_config(example)
    assert c.preset == "tem" and c.data == "context_virus_1nm_256x256" and c.class_weight == "balanced"
    assert c.augment["fill_mode"] == "reflect" and c.fine_tune_epochs > 0

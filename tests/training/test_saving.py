import json
import zipfile

import keras
import numpy as np
import pytest

from virion.errors import VirionError
from virion.run.layout import create_run_dir
from virion.run.loading import load_keras_model
from virion.training.saving import load_state_model, save_model_files, save_state_model


def _trained_model():
    from virion.models.batchnorm import BatchNormalization

    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = BatchNormalization(name="fused_bn")(x)  # virion's training-time layer
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(0).uniform(0, 1, (24, 8, 8, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(24) % 3, 3)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    return model, x


def test_final_files_predict_the_same_with_stock_layers_and_no_optimizer(tmp_path):
    model, x = _trained_model()
    expected = model.predict(x, verbose=0)
    files = save_model_files(model, tmp_path, "m")
    for path in (files["keras"], files["h5"]):
        loaded = load_keras_model(path, compile=True)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
        assert type(loaded.get_layer("fused_bn")) is keras.layers.BatchNormalization
        assert getattr(loaded, "optimizer", None) is None
    with zipfile.ZipFile(files["keras"]) as archive:
        config = json.loads(archive.read("config.json"))
        assert "virion" not in json.dumps(config)
        assert not config.get("compile_config")
        weights = archive.read("model.weights.h5")
    assert b"optimizer" not in weights
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5", "m.keras"]  # no temp files left
    assert model.optimizer is not None and int(model.optimizer.iterations) > 0  # the live model is untouched


def test_state_model_keeps_adam_state_and_loads_in_safe_mode(tmp_path):
    model, _ = _trained_model()
    path = save_state_model(model, tmp_path / "last-e0002.keras")
    reloaded = load_state_model(path, "m")
    assert isinstance(reloaded.optimizer, keras.optimizers.Adam)
    assert int(reloaded.optimizer.iterations) == int(model.optimizer.iterations) > 0
    for a, b in zip(reloaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b))
    with zipfile.ZipFile(path) as archive:
        assert b"optimizer" in archive.read("model.weights.h5")  # the resume state keeps Adam's moments


def test_a_failed_save_leaves_no_file(tmp_path, monkeypatch):
    """A full disk or a file-size limit during the save: the old file stays, no new or temp file appears."""
    model, _ = _trained_model()
    good = save_model_files(model, tmp_path, "m")["keras"]
    before = good.read_bytes()

    def full_disk(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as fh:
            fh.write(b"PK\x03\x04 half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", full_disk)
    with pytest.raises(OSError):
        save_model_files(model, tmp_path, "m")
    with pytest.raises(OSError):
        save_state_model(model, tmp_path / "state" / "last-e0003.keras")
    assert good.read_bytes() == before
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["m.h5", "m.keras"]


def test_plain_keras_loses_adam_when_h5_is_saved_first(tmp_path):
    """The Keras 3.15 behaviour that made the save order matter; if Keras fixes it this test tells us."""
    model, _ = _trained_model()
    model.save(tmp_path / "first.h5")
    model.save(tmp_path / "then.keras")
    assert not isinstance(keras.saving.load_model(tmp_path / "then.keras").optimizer, keras.optimizers.Adam)


def test_run_folder_collision_is_refused(tmp_path):
    run = create_run_dir(tmp_path / "runs" / "a")
    (run / "config.json").write_text("{}")
    with pytest.raises(VirionError, match="--overwrite.*--resume") as info:
        create_run_dir(run)
    assert "\n" not in str(info.value)
    assert (run / "config.json").exists()
    run = create_run_dir(run, overwrite=True)
    assert list(run.iterdir()) == []


def test_inference_model_keeps_the_structure_of_the_model():
    from virion.training.saving import inference_model

    model, x = _trained_model()
    plain = inference_model(model)
    assert plain.name == model.name and plain.input_shape == model.input_shape
    assert plain.predict(x, verbose=0).shape == model.predict(x, verbose=0).shape  # a tensor, not a list

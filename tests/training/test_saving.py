import keras
import numpy as np
import pytest

from virion.errors import VirionError
from virion.training.run_folder import create_run_dir
from virion.training.saving import load_model, save_model_files


def _trained_model():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(0).uniform(0, 1, (24, 8, 8, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(24) % 3, 3)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    return model, x


def test_h5_and_keras_round_trips_predict_the_same(tmp_path):
    model, x = _trained_model()
    expected = model.predict(x, verbose=0)
    files = save_model_files(model, tmp_path, "m")
    for path in (files["keras"], files["h5"]):
        np.testing.assert_allclose(load_model(path).predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5", "m.keras"]  # no temp files left


def test_save_order_keeps_adam_state_in_keras_file(tmp_path):
    model, _ = _trained_model()
    files = save_model_files(model, tmp_path, "m")
    reloaded = load_model(files["keras"])
    assert isinstance(reloaded.optimizer, keras.optimizers.Adam)
    assert int(reloaded.optimizer.iterations) == int(model.optimizer.iterations) > 0
    for a, b in zip(reloaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b))
    # The in-memory model stays whole too: saving .keras again after the .h5 keeps Adam.
    files = save_model_files(model, tmp_path / "again", "m")
    assert isinstance(load_model(files["keras"]).optimizer, keras.optimizers.Adam)


def test_plain_keras_loses_adam_when_h5_is_saved_first(tmp_path):
    """The Keras 3.15 behaviour our order works around; if Keras fixes it this test tells us."""
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

import csv
import json

import keras
import numpy as np
import pytest

from virion.run.loading import load_keras_model
from virion.training.trainer import load_run_config, train_run


def load_model(path, compile=True):
    return load_keras_model(path, compile=compile)


def _history(folder):
    with open(folder / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _val_images(config):
    from virion.training.trainer import prepare_data

    data = prepare_data(config, progress=False)
    return np.repeat(data.validation.images[..., None], 3, axis=-1).astype("float32"), data


def test_short_training_learns_and_writes_the_model_folder(tiny_data, tiny_registry, make_config, tmp_path):
    config = make_config(tiny_data, tmp_path / "run", epochs=4)
    result = train_run(config, post_training=False, progress=False)
    folder = tmp_path / "run" / "resnet50"
    rows = _history(folder)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert max(float(r["val_accuracy"]) for r in rows) > 1 / 3 + 0.1  # beats chance (3 classes)
    assert all(0 <= float(r["val_macro_f1"]) <= 1 for r in rows)

    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["class_names"] == ["class0", "class1", "class2"]
    assert meta["best_val_accuracy"] == pytest.approx(max(float(r["val_accuracy"]) for r in rows), rel=1e-5)
    assert meta["best_val_accuracy"] == result.models["resnet50"].best_val_accuracy
    assert meta["epochs_run"] == 4 and meta["params"] > 0 and meta["data_fingerprint"]
    assert set(meta["versions"]) >= {"python", "keras", "tensorflow", "numpy"}
    for name in ("config.json", "dataset.json", "skipped_files.txt"):
        assert (tmp_path / "run" / name).is_file()
    assert sorted(p.name for p in (folder / "state").iterdir()) == ["progress.json"]  # resume files removed
    assert json.loads((folder / "state" / "progress.json").read_text())["phase"] == "done"

    # The saved model is the best epoch; both formats predict what it predicts.
    x, _ = _val_images(config)
    keras_model = load_model(folder / "resnet50_virus_classification.keras")
    h5_model = load_model(folder / "resnet50_virus_classification.h5")
    np.testing.assert_allclose(h5_model.predict(x, verbose=0), keras_model.predict(x, verbose=0), atol=1e-6)
    best_acc = np.mean(np.argmax(keras_model.predict(x, verbose=0), -1) == _val_images(config)[1].validation.labels)
    assert best_acc == pytest.approx(meta["best_val_accuracy"], abs=1e-6)


class _Interrupt(keras.callbacks.Callback):
    """Ctrl-C right after epoch `after` (1-based) has finished and its state was saved."""

    def __init__(self, after):
        super().__init__()
        self.after = after

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.after:
            raise KeyboardInterrupt


class _Epochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch)


def test_resume_after_interrupt_runs_only_the_remaining_epochs(tiny_data, tiny_registry, make_config, tmp_path):
    config = make_config(tiny_data, tmp_path / "run", epochs=3)
    with pytest.raises(KeyboardInterrupt):
        train_run(config, extra_callbacks=[_Interrupt(after=1)], post_training=False, progress=False)
    state = tmp_path / "run" / "resnet50" / "state"
    committed = json.loads((state / "progress.json").read_text())
    assert committed["epochs_done"] == 1 and committed["model_file"] == "last-e0001.keras"
    saved = load_model(state / committed["model_file"])
    assert int(saved.optimizer.iterations) > 0

    seen = _Epochs()
    resumed = load_run_config(tmp_path / "run")
    assert resumed.epochs == 3 and resumed.stretch is None
    train_run(resumed, resume=True, extra_callbacks=[seen], post_training=False, progress=False)
    assert seen.seen == [1, 2]
    rows = _history(tmp_path / "run" / "resnet50")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]  # each epoch exactly once
    meta = json.loads((tmp_path / "run" / "resnet50" / "metadata.json").read_text())
    assert meta["epochs_run"] == 3

    # Resuming a finished run trains nothing more.
    seen = _Epochs()
    train_run(resumed, resume=True, extra_callbacks=[seen], post_training=False, progress=False)
    assert seen.seen == [] and len(_history(tmp_path / "run" / "resnet50")) == 3


def test_feature_cache_trains_the_head_and_saves_the_full_model(tiny_data, tiny_registry, make_config, tmp_path):
    weights = tmp_path / "fake.weights.h5"  # the stand-in builder ignores it; it only marks the base frozen
    weights.write_bytes(b"")
    config = make_config(
        tiny_data,
        tmp_path / "run",
        models=["xception"],
        weights=str(weights),
        epochs=5,
        feature_cache=2,
        augment={"horizontal_flip": True, "vertical_flip": True},
        fine_tune_epochs=1,
        unfreeze="base_conv",
        checkpoint_metric="val_macro_f1",
    )
    before = tiny_registry("xception", 3, 32, str(weights))
    train_run(config, post_training=False, progress=False)
    folder = tmp_path / "run" / "xception"
    rows = _history(folder)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]  # 5 head epochs on features, 1 fine-tune
    assert float(rows[4]["lr"]) == pytest.approx(3e-2) and float(rows[5]["lr"]) == pytest.approx(1e-5)
    model = load_model(folder / "xception_virus_classification.keras")
    assert model.input_shape == (None, 32, 32, 3)  # the full model, not the head
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["feature_cache"] == 2 and meta["fine_tuned"] is True
    x, data = _val_images(config)
    acc = np.mean(np.argmax(model.predict(x, verbose=0), -1) == data.validation.labels)
    assert acc == pytest.approx(meta["best_val_accuracy"], abs=1e-6)
    assert meta["best_val_accuracy"] > 1 / 3 + 0.1
    assert not np.allclose(
        model.get_layer("head_dense").get_weights()[0], before.get_layer("head_dense").get_weights()[0]
    )


def test_balanced_class_weights():
    from virion.training.trainer import class_weights

    w = class_weights(np.array([0, 0, 0, 1]), 3)
    assert w[1] == pytest.approx(3 * w[0]) and w[2] == 1.0


def test_sqrt_class_weights_are_milder_with_mean_one_per_image():
    from virion.training.trainer import class_weights

    labels = np.array([0] * 9 + [1])
    w = class_weights(labels, 3, power=0.5)
    assert w[1] == pytest.approx(3 * w[0])  # sqrt(9): the balanced ratio would be 9
    assert np.mean([w[int(c)] for c in labels]) == pytest.approx(1.0) and w[2] == 1.0


def test_console_has_a_header_per_model_and_one_line_per_epoch_when_not_a_terminal(
    tiny_data, tiny_registry, make_config, tmp_path, capsys
):
    config = make_config(tiny_data, tmp_path / "run", models=["resnet50", "densenet121"], epochs=2)
    train_run(config, progress=True)
    out = capsys.readouterr().out
    assert "training resnet50 (1/2), 2 epochs" in out and "training densenet121 (2/2), 2 epochs" in out
    assert "\r" not in out and "\x1b" not in out  # no progress bars in a log file
    epoch_lines = [line for line in out.splitlines() if " - loss: " in line]
    assert len(epoch_lines) == 4, out  # 2 models x 2 epochs, one line each


def test_early_stopping_and_plateau_counters_survive_a_resume():
    """Keras resets them in on_train_begin; ours put the committed counters back (and only once)."""
    from virion.training.callbacks import ResumableEarlyStopping, ResumablePlateau

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    stopper = ResumableEarlyStopping(
        monitor="val_accuracy",
        mode="max",
        patience=2,
        state={"wait": 1, "best": 0.9, "best_epoch": 2, "stopped_epoch": 0},
    )
    plateau = ResumablePlateau(
        monitor="val_accuracy",
        mode="max",
        patience=2,
        factor=0.5,
        state={"wait": 1, "best": 0.9, "cooldown_counter": 0},
    )
    for callback in (stopper, plateau):
        callback.set_model(model)
        callback.on_train_begin()
    model.stop_training = False
    stopper.on_epoch_end(3, {"val_accuracy": 0.8})
    plateau.on_epoch_end(3, {"val_accuracy": 0.8})
    assert model.stop_training  # patience 2: one committed miss + this one
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(0.05)
    stopper.on_train_begin()  # the next epoch's fit() call must not reset them
    assert stopper.wait == 2 and stopper.get_state()["best"] == pytest.approx(0.9)


def test_counters_are_committed_with_the_epoch(tiny_data, tiny_registry, make_config, tmp_path):
    config = make_config(tiny_data, tmp_path / "run", epochs=2, early_stopping=5, lr_schedule="plateau")
    with pytest.raises(KeyboardInterrupt):
        train_run(config, extra_callbacks=[_Interrupt(after=2)], progress=False)
    progress = json.loads((tmp_path / "run" / "resnet50" / "state" / "progress.json").read_text())
    assert set(progress["callbacks"]) == {"early_stopping", "plateau"}
    assert progress["callbacks"]["early_stopping"]["wait"] in (0, 1)
    assert progress["callbacks"]["early_stopping"]["best"] == pytest.approx(progress["best"])

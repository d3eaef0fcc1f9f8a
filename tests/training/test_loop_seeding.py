"""The epoch loop keeps TensorFlow's global seed between epochs, and validation is one prediction pass.

Each epoch is its own `fit` call. Setting TensorFlow's global seed between them
(`tf.random.set_seed`, even to the same value) makes every compiled function rebuild at the next
call: ResNet-50 at 72 px lost ~7-14 s at the first step of every epoch on 2 cores. The global seed
is set once per stage, before the first epoch.
"""

from __future__ import annotations

import csv
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from virion.training.trainer import prepare_data, train_run


class _SeedSetsPerEpoch(keras.callbacks.Callback):
    def __init__(self, calls):
        super().__init__()
        self.calls = calls
        self.at_begin = []

    def on_epoch_begin(self, epoch, logs=None):
        self.at_begin.append(len(self.calls))


def test_the_global_seed_is_set_once_per_stage_and_val_metrics_match_the_predictions(
    tiny_data, tiny_registry, make_config, tmp_path, monkeypatch
):
    calls = []
    real_set_seed = tf.random.set_seed

    def counting_set_seed(seed):
        calls.append(seed)
        real_set_seed(seed)

    monkeypatch.setattr(tf.random, "set_seed", counting_set_seed)
    config = make_config(tiny_data, tmp_path / "run", epochs=4)
    seeds = _SeedSetsPerEpoch(calls)
    train_run(config, extra_callbacks=[seeds], progress=False)
    assert calls, "the stage never seeded TensorFlow (tf.data would then depend on what ran before)"
    assert len(seeds.at_begin) == 4
    assert seeds.at_begin == [seeds.at_begin[0]] * 4, f"TensorFlow's global seed was set between epochs: {calls}"

    # val_loss / val_accuracy come from the same prediction pass as val_macro_f1: check the
    # saved (best) model's own figures on the validation split against its history row.
    folder = tmp_path / "run" / "resnet50"
    with open(folder / "history.csv", newline="") as fh:
        rows = {int(r["epoch"]): r for r in csv.DictReader(fh)}
    best = json.loads((folder / "metadata.json").read_text())["best_epoch"]
    model = keras.models.load_model(folder / "resnet50_virus_classification.keras")
    data = prepare_data(config, progress=False)
    x = np.repeat(data.validation.images[..., None], 3, axis=-1).astype("float32")
    probs = model.predict(x, verbose=0)
    y = data.validation.labels
    loss = -np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)))
    assert float(rows[best]["val_accuracy"]) == pytest.approx(np.mean(probs.argmax(-1) == y), abs=1e-6)
    assert float(rows[best]["val_loss"]) == pytest.approx(loss, rel=1e-3, abs=1e-4)

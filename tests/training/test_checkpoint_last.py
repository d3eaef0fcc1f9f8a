"""checkpoint_metric "last": the final epoch is kept whatever the validation metrics did."""

import keras
import pytest

from virion.training.callbacks import BestCheckpoint
from virion.training.config import TrainConfig


def _model():
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(2)(inputs))


@pytest.mark.parametrize(("monitor", "kept"), [("val_accuracy", 1), ("last", 3)])
def test_last_keeps_the_final_epoch_even_when_validation_got_worse(tmp_path, monitor, kept):
    checkpoint = BestCheckpoint(tmp_path, monitor=monitor)
    checkpoint.set_model(_model())
    for epoch, val_accuracy in enumerate([0.9, 0.5, 0.4]):  # validation falls after the first epoch
        checkpoint.on_epoch_end(epoch, {"val_accuracy": val_accuracy, "loss": 1.0})
    assert checkpoint.best_epoch == kept
    assert (tmp_path / checkpoint.best_file).is_file()
    assert checkpoint.best_logs["val_accuracy"] == [0.9, 0.5, 0.4][kept - 1]


def test_last_with_early_stopping_and_plateau_watches_validation_macro_f1(tmp_path):
    from virion.training.callbacks import EpochTimer, make_callbacks
    from virion.training.progress import Progress

    TrainConfig(checkpoint_metric="last", early_stopping=3, lr_schedule="plateau").validate()
    callbacks, _ = make_callbacks(
        tmp_path,
        phase="train",
        progress=Progress(monitor="last"),
        val_x=None,
        val_y=None,
        timer=EpochTimer(),
        checkpoint_metric="last",
        early_stopping=3,
        lr_schedule="plateau",
    )
    watchers = [
        cb for cb in callbacks if isinstance(cb, (keras.callbacks.EarlyStopping, keras.callbacks.ReduceLROnPlateau))
    ]
    assert len(watchers) == 2 and {cb.monitor for cb in watchers} == {"val_macro_f1"}
    assert [cb.monitor for cb in callbacks if isinstance(cb, BestCheckpoint)] == ["last"]

"""The epoch loop: every epoch's randomness is a pure function of (seed, epoch).

That is what lets a resumed run train exactly as one that never stopped. Three sources of
randomness need it: the shuffle and augmentation of the input pipeline (a dataset per epoch,
seeded by the epoch), the global seeds (set per epoch), and the seed generators of layers such as
Dropout, whose state a `.keras` file does not hold (reset per epoch, below). And Keras creates a
varying number of dataset iterators per epoch inside one `fit`, so we call `fit` once per epoch.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from virion.training import callbacks as cb
from virion.training.progress import Progress


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """The random seed of one epoch (and one stream of it), independent of what ran before."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(stream)]).generate_state(1)[0] % (2**31 - 1))


def seed_globals(seed: int) -> None:
    """Seed Python's and NumPy's global generators (and the backend's, except TensorFlow's).

    Not `tf.random.set_seed` between epochs: a changed TensorFlow global seed makes the train
    and test functions trace again (measured on a tiny CNN: 0.15 s instead of 0.03 s per later
    epoch; the tracing cost grows with the model, tens of seconds for ResNet-50).
    Nothing inside the TensorFlow train step needs it: Keras' random ops are stateless, seeded by
    the layers' seed generators (reset by `reseed_layers`), and the input pipeline is seeded per
    epoch.
    """
    if keras.backend.backend() != "tensorflow":
        keras.utils.set_random_seed(seed)
        return
    random.seed(seed)
    np.random.seed(seed)


def seed_stage(seed: int) -> None:
    """Seed every generator, TensorFlow's global seed included, once before a stage's first epoch.

    tf.data combines TensorFlow's global seed with each op's seed, so the global seed must be the
    same whether a stage starts fresh or resumes after a kill. Once per stage, never per epoch:
    `tf.random.set_seed` (even to the same value) makes every compiled function rebuild at its next
    call: ResNet-50 at 72 px, batch 16, spent 14 s in the first step of every epoch instead of
    ~0.5 s (the demo, 2-core AVX-512/AMX CPU, load average ~10 from other work).
    """
    keras.utils.set_random_seed(int(seed))


def reseed_layers(model: keras.Model, seed: int, epoch: int) -> None:
    """Reset the seed generators of the model's layers (Dropout, ...) for this epoch."""
    generators = [v for v in model.variables if v.path.endswith("seed_generator_state")]
    for index, variable in enumerate(generators):
        value = np.array([epoch_seed(seed, epoch, index + 1), 0], dtype=keras.backend.standardize_dtype(variable.dtype))
        variable.assign(value)


def fit_by_epoch(
    model: keras.Model,
    train_data: Callable[[int], Any],
    committer: cb.EpochCommit,
    *,
    last_epoch: int,
    callbacks: list,
    validation_data,
    class_weight=None,
    seed: int = 0,
    verbose: int = 1,
) -> Progress:
    """`model.fit` one epoch at a time, from the committed epoch to `last_epoch`; returns the progress.

    Epoch k trains on `train_data(k)` with the random state of (seed, k). Stops early when the
    commit records early stopping or a NaN loss.
    """
    callbacks = list(callbacks)
    if verbose:
        callbacks.append(cb.EpochsProgbar(last_epoch))
    seed_stage(seed)
    for epoch in range(committer.progress.epochs_done, last_epoch):
        batches = train_data(epoch)
        seed_globals(epoch_seed(seed, epoch))
        reseed_layers(model, seed, epoch)
        model.fit(
            batches,
            validation_data=validation_data,
            initial_epoch=epoch,
            epochs=epoch + 1,
            callbacks=callbacks,
            class_weight=class_weight,
            shuffle=False,
            verbose=verbose,
        )
        if committer.progress.stopped or committer.progress.phase == "failed":
            break
    return committer.progress

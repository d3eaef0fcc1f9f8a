"""`--feature-cache K`: train a frozen-base transfer model's head on cached base features.

With the base frozen (and its batch normalization in inference mode), the base maps each image
to the same features every epoch, so running it 20 times is wasted work. We run it once per
image (K = 0, no augmentation) or once per each of K augmented views (K >= 1; epoch e trains on
view e mod K), then train the same head layers on the cached features. The head model shares its
layer objects with the full model, so the trained weights are already in the full model, which
is what gets saved: the files are the normal full model.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np

from virion.run.layout import STATE_DIR
from virion.training.loop import fit_by_epoch
from virion.training.progress import Progress
from virion.training.saving import load_state_model

POOL_LAYER = "head_pool"


def split_model(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """(base: image -> pooled features, head: features -> probabilities), sharing layers with `model`."""
    try:
        pool = model.get_layer(POOL_LAYER)
    except ValueError:
        pools = [layer for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
        if not pools:
            raise ValueError(f"model {model.name!r} has no global-average-pooling layer to split at") from None
        pool = pools[-1]
    base = keras.Model(model.inputs, pool.output, name=f"{model.name}_features")
    features = keras.Input(shape=tuple(pool.output.shape[1:]), name="features")
    x = features
    for layer in model.layers[model.layers.index(pool) + 1 :]:
        x = layer(x)
    return base, keras.Model(features, x, name=f"{model.name}_head")


def extract_features(
    base: keras.Model,
    arrays,
    num_classes: int,
    batch_size: int,
    *,
    views: int = 0,
    augment=None,
    seed: int = 0,
    verbose: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Base features of every image: (V, N, D) features and (V, N) labels, V = max(views, 1).

    views = 0: file order, no augmentation. views >= 1: each view is one augmented, shuffled
    pass of the training pipeline (a different seed per view), so labels are kept per view.
    """
    from virion.data.numpy_pipeline import make_backend_dataset as make_dataset

    n = len(arrays.labels)
    if views == 0:
        ds = make_dataset(arrays, num_classes, batch_size, training=False)
        feats = base.predict(ds, verbose=verbose)[:n]  # several devices: padding rows at the end
        return feats[None].astype(np.float32), np.asarray(arrays.labels)[None]
    all_feats, all_labels = [], []
    for view in range(views):
        ds = make_dataset(arrays, num_classes, batch_size, training=True, augment=augment, seed=seed + 7919 * view)
        feats, labels, seen = [], [], 0
        for x, y in ds:  # stop at N images whether or not the pipeline repeats
            feats.append(np.asarray(base.predict_on_batch(x), dtype=np.float32))
            labels.append(np.argmax(np.asarray(y), axis=-1))
            seen += len(labels[-1])
            if seen >= n:
                break
        all_feats.append(np.concatenate(feats)[:n])
        all_labels.append(np.concatenate(labels)[:n])
        if verbose:
            print(f"  cached augmented view {view + 1}/{views}", flush=True)
    return np.stack(all_feats), np.stack(all_labels)


class FeatureViews(keras.utils.PyDataset):
    """Batches of cached features; epoch e uses view e mod V, reshuffled each epoch."""

    def __init__(
        self,
        feats: np.ndarray,
        labels: np.ndarray,
        num_classes: int,
        batch_size: int,
        seed: int = 0,
        first_epoch: int = 0,
    ):
        super().__init__()
        self.feats, self.labels = feats, labels
        self.num_classes, self.batch_size, self.seed = num_classes, batch_size, seed
        self.epoch = first_epoch
        self._order()

    def _order(self) -> None:
        rng = np.random.default_rng(self.seed + self.epoch)
        self.view = self.epoch % len(self.feats)
        self.perm = rng.permutation(self.feats.shape[1])

    def __len__(self) -> int:
        return math.ceil(self.feats.shape[1] / self.batch_size)

    def __getitem__(self, index):
        idx = self.perm[index * self.batch_size : (index + 1) * self.batch_size]
        y = keras.utils.to_categorical(self.labels[self.view, idx], self.num_classes).astype(np.float32)
        return self.feats[self.view, idx], y

    def on_epoch_end(self):
        self.epoch += 1
        self._order()


def _restore_head(head: keras.Model, path: Path, model_name: str) -> None:
    """Continue from the committed resume model (a head model): weights and the optimizer state."""
    loaded = load_state_model(path, model_name)
    head.set_weights(loaded.get_weights())
    if loaded.optimizer is not None and loaded.optimizer.variables:
        head.optimizer.build(head.trainable_variables)
        if len(head.optimizer.variables) == len(loaded.optimizer.variables):
            for dst, src in zip(head.optimizer.variables, loaded.optimizer.variables):
                dst.assign(src)


def train_head_on_features(
    model: keras.Model,
    config,
    data,
    folder: Path,
    *,
    progress: Progress,
    make_callbacks: Callable,
    jit: bool = False,
    class_weight=None,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 1,
) -> Progress:
    """The head stage of `train_model` on cached features; returns the committed progress.

    `make_callbacks(phase, val_x, checkpoint_model, first_epoch, last_epoch, base_lr)` gives the
    trainer's callback list and its `EpochCommit`; the best checkpoint keeps the full model's weights.
    """
    from virion.data.numpy_pipeline import make_backend_dataset as make_dataset

    done = progress.epochs_done
    base, head = split_model(model)
    head.compile(
        optimizer=config.build_optimizer(config.learning_rate),
        loss=config.build_loss(),
        metrics=["accuracy"],
        jit_compile=bool(jit),
    )
    if done and progress.model_file:
        _restore_head(head, folder / STATE_DIR / progress.model_file, model.name)

    start = time.perf_counter()
    views = int(config.feature_cache)
    if verbose:
        what = "plain features" if views == 0 else f"{views} augmented view(s)"
        print(f"feature cache: running the frozen {model.name} base once ({what}) ...", flush=True)
    train_f, train_y = extract_features(
        base,
        data.train,
        data.num_classes,
        config.batch_size,
        views=views,
        augment=config.augment_config(),
        seed=config.seed,
        verbose=verbose,
    )
    val_ds = make_dataset(data.validation, data.num_classes, config.batch_size, training=False)
    val_f = base.predict(val_ds, verbose=0)[: len(data.validation.labels)].astype(np.float32)

    callbacks, committer = make_callbacks("head", val_f, model, 0, config.epochs, config.learning_rate)
    committer.progress = dataclasses.replace(committer.progress, feature_cache=views)
    # Extraction is part of the honest cost of this regime: count it as training time.
    committer.timer.train_seconds += time.perf_counter() - start
    return fit_by_epoch(
        head,
        lambda epoch: FeatureViews(
            train_f, train_y, data.num_classes, config.batch_size, seed=config.seed, first_epoch=epoch
        ),
        committer,
        last_epoch=config.epochs,
        callbacks=callbacks + list(extra_callbacks),
        validation_data=None,  # ValidationMacroF1 computes val_loss/accuracy/macro-F1 from val_f in one pass
        class_weight=class_weight,
        seed=config.seed,
        verbose=verbose,
    )

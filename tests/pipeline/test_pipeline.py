"""make_dataset / make_predict_dataset: shapes, order, labels, augmentation only where it belongs."""

from pathlib import Path

import numpy as np
import pytest

from virion.data.augment import AugmentConfig
from virion.data.cache import SplitArrays
from virion.data.pipeline import make_dataset, make_predict_dataset, steps_per_epoch
from virion.errors import VirionError

N, SIZE, CLASSES, BATCH = 21, 32, 3, 8


def _arrays(n=N, size=SIZE, memmap_dir: Path | None = None) -> SplitArrays:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    # Stamp each image's index into a corner so order can be read back from the pixels.
    images[:, 0, 0] = np.arange(n, dtype=np.uint8)
    if memmap_dir is not None:  # the cache hands out read-only memory maps
        np.save(memmap_dir / "x.npy", images)
        images = np.load(memmap_dir / "x.npy", mmap_mode="r")
    labels = (np.arange(n) % CLASSES).astype(np.int64)
    files = [Path(f"img_{i:03d}.tif") for i in range(n)]
    return SplitArrays(images, labels, files, [])


def _epoch(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


@pytest.mark.parametrize("training", [False, True])
def test_shapes_dtypes_and_cardinality(training):
    arrays = _arrays()
    ds = make_dataset(arrays, CLASSES, BATCH, training=training, seed=0)
    assert len(ds) == steps_per_epoch(N, BATCH) == 3
    batches = list(ds)
    assert [len(x) for x, _ in batches] == [8, 8, 5]  # last partial batch kept
    for x, y in batches:
        assert x.dtype.name == "float32" and x.shape[1:] == (SIZE, SIZE, 3)
        assert y.dtype.name == "float32" and y.shape[1:] == (CLASSES,)
        x = x.numpy()
        assert x.min() >= 0.0 and x.max() <= 255.0
        np.testing.assert_array_equal(x[..., 0], x[..., 2])  # grayscale widened, not colour
        np.testing.assert_array_equal(y.numpy().sum(axis=1), 1.0)


def test_validation_and_test_are_file_order_and_untouched(tmp_path):
    arrays = _arrays(memmap_dir=tmp_path)
    for _ in range(2):  # two passes: still no shuffle, no augmentation
        x, y = _epoch(make_dataset(arrays, CLASSES, BATCH, training=False, augment=AugmentConfig(rotation=90)))
        expected = np.repeat(np.asarray(arrays.images)[..., None], 3, axis=-1).astype(np.float32)
        np.testing.assert_array_equal(x, expected)
        np.testing.assert_array_equal(y.argmax(axis=1), arrays.labels)
        np.testing.assert_array_equal(y, np.eye(CLASSES, dtype=np.float32)[arrays.labels])


def test_training_shuffles_but_keeps_image_label_pairs():
    arrays = _arrays()
    x, y = _epoch(make_dataset(arrays, CLASSES, BATCH, training=True, augment=AugmentConfig.none(), seed=3))
    order = x[:, 0, 0, 0].astype(int)  # the stamped index survives when nothing is augmented
    assert sorted(order) == list(range(N))
    assert list(order) != list(range(N))
    np.testing.assert_array_equal(y.argmax(axis=1), arrays.labels[order])
    np.testing.assert_array_equal(x[..., 0], np.asarray(arrays.images)[order].astype(np.float32))


def test_augmentation_changes_training_batches_reproducibly():
    arrays = _arrays()
    ds = make_dataset(arrays, CLASSES, BATCH, training=True, seed=11)
    epoch1, epoch2 = _epoch(ds), _epoch(ds)
    again = _epoch(make_dataset(arrays, CLASSES, BATCH, training=True, seed=11))
    np.testing.assert_array_equal(again[0], epoch1[0])  # same seed, fresh dataset: same batches
    np.testing.assert_array_equal(again[1], epoch1[1])
    assert not np.array_equal(epoch1[0], epoch2[0])  # a new epoch: new order and new warps
    other = _epoch(make_dataset(arrays, CLASSES, BATCH, training=True, seed=12))
    assert not np.array_equal(other[0], epoch1[0])

    # Augmented images differ from every source image (compare against the un-augmented run).
    plain = _epoch(make_dataset(arrays, CLASSES, BATCH, training=True, augment=AugmentConfig.none(), seed=11))
    np.testing.assert_array_equal(plain[1], epoch1[1])  # same shuffle order as the augmented run
    differs = [not np.array_equal(a, b) for a, b in zip(epoch1[0], plain[0])]
    assert sum(differs) >= N - 2  # a zero draw for every parameter is vanishingly unlikely
    assert epoch1[0].min() >= 0.0 and epoch1[0].max() <= 255.0


def test_predict_dataset_in_order():
    arrays = _arrays()
    ds = make_predict_dataset(arrays.images, 4)
    assert len(ds) == 6
    x = np.concatenate([b.numpy() for b in ds])
    np.testing.assert_array_equal(x[..., 1], np.asarray(arrays.images).astype(np.float32))
    assert x.shape == (N, SIZE, SIZE, 3) and x.dtype == np.float32
    rgb = np.repeat(np.asarray(arrays.images)[..., None], 3, axis=-1)  # what decode_rgb gives
    np.testing.assert_array_equal(np.concatenate([b.numpy() for b in make_predict_dataset(rgb, 8)]), x)


def test_user_mistakes_are_one_line_errors():
    arrays = _arrays()
    with pytest.raises(VirionError, match="batch size"):
        make_dataset(arrays, CLASSES, 0, training=True)
    with pytest.raises(VirionError, match="0..1"):
        make_dataset(arrays, 2, BATCH, training=False)  # labels go up to 2
    with pytest.raises(VirionError, match="no images"):
        make_dataset(_arrays(n=0), CLASSES, BATCH, training=False)
    with pytest.raises(VirionError, match="uint8"):
        make_predict_dataset(np.zeros((2, 8, 8), np.float32), 2)


def test_feeds_keras_fit_with_validation():
    """The training contract end to end: a tiny model fits on the training and validation sets."""
    import keras

    arrays = _arrays(n=16, size=16)
    train = make_dataset(arrays, CLASSES, 8, training=True, seed=0)
    val = make_dataset(arrays, CLASSES, 8, training=False)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    outputs = keras.layers.Dense(CLASSES, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(train, validation_data=val, epochs=2, verbose=0, shuffle=False)
    assert len(history.history["val_loss"]) == 2
    assert np.isfinite(history.history["loss"]).all()
    assert model.predict(make_predict_dataset(arrays.images, 8), verbose=0).shape == (16, CLASSES)

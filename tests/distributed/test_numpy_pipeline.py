"""The NumPy pipeline: every image once per epoch, a seeded order, even shards, the tf.data contract.

Runs in the main (TensorFlow) process: the pipeline is backend-agnostic apart from jitting its
device function on JAX (exercised by the subprocess tests).
"""

from __future__ import annotations

import numpy as np
import pytest

from virion.data.augment import AugmentConfig, MixConfig
from virion.data.cache import SplitArrays
from virion.data.numpy_pipeline import NumpyBatches, NumpyPredictBatches, batch_plan
from virion.errors import VirionError


def _arrays(n=23, size=8, classes=3):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n)  # pixel (0, 0) names the image
    return SplitArrays(images, np.arange(n) % classes, [f"{i}.png" for i in range(n)], [])


def _ids(batches, epoch_batches):
    return np.concatenate([np.asarray(b[0])[:, 0, 0, 0] for b in epoch_batches]).astype(int)


def _epoch(ds):
    ds.on_epoch_begin()
    try:
        return [ds[i] for i in range(len(ds))]
    finally:
        ds.on_epoch_end()


def test_training_epochs_cover_every_image_once_in_a_seeded_new_order():
    arrays = _arrays()
    ds = NumpyBatches(arrays, 3, 5, training=True, augment=AugmentConfig.none(), seed=7)
    first, second = _epoch(ds), _epoch(ds)
    a, b = _ids(ds, first), _ids(ds, second)
    assert sorted(a) == list(range(23)) and sorted(b) == list(range(23))
    assert list(a) != list(b), "each epoch must be reshuffled"
    again = NumpyBatches(arrays, 3, 5, training=True, augment=AugmentConfig.none(), seed=7)
    assert list(_ids(again, _epoch(again))) == list(a), "same seed, same order"
    other = NumpyBatches(arrays, 3, 5, training=True, augment=AugmentConfig.none(), seed=8)
    assert list(_ids(other, _epoch(other))) != list(a)
    x, y = first[0]
    assert x.shape == (5, 8, 8, 3) and x.dtype == np.float32 and y.shape == (5, 3)
    ids = x[:, 0, 0, 0].astype(int)
    np.testing.assert_array_equal(np.argmax(y, axis=1), arrays.labels[ids])  # labels follow their images
    np.testing.assert_array_equal(x[..., 0], x[..., 2])  # grayscale widened to three channels
    np.testing.assert_array_equal(x[..., 0], arrays.images[ids].astype(np.float32))  # untouched pixels


def test_resumed_epoch_numbering_continues_the_sequence():
    arrays = _arrays()
    ds = NumpyBatches(arrays, 3, 5, training=True, augment=AugmentConfig.none(), seed=7)
    _epoch(ds)
    second = _ids(ds, _epoch(ds))
    resumed = NumpyBatches(arrays, 3, 5, training=True, augment=AugmentConfig.none(), seed=7, first_epoch=1)
    assert list(_ids(resumed, _epoch(resumed))) == list(second)


def test_shards_split_each_global_batch_between_processes():
    arrays = _arrays(n=22)
    kw = dict(training=True, augment=AugmentConfig.none(), seed=1, num_devices=2, process_count=2)
    p0 = NumpyBatches(arrays, 3, 6, process_index=0, **kw)
    p1 = NumpyBatches(arrays, 3, 6, process_index=1, **kw)
    assert len(p0) == len(p1) == 4
    for i in range(len(p0)):
        whole = p0.global_indices(i)
        np.testing.assert_array_equal(np.concatenate([p0.local_indices(i), p1.local_indices(i)]), whole)
    seen = np.concatenate([p0.global_indices(i) for i in range(len(p0))])
    assert len(set(seen.tolist())) == len(seen) == 22  # 22 = 3 x 6 + 4: the last batch splits evenly


def test_multi_device_trims_training_and_pads_validation():
    assert batch_plan(23, 5, 2, training=True) == [(0, 4, 0), (5, 9, 0), (10, 14, 0), (15, 19, 0), (20, 22, 0)]
    assert batch_plan(23, 6, 2, training=False)[-1] == (18, 23, 1)
    assert batch_plan(7, 4, 4, training=True) == [(0, 4, 0)]  # a 3-image rest cannot feed 4 devices
    arrays = _arrays(n=7)
    val = NumpyBatches(arrays, 3, 4, training=False, num_devices=2)
    x, y, w = val[len(val) - 1]
    assert x.shape[0] == 4 and w.tolist() == [1.0, 1.0, 1.0, 0.0]
    ids = np.concatenate([np.asarray(val[i][0])[:, 0, 0, 0] for i in range(len(val))])[: val.num_samples]
    assert ids.astype(int).tolist() == list(range(7))  # file order, nothing lost
    with pytest.raises(VirionError, match="multiple of 2"):
        NumpyBatches(arrays, 3, 5, training=True, num_devices=2)


def test_augmentation_is_seeded_per_batch_and_changes_pixels():
    arrays = _arrays(n=8, size=16)
    aug = AugmentConfig(rotation=30.0, shift=0.1)
    a = NumpyBatches(arrays, 3, 4, training=True, augment=aug, seed=5, prefetch=0)
    b = NumpyBatches(arrays, 3, 4, training=True, augment=aug, seed=5, prefetch=2)
    xa, xb = _epoch(a)[0][0], _epoch(b)[0][0]  # prefetch thread or not: the same pixels
    np.testing.assert_allclose(np.asarray(xa), np.asarray(xb), atol=1e-4)
    ids = a.local_indices(0, epoch=0)
    assert not np.allclose(np.asarray(xa)[..., 0], arrays.images[ids].astype(np.float32))
    assert float(np.min(xa)) >= 0.0 and float(np.max(xa)) <= 255.0


def test_mixing_makes_soft_labels_that_match_the_pixels_and_only_in_training():
    # Each image is a constant gray level equal to 100 * its class, so after mixup the mean pixel
    # of an image is exactly 100 * (its soft label . class index): pixels and labels mixed alike.
    n, classes = 12, 3
    labels = np.arange(n) % classes
    images = np.repeat((100 * labels).astype(np.uint8)[:, None, None], 8, axis=1).repeat(8, axis=2)
    arrays = SplitArrays(images, labels, [f"{i}.png" for i in range(n)], [])
    mix = MixConfig(mixup=0.4)
    a = _epoch(NumpyBatches(arrays, classes, 6, training=True, augment=AugmentConfig.none(), mix=mix, seed=1))
    b = _epoch(
        NumpyBatches(arrays, classes, 6, training=True, augment=AugmentConfig.none(), mix=mix, seed=1, prefetch=0)
    )
    x = np.concatenate([np.asarray(batch[0]) for batch in a])
    y = np.concatenate([np.asarray(batch[1]) for batch in a])
    np.testing.assert_allclose(x, np.concatenate([np.asarray(batch[0]) for batch in b]), atol=1e-4)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-5)
    assert ((y > 0.01) & (y < 0.99)).any()  # soft labels
    np.testing.assert_allclose(x[..., 0].mean(axis=(1, 2)), 100 * y @ np.arange(classes), atol=0.05)
    plain = _epoch(NumpyBatches(arrays, classes, 6, training=False, mix=mix))
    np.testing.assert_array_equal(
        np.concatenate([np.asarray(batch[1]) for batch in plain]), np.eye(classes, dtype=np.float32)[labels]
    )


def test_predict_batches_keep_order_and_shape():
    images = _arrays(n=5).images
    ds = NumpyPredictBatches(images, 2)
    out = np.concatenate([ds[i][0] for i in range(len(ds))])
    assert out.shape == (5, 8, 8, 3) and out[:, 0, 0, 0].tolist() == list(range(5))
    with pytest.raises(VirionError, match="uint8"):
        NumpyPredictBatches(images.astype(np.float32), 2)


def test_an_abandoned_prefetch_thread_stops_and_batches_still_come(monkeypatch):
    import time

    import virion.data.numpy_pipeline as npp

    monkeypatch.setattr(npp, "_ABANDONED_SECONDS", 0.2)
    arrays = _arrays(n=20)
    ds = NumpyBatches(arrays, 3, 2, training=True, augment=AugmentConfig.none(), seed=3, prefetch=1)
    ds.on_epoch_begin()
    first = ds[0]
    deadline = time.time() + 10
    while ds._worker.is_alive() and time.time() < deadline:  # nobody takes batches: the thread gives up
        time.sleep(0.05)
    assert not ds._worker.is_alive()
    rest = [ds[i] for i in range(1, len(ds))]
    ds.on_epoch_end()
    ids = sorted(int(v) for b in [first, *rest] for v in np.asarray(b[0])[:, 0, 0, 0])
    assert ids == list(range(20))

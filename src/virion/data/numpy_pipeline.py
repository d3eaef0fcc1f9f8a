"""A NumPy input pipeline for the JAX backend: no TensorFlow, augmentation on the device.

`data/pipeline.py` builds tf.data pipelines, which need the 600 MB TensorFlow install a JAX GPU
user should not need. This module gives the same contract - batches of (float32 (B, H, W, 3) in
0..255, float32 one-hot (B, C)) from the decode-once cache - as a `keras.utils.PyDataset`:

- an epoch is a seeded permutation of integer indices (`np.random.default_rng([seed, epoch])`),
  one gather per batch from the uint8 (N, H, W) array (a memory map of the cache is fine);
- a background thread prepares the next batches while the device trains on the current one;
- only the uint8 grayscale batch crosses to the device; the `TEMAugment` warp, the cast and the
  widening to three channels run there (one jitted function on JAX), already laid out on the
  devices the way `keras.distribution` will use them, so Keras has nothing left to copy;
- augmentation noise is drawn per batch from `np.random.default_rng([seed, epoch, batch])`, so a
  run is reproducible whatever the thread timing, and the same on one device or on eight;
- data parallel: the global batch must split evenly over the devices, so a training epoch's
  last partial batch is cut to a multiple of the device count (the few images left out differ
  every epoch); a validation batch is instead padded with weight-0 rows, so no image is lost
  and accuracy stays exact (the padded rows add zero loss; val_loss is then counted over the
  padded length, a relative error below devices/images);
- multi-host: every process computes the same global order and keeps only its own slice of
  each global batch (`process_index` of `process_count`).
"""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from virion.data.augment import MIX_DIM, NOISE_DIM, AugmentConfig, MixConfig, TEMAugment, mix_batch
from virion.data.batch_checks import check_split
from virion.errors import VirionError

if TYPE_CHECKING:  # pragma: no cover
    from virion.data.cache import SplitArrays

# A prefetch thread whose batches nobody took for this long stops (its epoch was abandoned).
_ABANDONED_SECONDS = 120.0


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The order of the N images in `epoch`: a seeded permutation, or file order."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch)]).permutation(n).astype(np.int64)


def batch_plan(n: int, batch_size: int, num_devices: int, training: bool) -> list[tuple[int, int, int]]:
    """(start, stop, padding) of each global batch over an epoch's order.

    Training: the last partial batch is cut to a multiple of `num_devices` (dropped if that
    leaves nothing). Otherwise: it is padded up to a multiple of `num_devices`.
    """
    plan = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        rest = (stop - start) % num_devices
        if rest and training:
            stop -= rest
            if stop == start:
                continue
            plan.append((start, stop, 0))
        else:
            plan.append((start, stop, (num_devices - rest) % num_devices))
    return plan


def _check(arrays, num_classes, batch_size, num_devices, process_count) -> tuple[np.ndarray, np.ndarray]:
    images, labels, batch_size = check_split(arrays, num_classes, batch_size)
    if batch_size % num_devices:
        raise VirionError(
            f"--batch-size {batch_size} cannot be split evenly over {num_devices} devices: "
            f"use a multiple of {num_devices} (the batch size is the global batch)"
        )
    if num_devices % process_count:
        raise VirionError(
            f"{num_devices} devices cannot be split evenly over {process_count} processes: "
            "give every process the same number of devices"
        )
    return images, labels


class NumpyBatches(keras.utils.PyDataset):
    """(float32 (B, H, W, 3) 0..255, float32 one-hot (B, C)[, weights]) batches of a decoded split.

    training=True: reshuffled each epoch (seeded), augmented on the device with `augment`
    (default: the reference settings; `AugmentConfig.none()` switches it off), then mixed with
    `mix` (mixup/cutmix, default off; partners come from the same process's rows), which makes
    the labels soft.
    training=False: file order, untouched pixels; padded rows (multi-device only) come with a
    third element, sample weights 0, and `num_samples` tells how many rows are real.
    `num_devices`, `process_index`, `process_count`: default to the active
    `keras.distribution` (see `virion.backend.topology`), else one device, one process.
    `first_epoch`: the epoch number of the first pass (a resumed run continues the sequence).
    """

    def __init__(
        self,
        arrays: SplitArrays,
        num_classes: int,
        batch_size: int,
        *,
        training: bool,
        augment: AugmentConfig | dict | None = None,
        seed: int | None = 0,
        mix: MixConfig | dict | None = None,
        num_devices: int | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
        first_epoch: int = 0,
        prefetch: int = 2,
    ):
        super().__init__(workers=1, use_multiprocessing=False)  # our own in-order prefetch thread
        from virion.backend import topology

        topo = topology()
        self.num_devices = int(num_devices or topo["devices"])
        self.process_count = int(process_count or topo["processes"])
        self.process_index = int(topo["process_index"] if process_index is None else process_index)
        self.images, labels = _check(arrays, num_classes, batch_size, self.num_devices, self.process_count)
        self.onehot = np.eye(num_classes, dtype=np.float32)[labels]
        self.batch_size = int(batch_size)
        self.training = bool(training)
        if seed is None:  # explicitly unseeded: a fresh random run
            seed = int(np.random.default_rng().integers(2**31))
        self.seed = int(seed)
        if augment is None:
            augment = AugmentConfig()
        elif isinstance(augment, dict):
            augment = AugmentConfig.from_dict(augment)
        self.augment = augment if self.training and augment.enabled else None
        if isinstance(mix, dict):
            mix = MixConfig.from_dict(mix)
        self.mix = mix if self.training and mix is not None and mix.enabled else None
        self.num_samples = len(self.images)
        self.plan = batch_plan(self.num_samples, self.batch_size, self.num_devices, self.training)
        self.padded = any(pad for _, _, pad in self.plan)
        self._next_epoch = int(first_epoch)
        self._epoch = int(first_epoch)
        self._prefetch = max(0, int(prefetch))
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue | None = None
        self._expected = 0
        self._layer = TEMAugment(self.augment, seed=self.seed) if self.augment is not None else None
        self._device_fn = self._make_device_fn()
        self._placement = None  # resolved in the calling thread (Keras' distribution is thread-local)

    # ------------------------------------------------------------------ index plan
    def __len__(self) -> int:
        return len(self.plan)

    def global_indices(self, i: int, epoch: int | None = None) -> np.ndarray:
        """Image indices of global batch `i` (-1 marks a padding row)."""
        epoch = self._epoch if epoch is None else epoch
        start, stop, pad = self.plan[i]
        order = epoch_order(self.num_samples, self.seed, epoch, self.training)
        return np.concatenate([order[start:stop], np.full(pad, -1, np.int64)])

    def local_indices(self, i: int, epoch: int | None = None) -> np.ndarray:
        """This process's slice of global batch `i`."""
        idx = self.global_indices(i, epoch)
        per = len(idx) // self.process_count
        return idx[self.process_index * per : (self.process_index + 1) * per]

    # ------------------------------------------------------------------ building a batch
    def _make_device_fn(self):
        layer, mix = self._layer, self.mix

        def to_model_input(gray, noise, y, mix_draws):
            x = keras.ops.expand_dims(gray, -1)
            if layer is not None:
                x = layer.call(x, training=True, noise=noise)
            x = keras.ops.cast(x, "float32")
            if mix is not None:  # on the single channel, before widening, as in the tf.data pipeline
                x, y = mix_batch(x, y, mix, *mix_draws)
            return keras.ops.repeat(x, 3, axis=-1), y

        if keras.backend.backend() == "jax":
            import jax

            return jax.jit(to_model_input)
        return to_model_input

    def _resolve_placement(self):
        """Where batches go: the data sharding of the active distribution, else the default device."""
        if keras.backend.backend() != "jax":
            return None
        from virion.backend import local_batch_sharding

        return local_batch_sharding()

    def _noise(self, i: int, epoch: int, rows: int) -> np.ndarray:
        """Per-batch draws for the whole global batch, then this process's rows."""
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, i, 1])
        noise = rng.random((rows * self.process_count, NOISE_DIM), dtype=np.float32)
        return noise[self.process_index * rows : (self.process_index + 1) * rows]

    def _mix_draws(self, i: int, epoch: int, rows: int):
        """Per-batch mixup/cutmix draws (partners within this process's rows); () when mixing is off."""
        if self.mix is None:
            return ()
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, i, 2, self.process_index])
        ones = np.ones(rows, np.float32)
        mixup, cutmix = self.mix.mixup, self.mix.cutmix
        lam_mixup = rng.beta(mixup, mixup, rows).astype(np.float32) if mixup else ones
        lam_cutmix = rng.beta(cutmix, cutmix, rows).astype(np.float32) if cutmix else ones
        partner = rng.permutation(rows).astype(np.int32)
        uniforms = rng.random((rows, MIX_DIM), dtype=np.float32)
        return lam_mixup, lam_cutmix, partner, uniforms

    def _build(self, i: int, epoch: int, placement):
        local = self.local_indices(i, epoch)
        valid = local >= 0
        take = np.where(valid, local, 0)
        gray = np.take(self.images, take, axis=0)
        y = self.onehot[take]
        noise = self._noise(i, epoch, len(take)) if self._layer is not None else np.zeros((len(take), 0), np.float32)
        if placement is not None:
            import jax

            gray = jax.device_put(gray, placement)
            if self._layer is not None:
                noise = jax.device_put(noise, placement)
            if self.mix is not None:
                y = jax.device_put(y, placement)
        draws = self._mix_draws(i, epoch, len(take))
        x, y_mixed = self._device_fn(gray, noise, y if self.mix is not None else None, draws)
        if placement is None:  # not JAX: hand Keras plain arrays
            x = keras.ops.convert_to_numpy(x)
        if self.mix is not None:  # soft labels, made on the device with the images
            y = y_mixed if placement is not None else np.asarray(keras.ops.convert_to_numpy(y_mixed), np.float32)
        if self.padded:
            return x, y, valid.astype(np.float32)
        return x, y

    def __getitem__(self, i: int):
        if not 0 <= i < len(self.plan):
            raise IndexError(f"batch {i} out of range 0..{len(self.plan) - 1}")
        if self._queue is not None and i == self._expected:
            item = self._take()
            if item is not None:
                self._expected += 1
                if isinstance(item, BaseException):
                    self._stop_worker()
                    raise item
                return item
        if self._placement is None:
            self._placement = self._resolve_placement()
        return self._build(i, self._epoch, self._placement)

    def _take(self):
        """The next prefetched batch, or None when the worker gave up (then the caller builds it)."""
        while True:
            try:
                return self._queue.get(timeout=0.5)
            except queue.Empty:
                if self._worker is None or not self._worker.is_alive():
                    self._queue = None
                    return None

    # ------------------------------------------------------------------ epochs and prefetching
    def on_epoch_begin(self):
        self._epoch = self._next_epoch
        self._next_epoch += 1
        self._placement = self._resolve_placement()
        self._start_worker()

    def on_epoch_end(self):
        self._stop_worker()

    def _start_worker(self) -> None:
        self._stop_worker()
        if not self._prefetch:
            return
        self._stop = threading.Event()
        self._queue = q = queue.Queue(maxsize=self._prefetch)
        self._expected = 0
        stop, epoch, placement = self._stop, self._epoch, self._placement

        def produce():
            for i in range(len(self.plan)):
                try:
                    item: Any = self._build(i, epoch, placement)
                except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
                    item = exc
                waited = 0.0
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:  # an epoch abandoned mid-way (interrupt) is never drained:
                        waited += 0.1  # give up after a while; the consumer then builds batches itself
                        if waited > _ABANDONED_SECONDS:
                            return
                if stop.is_set() or isinstance(item, BaseException):
                    return

        self._worker = threading.Thread(target=produce, name="virion-prefetch", daemon=True)
        self._worker.start()

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._stop.set()
            self._worker.join()
        self._worker = None
        self._queue = None


class NumpyPredictBatches(keras.utils.PyDataset):
    """Float32 (B, H, W, 3) 0..255 batches of uint8 (N, H, W[, 1|3]) images, in order, no labels.

    The NumPy twin of `pipeline.make_predict_dataset`, for inference without TensorFlow.
    """

    def __init__(self, images, batch_size: int):
        super().__init__(workers=1, use_multiprocessing=False)
        images = np.asarray(images)
        ok = images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (1, 3))
        if images.dtype != np.uint8 or not ok:
            raise VirionError(
                f"images to predict must be uint8 (N, H, W), (N, H, W, 1) or (N, H, W, 3), "
                f"got {images.dtype} {images.shape}: decode with virion.data.decode"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise VirionError(f"batch size {batch_size!r} is invalid: use a positive integer such as 64")
        self.images = images
        self.batch_size = int(batch_size)

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} out of range 0..{len(self) - 1}")
        x = np.asarray(self.images[i * self.batch_size : (i + 1) * self.batch_size], np.float32)
        if x.ndim == 3:
            x = x[..., None]
        return (np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x,)


def make_numpy_dataset(
    arrays: SplitArrays,
    num_classes: int,
    batch_size: int,
    *,
    training: bool,
    augment: AugmentConfig | dict | None = None,
    seed: int | None = 0,
    **kwargs,
) -> NumpyBatches:
    """`pipeline.make_dataset`'s signature and contract, without TensorFlow (see `NumpyBatches`)."""
    return NumpyBatches(arrays, num_classes, batch_size, training=training, augment=augment, seed=seed, **kwargs)


def make_backend_dataset(
    arrays: SplitArrays,
    num_classes: int,
    batch_size: int,
    *,
    training: bool,
    augment: AugmentConfig | dict | None = None,
    seed: int | None = 0,
    first_epoch: int = 0,
):
    """The input pipeline for the loaded backend, one contract: tf.data on TensorFlow (the fastest
    CPU path), this module's NumPy pipeline elsewhere (JAX: no TensorFlow needed).

    `first_epoch` positions a training pipeline at a later epoch (resume); with tf.data the
    caller advances it by iterating. Predictions from a non-training NumPy pipeline may end with
    padding rows on several devices: keep the first `len(arrays.labels)`.
    """
    if keras.backend.backend() == "tensorflow":
        from virion.data.pipeline import make_dataset

        return make_dataset(arrays, num_classes, batch_size, training=training, augment=augment, seed=seed)
    return NumpyBatches(
        arrays, num_classes, batch_size, training=training, augment=augment, seed=seed, first_epoch=first_epoch
    )

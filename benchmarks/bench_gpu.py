"""Training throughput on a GPU: virion's path against the reference pipeline, in the same run.

    KERAS_BACKEND=jax PYTHONPATH=src python benchmarks/bench_gpu.py --out gpu.json

Meant for a lent GPU machine that has Keras 3 on JAX but no TensorFlow (the model code is
backend-agnostic, so the same builders run there). Takes about 5 minutes on one H100.

For each model at 128x128, batch 64:
- virion: decode-once cache (uint8, one channel) in host memory -> our TEMAugment layer on the
  GPU (rotation, shift, flip as one warp) -> widen to 3 channels -> model, mixed bfloat16 and
  XLA (`jit_compile`); the transfer models' bases are frozen as in transfer learning;
- reference: the Keras 2 `ImageDataGenerator(rescale=1/255, rotation_range=20,
  width_shift_range=0.2, height_shift_range=0.2, horizontal_flip=True, validation_split=0.2)
  .flow_from_directory(...)` (Keras 3 keeps its code in keras.src.legacy, scipy underneath)
  re-decoding the TIFF folder every epoch, feeding the same architecture in float32.
Both are timed end to end per epoch after a warm-up epoch (compilation excluded). It also gives
the training FLOPs per image (benchmarks/flops.py) and ResNet-50's fraction of the GPU's peak.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

H100_BF16_DENSE_PEAK = 989e12  # NVIDIA's H100 SXM dense bf16 tensor-core figure (FLOP/s)
H100_MEASURED_MATMUL = 790e12  # an 8192^3 bf16 matmul measured on this workplace's H100s


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=400, help="synthetic images per class (all splits)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per measurement (first one is warm-up)")
    p.add_argument("--ref-steps", type=int, default=15, help="reference pipeline steps per epoch")
    p.add_argument("--models", nargs="+", default=["resnet50", "xception", "densenet121"])
    p.add_argument(
        "--float32-models",
        nargs="*",
        default=["resnet50"],
        help="also time these models in plain float32 (default: resnet50)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--extra-batch", type=int, default=256, help="also time ResNet-50 at this batch (0: off)")
    p.add_argument("--data", default=None, help="existing synthetic folder (default: a new temp one)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


class EpochClock:
    """Wall time of each epoch, to drop the warm-up (compile) epoch."""

    def __init__(self):
        import keras

        class _CB(keras.callbacks.Callback):
            def on_epoch_begin(cb, epoch, logs=None):
                cb.t0 = time.perf_counter()

            def on_epoch_end(cb, epoch, logs=None):
                self.times.append(time.perf_counter() - cb.t0)

        self.times: list[float] = []
        self.callback = _CB()


def virion_model(name, num_classes, size, freeze_base):
    """The model wrapped with on-GPU augmentation: uint8 (H, W, 1) in, softmax out."""
    import keras

    from virion.data.augment import AugmentConfig, TEMAugment
    from virion.models.registry import build_model

    model = build_model(name, num_classes, size, weights="none")
    if freeze_base and name != "resnet50":
        from virion.models.transfer import base_layers

        for layer in base_layers(model):
            layer.trainable = False
    gray = keras.Input((size, size, 1), dtype="uint8")
    x = TEMAugment(AugmentConfig(), seed=0)(gray, training=True)
    x = keras.layers.Concatenate()([x, x, x])
    return keras.Model(gray, model(x)), model


def time_fit(model, x, y, batch, epochs, steps=None):
    import keras

    clock = EpochClock()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"], jit_compile=True
    )
    if steps is None:
        model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, callbacks=[clock.callback])
        images = len(x)
    else:
        model.fit(x, epochs=epochs, steps_per_epoch=steps, verbose=0, callbacks=[clock.callback])
        images = steps * batch
    timed = clock.times[1:] or clock.times
    return images * len(timed) / sum(timed), clock.times


def main(argv=None) -> int:
    args = parse_args(argv)
    import keras
    from flops import training_flops

    from virion.data.cache import load_split_arrays
    from virion.data.decode import DecodeSettings
    from virion.data.layout import load_dataset
    from virion.data.synth import generate_dataset

    results = {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "batch_size": args.batch_size,
        "input_size": args.input_size,
        "models": {},
    }
    try:
        import jax

        results["device"] = str(jax.devices()[0].device_kind)
    except Exception:  # noqa: BLE001 - other backends
        results["device"] = "unknown"
    print(json.dumps({k: v for k, v in results.items() if k != "models"}), flush=True)

    data = Path(args.data) if args.data else Path(tempfile.mkdtemp()) / "synth"
    if not (data / "train").is_dir():
        t0 = time.perf_counter()
        generate_dataset(
            data,
            per_class=args.per_class,
            size=256,
            fmt="tif",
            bit_depth=16,
            seed=0,
            progress=False,
            workers=os.cpu_count() or 1,
        )
        results["synth_seconds"] = time.perf_counter() - t0
    dataset = load_dataset(data)
    t0 = time.perf_counter()
    train = load_split_arrays(dataset.splits["train"], DecodeSettings(size=args.input_size), progress=False)
    results["cache_build_seconds"] = time.perf_counter() - t0
    results["train_images"] = len(train.labels)
    n_cls = len(dataset.class_names)
    x = np.asarray(train.images)[..., None]
    y = keras.utils.to_categorical(train.labels, n_cls).astype("float32")
    print(f"data: {len(x)} training images, cache built in {results['cache_build_seconds']:.1f} s", flush=True)

    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    for name in args.models:
        entry = results["models"].setdefault(name, {})
        # virion: mixed bfloat16 + XLA
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        wrapped, inner = virion_model(name, n_cls, args.input_size, freeze_base=True)
        flops = training_flops(inner)
        entry["train_gflops_per_image"] = flops / 1e9
        ips, times = time_fit(wrapped, x, y, args.batch_size, args.epochs)
        entry["virion_images_per_s"] = ips
        entry["virion_epoch_seconds"] = times
        entry["virion_tflops"] = ips * flops / 1e12
        print(f"{name}: virion {ips:.0f} images/s (bf16, XLA), epochs {np.round(times, 2).tolist()}", flush=True)
        keras.mixed_precision.set_global_policy("float32")
        if name in args.float32_models:  # separates the precision effect from the pipeline's
            wrapped, _ = virion_model(name, n_cls, args.input_size, freeze_base=True)
            ips32, _ = time_fit(wrapped, x, y, args.batch_size, args.epochs)
            entry["virion_float32_images_per_s"] = ips32
            print(f"{name}: virion float32 {ips32:.0f} images/s", flush=True)
        # reference
        gen = ImageDataGenerator(
            rescale=1 / 255,
            rotation_range=20,
            width_shift_range=0.2,
            height_shift_range=0.2,
            horizontal_flip=True,
            validation_split=0.2,
        )
        it = gen.flow_from_directory(
            str(data / "train"),
            target_size=(args.input_size,) * 2,
            batch_size=args.batch_size,
            class_mode="categorical",
            subset="training",
        )
        from virion.models.registry import build_model

        ref_model = build_model(name, n_cls, args.input_size, weights="none")
        if name != "resnet50":
            from virion.models.transfer import base_layers

            for layer in base_layers(ref_model):
                layer.trainable = False
        steps = min(args.ref_steps, len(it))
        ref_ips, ref_times = time_fit(ref_model, it, None, args.batch_size, args.epochs, steps=steps)
        entry["reference_images_per_s"] = ref_ips
        entry["reference_epoch_seconds"] = ref_times
        entry["speedup"] = ips / ref_ips
        print(f"{name}: reference {ref_ips:.0f} images/s -> virion/reference {ips / ref_ips:.1f}x", flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2))

    if args.extra_batch and "resnet50" in args.models:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        wrapped, inner = virion_model("resnet50", n_cls, args.input_size, freeze_base=False)
        reps = max(1, args.extra_batch * 8 // len(x))
        xb = np.concatenate([x] * reps)
        yb = np.concatenate([y] * reps)
        ips, _ = time_fit(wrapped, xb, yb, args.extra_batch, args.epochs)
        flops = training_flops(inner)
        results["resnet50_large_batch"] = {"batch": args.extra_batch, "images_per_s": ips, "tflops": ips * flops / 1e12}
        print(f"resnet50 batch {args.extra_batch}: {ips:.0f} images/s", flush=True)
    for key, peak in (("of_dense_bf16_peak", H100_BF16_DENSE_PEAK), ("of_measured_matmul", H100_MEASURED_MATMUL)):
        r = results["models"].get("resnet50")
        if r:
            r[f"fraction_{key}"] = r["virion_tflops"] * 1e12 / peak
        if "resnet50_large_batch" in results:
            results["resnet50_large_batch"][f"fraction_{key}"] = results["resnet50_large_batch"]["tflops"] * 1e12 / peak
    print(json.dumps(results, indent=2), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

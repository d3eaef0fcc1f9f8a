"""End-to-end training speed of virion vs the reference pipeline, and the `--feature-cache` regime.

Measures, in one process on the same TIFF folder (made with virion's synthetic generator):

1. throughput: training images/s of each model at 128x128, batch 64, end to end from the files:
   virion (decode once into the cache, tf.data + in-graph augmentation, model.fit) side by side
   with the reference pipeline (tf_keras ImageDataGenerator.flow_from_directory, re-decoding and
   augmenting every epoch, feeding the SAME Keras 3 model; its 0..1 batches are scaled back to
   0..255 because our models scale in-graph). Also FLOPs per image (conv + dense multiply-adds,
   benchmarks/flops.py) and the fraction of the CPU's peak: cores x GHz x FLOPs/cycle (FP32 FMA:
   `--flops-per-cycle`, default 64 = two 512-bit FMA pipes x 16 lanes x 2; use 32 for CPUs that
   run AVX-512 as two 256-bit halves, e.g. AMD Zen 4). The assumed peak is printed.
2. feature cache (frozen-base models): total time of a `--epochs`-epoch training with the base
   run once per image (K=0) or per each of K cached augmented views, against the reference
   regime for the same epochs, with the validation accuracy of both side by side.

Reference run (on a quiet machine; tens of minutes on 2 cores):
    .venv/bin/python benchmarks/bench_train.py --per-class 100 --steps 10 --epochs 20 --out bench_train.json
Smoke test (about a minute):
    .venv/bin/python benchmarks/bench_train.py --per-class 4 --size 32 --batch 8 --steps 2 --warmup 1 \
        --epochs 2 --models densenet121 --feature-cache 0 1 --weights none
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data",
        type=Path,
        help="TIFF dataset with train/validation/test folders "
        "(default: generate one with virion synth under --workdir)",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "virion-bench-train",
        help="where the generated dataset is kept between runs",
    )
    p.add_argument("--per-class", type=int, default=100, help="images per class for the generated dataset")
    p.add_argument("--models", nargs="+", default=["resnet50", "xception", "densenet121"], help="models to time")
    p.add_argument("--size", type=int, default=128, help="input size (reference: 128)")
    p.add_argument("--batch", type=int, default=64, help="batch size (reference: 64)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per model and pipeline")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (graph tracing)")
    p.add_argument("--epochs", type=int, default=20, help="epochs of the feature-cache vs reference comparison")
    p.add_argument(
        "--feature-cache",
        type=int,
        nargs="*",
        default=[0, 2],
        metavar="K",
        help="feature-cache regimes to compare (0 = no augmentation, K = K augmented views)",
    )
    p.add_argument(
        "--weights",
        default="auto",
        help="transfer bases: imagenet, none, PATH or auto (imagenet when in the Keras cache, else none)",
    )
    p.add_argument("--skip-reference", action="store_true", help="only time virion")
    p.add_argument("--skip-throughput", action="store_true", help="only run the feature-cache comparison")
    p.add_argument("--flops-per-cycle", type=float, default=64.0, help="FP32 FLOPs per cycle per core")
    p.add_argument("--ghz", type=float, help="core clock for the peak (default: from /proc/cpuinfo)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- machine
def cpu_peak(args) -> dict:
    """Peak FP32 FLOP/s assumed for the fraction-of-peak figures (stated, not guessed silently)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model, mhz = "unknown", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("cpu MHz"):
                mhz.append(float(line.split(":", 1)[1]))
    except OSError:
        pass
    ghz = args.ghz or (max(mhz) / 1000 if mhz else 2.0)
    peak = cores * ghz * 1e9 * args.flops_per_cycle
    return {
        "cpu": model,
        "cores": cores,
        "ghz": ghz,
        "flops_per_cycle": args.flops_per_cycle,
        "peak_gflops": peak / 1e9,
    }


def ensure_data(args) -> Path:
    if args.data:
        return args.data
    from virion.data.synth import generate_dataset

    out = args.workdir / f"synth-tif-{args.per_class}"
    if not (out / "train").is_dir():
        generate_dataset(out, per_class=args.per_class, seed=0, fmt="tif", overwrite=True)
    return out


def resolve_weights(args, name) -> str:
    if args.weights != "auto" or name == "resnet50":
        return "none" if name == "resnet50" else args.weights
    from virion.models.weights import imagenet_available

    return "imagenet" if imagenet_available(name) else "none"


# --------------------------------------------------------------------------- timing
class BatchClock:
    """Wall time at the end of each training batch (images/s after the warm-up steps)."""

    def __init__(self):
        self.times = []

    def __call__(self, batch, logs=None):
        self.times.append(time.perf_counter())

    def rate(self, warmup: int, batch: int) -> float:
        t = self.times[max(0, warmup - 1) :]
        return (len(t) - 1) * batch / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else float("nan")


def calibrate_batch_norm(model, layers, images) -> None:
    """Give a random base's batch norm the statistics of real images (momentum 0, one pass).

    A random Xception/DenseNet with untouched moving statistics (mean 0, variance 1) blows its
    activations up layer after layer, so a frozen random base gives constant features and every
    regime sits at chance. With calibrated statistics the random features carry information, and
    the accuracy of two regimes can be compared on equal footing (not what ImageNet would give).
    """
    import keras

    bns = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [(layer.trainable, layer.momentum) for layer in bns]
    for layer in bns:
        layer.trainable, layer.momentum = True, 0.0
    model(images, training=True)  # each BN sees the batch already normalized by those before it
    for layer, (trainable, momentum) in zip(bns, saved):
        layer.trainable, layer.momentum = trainable, momentum


def fresh_model(name, num_classes, args, calibration=None):
    import keras

    from virion.models.registry import build_model

    keras.utils.set_random_seed(0)
    weights = resolve_weights(args, name)
    model = build_model(name, num_classes, args.size, weights)
    if name != "resnet50" and weights == "none":
        # Offline there are no ImageNet weights; a frozen random base costs the same arithmetic as
        # a frozen pretrained one, so speed figures stay those of transfer learning.
        from virion.models.transfer import base_layers

        if calibration is not None:
            calibrate_batch_norm(model, base_layers(model), calibration)
        for layer in base_layers(model):
            layer.trainable = False
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def reference_batches(data: Path, args, subset="training"):
    """The reference iterator, scaled back to 0..255 for our in-graph-scaling models."""
    from reference_pipeline import reference_iterator

    it = reference_iterator(data, subset=subset, target_size=(args.size, args.size), batch_size=args.batch, seed=0)

    def gen():
        while True:
            x, y = next(it)
            yield x * 255.0, y

    return it, gen()


def time_fit(model, batches, args) -> float:
    import keras

    clock = BatchClock()
    model.fit(
        batches,
        steps_per_epoch=args.warmup + args.steps,
        epochs=1,
        verbose=0,
        callbacks=[keras.callbacks.LambdaCallback(on_train_batch_end=clock)],
    )
    return clock.rate(args.warmup, args.batch)


def load_arrays(data: Path, args):
    from virion.data.cache import load_split_arrays
    from virion.data.decode import DecodeSettings
    from virion.data.layout import load_dataset

    dataset = load_dataset(data)
    settings = DecodeSettings(size=args.size)
    start = time.perf_counter()
    arrays = {s: load_split_arrays(dataset.splits[s], settings, progress=False) for s in ("train", "validation")}
    return dataset, arrays, time.perf_counter() - start


def throughput(data, arrays, num_classes, args, peak) -> list[dict]:
    import tensorflow as tf
    from flops import training_flops

    from virion.data.augment import AugmentConfig
    from virion.data.pipeline import make_dataset

    rows = []
    for name in args.models:
        model = fresh_model(name, num_classes, args)
        ds = make_dataset(arrays["train"], num_classes, args.batch, training=True, augment=AugmentConfig()).repeat()
        ours = time_fit(model, ds, args)
        # The same model on one batch held in memory: the step time with no input pipeline at all.
        first = next(iter(make_dataset(arrays["train"], num_classes, args.batch, training=False)))
        model = fresh_model(name, num_classes, args)
        compute_only = time_fit(model, tf.data.Dataset.from_tensors(first).repeat(), args)
        row = {
            "model": name,
            "virion_images_per_s": ours,
            "compute_only_images_per_s": compute_only,
            "pipeline_overhead": 1.0 - ours / compute_only,
            "train_gflops_per_image": training_flops(model) / 1e9,
        }
        row["virion_fraction_of_peak"] = ours * row["train_gflops_per_image"] / peak["peak_gflops"]
        if not args.skip_reference:
            model = fresh_model(name, num_classes, args)
            _, batches = reference_batches(data, args)
            row["reference_images_per_s"] = time_fit(model, batches, args)
            row["speedup"] = ours / row["reference_images_per_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _val_inputs(arrays):
    import numpy as np

    return np.repeat(arrays["validation"].images[..., None], 3, axis=-1).astype("float32"), arrays["validation"].labels


def feature_cache_vs_reference(data, arrays, num_classes, args) -> list[dict]:
    import keras
    import numpy as np

    from virion.data.augment import AugmentConfig
    from virion.training.feature_cache import FeatureViews, extract_features, split_model

    x_val, y_val = _val_inputs(arrays)
    # The same 128 training images calibrate the random base of every regime (see calibrate_batch_norm).
    calibration = np.repeat(arrays["train"].images[:128, ..., None], 3, axis=-1).astype("float32")
    rows = []
    for name in [m for m in args.models if m != "resnet50"]:
        for k in args.feature_cache:
            model = fresh_model(name, num_classes, args, calibration)
            start = time.perf_counter()
            base, head = split_model(model)
            head.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
            feats, labels = extract_features(
                base, arrays["train"], num_classes, args.batch, views=k, augment=AugmentConfig(), seed=0
            )
            head.fit(FeatureViews(feats, labels, num_classes, args.batch), epochs=args.epochs, verbose=0)
            seconds = time.perf_counter() - start
            acc = float(np.mean(np.argmax(model.predict(x_val, batch_size=args.batch, verbose=0), -1) == y_val))
            row = {
                "model": name,
                "regime": f"feature-cache K={k}",
                "epochs": args.epochs,
                "seconds": seconds,
                "val_accuracy": acc,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        # virion without the feature cache: the base runs on every augmented batch of every epoch.
        # The fair accuracy baseline for the cache (the reference trains on its own clipped pixels).
        from virion.data.pipeline import make_dataset

        model = fresh_model(name, num_classes, args, calibration)
        start = time.perf_counter()
        model.fit(
            make_dataset(arrays["train"], num_classes, args.batch, training=True, augment=AugmentConfig()),
            epochs=args.epochs,
            verbose=0,
        )
        seconds = time.perf_counter() - start
        acc = float(np.mean(np.argmax(model.predict(x_val, batch_size=args.batch, verbose=0), -1) == y_val))
        row = {
            "model": name,
            "regime": "virion per-step (no feature cache)",
            "epochs": args.epochs,
            "seconds": seconds,
            "val_accuracy": acc,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        if not args.skip_reference:
            model = fresh_model(name, num_classes, args, calibration)
            it, batches = reference_batches(data, args)
            start = time.perf_counter()
            model.fit(batches, steps_per_epoch=len(it), epochs=args.epochs, verbose=0)
            seconds = time.perf_counter() - start
            acc = float(np.mean(np.argmax(model.predict(x_val, batch_size=args.batch, verbose=0), -1) == y_val))
            row = {
                "model": name,
                "regime": "reference (ImageDataGenerator)",
                "epochs": args.epochs,
                "seconds": seconds,
                "val_accuracy": acc,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            for r in rows:
                if r["model"] == name and not r["regime"].startswith("reference"):
                    r["speedup_vs_reference"] = seconds / r["seconds"]
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    peak = cpu_peak(args)
    print(
        f"assumed peak: {peak['cores']} cores x {peak['ghz']:.2f} GHz x {peak['flops_per_cycle']:.0f} FP32 "
        f"FLOPs/cycle = {peak['peak_gflops']:.0f} GFLOP/s ({peak['cpu']})",
        flush=True,
    )
    data = ensure_data(args)
    dataset, arrays, decode_s = load_arrays(data, args)
    num_classes = len(dataset.class_names)
    print(
        f"data: {data} ({len(arrays['train'].labels)} train, {len(arrays['validation'].labels)} validation, "
        f"{num_classes} classes; decode/cache {decode_s:.1f} s)",
        flush=True,
    )
    results = {"peak": peak, "data": str(data), "size": args.size, "batch": args.batch, "decode_seconds": decode_s}
    if not args.skip_throughput:
        results["throughput"] = throughput(data, arrays, num_classes, args, peak)
    if args.feature_cache:
        results["feature_cache"] = feature_cache_vs_reference(data, arrays, num_classes, args)

    print("\nmodel         virion img/s  reference img/s  speedup  GFLOP/img  % of peak")
    for r in results.get("throughput", []):
        print(
            f"{r['model']:<13} {r['virion_images_per_s']:>12.1f}"
            f"  {r.get('reference_images_per_s', float('nan')):>15.1f}"
            f"  {r.get('speedup', float('nan')):>7.2f}  {r['train_gflops_per_image']:>9.2f}"
            f"  {100 * r['virion_fraction_of_peak']:>8.1f}"
        )
    if results.get("feature_cache"):
        print(f"\n{args.epochs}-epoch training: model, regime, seconds, val accuracy, speedup vs reference")
        for r in results["feature_cache"]:
            print(
                f"  {r['model']:<12} {r['regime']:<32} {r['seconds']:>8.1f} s  {r['val_accuracy']:.3f}"
                f"  {r.get('speedup_vs_reference', float('nan')):.1f}x"
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Images per second delivered by virion's training pipeline vs. the reference's, in one run.

On a folder of 256×256 16-bit TIFFs in the train/validation/test layout (made with
`virion.data.synth.generate_dataset(..., fmt="tif", bit_depth=16)`, or random 16-bit TIFFs when
the generator is not installed), at 128×128 and batch 64 with the reference augmentation
(rotation ±20°, shift 20%, horizontal flip), this measures:

  cold       load_dataset + decode-cache build (fresh cache folder) + make_dataset + one epoch
  warm       cache reused: steady-state epochs of make_dataset(training=True) after a warm-up
             epoch (the setup time — cache reopen, dataset build, first epoch — printed apart)
  reference  Keras 2 ImageDataGenerator(...).flow_from_directory(...) (benchmarks/
             reference_pipeline.py), iterated over as many images as the warm run delivered

and prints the three figures and the ratios warm/reference and cold/reference, plus the CPU
time per image of each (process CPU seconds, all threads), which stays meaningful on a busy
machine. Target (issue 2): warm ≥ 10× reference on the 2-core project machine.
`--profile-layer` adds a micro-benchmark of the augmentation alone on (64, 128, 128, 1) batches
(bilinear vs. nearest, our one-pass
TEMAugment vs. the stock Keras RandomRotation + RandomTranslation + RandomFlip on 3 channels).

Run (about 2 minutes on 2 quiet cores the first time, most of it synthesizing 2,800 TIFFs into
bench_data/; under a minute when the data is reused):
    .venv/bin/python benchmarks/bench_pipeline.py --images-per-class 200 --epochs 5 --profile-layer
Smoke test (seconds):
    .venv/bin/python benchmarks/bench_pipeline.py --images-per-class 3 --epochs 1 --data /tmp/bp-smoke
What it should show: the reference below 1,000 images/s (measured ~1,700 us of CPU per image,
one thread); virion warm in the several thousands (measured ~220-290 us of CPU per image over
both cores, of which the bilinear warp is ~175 us and widening to 3 float32 channels ~50 us),
i.e. about 6x less CPU per image and 2 cores instead of 1: ≈ 10-12x on a quiet 2-core machine.
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

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for reference_pipeline

SIZE, BATCH = 128, 64
FALLBACK_CLASSES = (
    "Adenovirus",
    "Astrovirus",
    "CCHF",
    "Cowpox",
    "Ebola",
    "Influenza",
    "Lassa",
    "Marburg",
    "Nipah virus",
    "Norovirus",
    "Orf",
    "Papilloma",
    "Rift Valley",
    "Rotavirus",
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--images-per-class",
        type=int,
        default=200,
        help="images per class to generate, all splits together, 60%% of them train (default 200)",
    )
    p.add_argument("--epochs", type=int, default=5, help="warm epochs to time after the warm-up epoch (default 5)")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="dataset folder to use, generated there if missing "
        "(default bench_data/pipeline-tif16-<images-per-class> in the checkout)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for data generation and shuffling (default 0)")
    p.add_argument(
        "--profile-layer", action="store_true", help="also time the augmentation alone on (64, 128, 128, 1) batches"
    )
    p.add_argument("--skip-reference", action="store_true", help="do not time the Keras 2 reference pipeline")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.images_per_class < 1 or args.epochs < 1:
        p.error("--images-per-class and --epochs must be at least 1")
    return args


def ensure_data(folder: Path, per_class: int, seed: int) -> tuple[Path, str]:
    """Reuse `folder` if a previous run wrote it or it already holds a dataset (a train/ folder),
    else write 256×256 16-bit TIFFs there (`per_class` in all, split 60/20/20 like virion synth)."""
    done = folder / ".bench_complete"
    if done.exists():
        return folder, done.read_text().strip()
    if (folder / "train").is_dir():
        return folder, "existing dataset"
    try:
        from virion.data.synth import generate_dataset
    except ImportError:
        generate_dataset = None
    if generate_dataset is not None:
        generate_dataset(
            folder, per_class=per_class, seed=seed, size=256, fmt="tif", bit_depth=16, workers=os.cpu_count() or 1
        )
        source = "virion synth, 16-bit TIFF"
    else:
        import tifffile

        rng = np.random.default_rng(seed)
        train = max(1, round(per_class * 0.6))
        counts = {
            "train": train,
            "validation": max(1, (per_class - train) // 2),
            "test": max(1, per_class - train - (per_class - train) // 2),
        }
        for split, n in counts.items():
            for name in FALLBACK_CLASSES:
                cls_dir = folder / split / name
                cls_dir.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    img = rng.normal(30000, 6000, (256, 256)).clip(0, 65535).astype(np.uint16)
                    tifffile.imwrite(cls_dir / f"{i:05d}.tif", img)
        source = "random 16-bit TIFFs (virion.data.synth not available)"
    done.write_text(source + "\n")
    return folder, source


def consume(ds) -> int:
    n = 0
    for x, _ in ds:
        n += int(x.shape[0])
    return n


def bench_ours(data: Path, epochs: int, seed: int) -> dict:
    from virion.data.cache import load_split_arrays
    from virion.data.decode import DecodeSettings
    from virion.data.layout import load_dataset
    from virion.data.pipeline import make_dataset

    settings = DecodeSettings(size=SIZE)
    with tempfile.TemporaryDirectory(prefix="virion-bench-cache-") as cache_dir:
        t0 = time.perf_counter()
        dataset = load_dataset(data)
        train = dataset.splits["train"]
        arrays = load_split_arrays(train, settings, cache_dir=Path(cache_dir), progress=False)
        build_s = time.perf_counter() - t0
        n = consume(make_dataset(arrays, dataset.num_classes, BATCH, training=True, seed=seed))
        cold_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        arrays = load_split_arrays(train, settings, cache_dir=Path(cache_dir), progress=False)
        pipe = make_dataset(arrays, dataset.num_classes, BATCH, training=True, seed=seed)
        consume(pipe)  # warm-up epoch: tracing, thread pools, autotune
        setup_s = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        total = sum(consume(pipe) for _ in range(epochs))
        warm_s, warm_cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "train_images": n,
        "cold_images_per_s": n / cold_s,
        "cold_s": cold_s,
        "cache_build_s": build_s,
        "warm_setup_s": setup_s,
        "warm_images": total,
        "warm_images_per_s": total / warm_s,
        "warm_s": warm_s,
        "warm_cpu_us_per_image": 1e6 * warm_cpu / total,
    }


def bench_reference(data: Path, images: int, seed: int) -> dict:
    from reference_pipeline import reference_iterator

    it = reference_iterator(data, target_size=(SIZE, SIZE), batch_size=BATCH, seed=seed)
    t0, c0 = time.perf_counter(), time.process_time()
    seen = 0
    while seen < images:
        x, _ = next(it)
        seen += len(x)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "reference_images": seen,
        "reference_images_per_s": seen / elapsed,
        "reference_s": elapsed,
        "reference_cpu_us_per_image": 1e6 * cpu / seen,
    }


def profile_layer(rounds: int = 3, steps: int = 8) -> dict:
    """Augmentation alone, interleaved so a noisy machine hits every variant alike."""
    import keras
    import tensorflow as tf

    from virion.data.augment import AugmentConfig, TEMAugment

    gray = tf.constant(np.random.default_rng(0).integers(0, 256, (BATCH, SIZE, SIZE, 1)).astype("float32"))
    rgb = tf.repeat(gray, 3, axis=-1)
    stock = keras.Sequential(
        [
            keras.layers.RandomRotation(20 / 360, fill_mode="nearest"),
            keras.layers.RandomTranslation(0.2, 0.2, fill_mode="nearest"),
            keras.layers.RandomFlip("horizontal"),
        ]
    )
    variants = {
        "TEMAugment bilinear, 1 channel": (TEMAugment(AugmentConfig(), seed=0), gray),
        "TEMAugment nearest, 1 channel": (TEMAugment(AugmentConfig(interpolation="nearest"), seed=0), gray),
        "stock Keras 3 layers, 3 channels": (stock, rgb),
    }
    fns = {
        name: (tf.function(lambda x, layer=layer: layer(x, training=True)), x) for name, (layer, x) in variants.items()
    }
    for fn, x in fns.values():
        fn(x).numpy()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, (fn, x) in fns.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                fn(x).numpy()
            times[name].append(time.perf_counter() - t0)
    return {name: BATCH * steps / min(ts) for name, ts in times.items()}


def main(argv=None) -> int:
    args = parse_args(argv)
    root = Path(__file__).resolve().parent.parent
    folder = args.data or root / "bench_data" / f"pipeline-tif16-{args.images_per_class}"
    data, source = ensure_data(folder, args.images_per_class, args.seed)
    print(f"data: {data} ({source})")

    results = {"cpus": os.cpu_count(), "data": str(data), "source": source}
    results.update(bench_ours(data, args.epochs, args.seed))
    print(
        f"virion cold : {results['cold_images_per_s']:9.0f} images/s  ({results['train_images']} images, "
        f"{results['cold_s']:.1f} s, of which {results['cache_build_s']:.1f} s listing files and building "
        f"the decode cache)"
    )
    print(
        f"virion warm : {results['warm_images_per_s']:9.0f} images/s  ({results['warm_images']} images over "
        f"{args.epochs} epoch(s); setup + warm-up epoch {results['warm_setup_s']:.1f} s; "
        f"{results['warm_cpu_us_per_image']:.0f} us CPU per image)"
    )
    if not args.skip_reference:
        results.update(bench_reference(data, results["warm_images"], args.seed))
        ref = results["reference_images_per_s"]
        print(
            f"reference   : {ref:9.0f} images/s  ({results['reference_images']} images, ImageDataGenerator; "
            f"{results['reference_cpu_us_per_image']:.0f} us CPU per image)"
        )
        results["warm_over_reference"] = results["warm_images_per_s"] / ref
        results["cold_over_reference"] = results["cold_images_per_s"] / ref
        print(
            f"ratio       : warm {results['warm_over_reference']:.1f}x, cold {results['cold_over_reference']:.1f}x "
            f"the reference (target: warm >= 10x)"
        )
    if args.profile_layer:
        results["layer_images_per_s"] = profile_layer()
        for name, rate in results["layer_images_per_s"].items():
            print(f"layer only  : {rate:9.0f} images/s  {name}, batches of {BATCH}x{SIZE}x{SIZE}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""GPU training speed through `virion train`'s own code, against the reference pipeline, in one run.

    python benchmarks/bench_gpu_train.py --out benchmarks/results/gpu_train_h100.json   # on a GPU
    python benchmarks/bench_gpu_train.py --smoke                                        # any CPU, tiny

Runs Keras on JAX (no TensorFlow needed). Per model (ResNet-50, Xception, DenseNet121) at 128 px:
- end to end: `virion.training.trainer.train_run` on a synthetic TEM folder whose training split
  has the public dataset's size (5,740 images), per batch size (64, 256) and precision (mixed
  bfloat16, float32): wall time of each epoch (validation, macro-F1 and the per-epoch checkpoint
  included), the first epoch (XLA compilation) left out of the rates;
- input pipeline check: the same compiled model trained on virion's NumPy pipeline (decode-once
  cache, on-device augmentation) and on ONE cached device batch repeated; the step times should
  agree within 5% if the pipeline is never the bottleneck;
- FLOP utilisation: training FLOPs per image (benchmarks/flops.py) x images/s over the H100's
  dense bfloat16 peak (989 TFLOP/s);
- reference: the same architecture in float32 fed by Keras' ImageDataGenerator (re-decoding the
  files every epoch, scipy augmentation; Keras 3 keeps its code in keras.src.legacy).
Results are written after every measurement, so a run cut short still leaves its numbers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if importlib.util.find_spec("virion") is None:  # a checkout without `pip install -e .` (the lent GPU box)
    sys.path.insert(0, str(HERE.parent / "src"))

H100_BF16_DENSE_PEAK = 989e12  # NVIDIA H100 SXM, dense bfloat16 tensor-core FLOP/s
PUBLIC_TRAIN_IMAGES = 5740  # training images of the public TEM virus dataset


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet50", "xception", "densenet121"])
    p.add_argument("--batches", nargs="+", type=int, default=[64, 256])
    p.add_argument("--precisions", nargs="+", default=["bfloat16", "float32"], choices=["bfloat16", "float32"])
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument(
        "--train-images",
        type=int,
        default=PUBLIC_TRAIN_IMAGES,
        help="training images of the synthetic folder (default: the public dataset's 5,740)",
    )
    p.add_argument("--epochs", type=int, default=3, help="epochs per end-to-end run (the first is warm-up)")
    p.add_argument("--step-epochs", type=int, default=3, help="epochs of the real-vs-cached step comparison")
    p.add_argument("--ref-steps", type=int, default=15, help="reference pipeline steps per epoch")
    p.add_argument("--ref-epochs", type=int, default=3)
    p.add_argument("--ref-batch", type=int, default=64, help="the reference's batch size (it trained at 64)")
    p.add_argument("--devices", default="all", help="virion --devices (all or N)")
    p.add_argument("--data", default=None, help="existing synthetic folder (default: generate one)")
    p.add_argument("--work", default=None, help="folder for the data and run folders (default: a temp folder)")
    p.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/gpu_train_<device>.json)")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes so the whole script runs on a CPU in a few minutes (checks it works)",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.models = [m for m in args.models if m == "resnet50"] or ["resnet50"]
        args.precisions = ["float32"]  # XLA's CPU bfloat16 convolutions are emulated: slow, and no news
        args.batches, args.input_size, args.train_images = [8], 32, 48
        args.epochs, args.step_epochs, args.ref_steps, args.ref_epochs, args.ref_batch = 2, 2, 2, 2, 8
    return args


class EpochClock:
    """Wall time of each epoch and of its validation part (the train part is the difference)."""

    def __init__(self):
        import keras

        clock = self

        class _Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                clock._t0 = time.perf_counter()

            def on_test_begin(self, logs=None):
                clock._v0 = time.perf_counter()

            def on_test_end(self, logs=None):
                clock._v1 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                clock.epochs.append(time.perf_counter() - clock._t0)
                if clock._v0 is not None and clock._v1 is not None:
                    clock.validation.append(clock._v1 - clock._v0)
                clock._v0 = clock._v1 = None

        self.epochs: list[float] = []
        self.validation: list[float] = []
        self._t0 = self._v0 = self._v1 = None
        self.callback = _Callback()


def _timed(values: list[float]) -> list[float]:
    return values[1:] if len(values) > 1 else values


def make_data(args, work: Path) -> Path:
    """A synthetic TEM folder with `train_images` training images (16-bit TIFFs, 256 px)."""
    from virion.data.synth import generate_dataset

    if args.data:
        return Path(args.data)
    data = work / "synth"
    if not (data / "train").is_dir():
        per_class = -(-args.train_images * 10 // (14 * 6))  # the writer's default split gives 60% to train
        generate_dataset(
            data,
            per_class=per_class,
            size=256,
            fmt="tif",
            bit_depth=16,
            seed=0,
            progress=False,
            workers=os.cpu_count() or 1,
        )
    return data


def end_to_end(args, data: Path, work: Path, name: str, batch: int, precision: str) -> dict:
    """`virion train` for one model: per-epoch wall times of train_run itself."""
    from virion.training.config import TrainConfig
    from virion.training.trainer import train_run

    run = work / f"run_{name}_{batch}_{precision}"
    config = TrainConfig().merged(
        {
            "data": str(data),
            "models": [name],
            "out": str(run),
            "overwrite": True,
            "epochs": args.epochs,
            "batch_size": batch,
            "input_size": args.input_size,
            "weights": "none",
            "backend": "jax",
            "devices": args.devices,
            "mixed_precision": "bfloat16" if precision == "bfloat16" else False,
        },
        source="bench",
    )
    clock = EpochClock()
    t0 = time.perf_counter()
    result = train_run(config, extra_callbacks=[clock.callback], progress=False)
    total = time.perf_counter() - t0
    model = result.models[name]
    meta = json.loads((model.folder / "metadata.json").read_text())
    n_train = int(meta.get("train_images") or 0) or _count_train(data)
    epochs = _timed(clock.epochs)
    epoch_s = sum(epochs) / len(epochs)
    return {
        "train_images": n_train,
        "epoch_seconds": clock.epochs,
        "validation_seconds": clock.validation,
        "images_per_s_end_to_end": n_train / epoch_s,
        f"epoch_seconds_at_{PUBLIC_TRAIN_IMAGES}": epoch_s * PUBLIC_TRAIN_IMAGES / n_train,
        "trainer_images_per_s": model.images_per_second,
        "run_seconds": total,
        "backend": (meta.get("versions") or {}).get("backend"),
        "devices": args.devices,
    }


def _count_train(data: Path) -> int:
    return sum(1 for p in (data / "train").rglob("*") if p.is_file())


def step_times(args, arrays, num_classes: int, name: str, batch: int, precision: str) -> dict:
    """Train steps on virion's NumPy pipeline vs on one cached device batch, same compiled model."""
    import keras
    import numpy as np
    from flops import training_flops

    from virion.data.numpy_pipeline import NumpyBatches
    from virion.models.registry import build_model, model_info
    from virion.training import distribute

    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    try:
        distribute.configure(args.devices)
        model = build_model(name, num_classes, args.input_size, "none")
        flops = training_flops(model)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss="categorical_crossentropy",
            metrics=["accuracy"],
            jit_compile=True,
        )
        real = NumpyBatches(arrays, num_classes, batch, training=True, seed=0)
        first = real[0]

        class OneBatch(keras.utils.PyDataset):
            def __len__(self):
                return len(real)

            def __getitem__(self, i):
                return first

        out = {"train_gflops_per_image": flops / 1e9, "base_frozen": bool(model_info(name, "none").base_frozen)}
        cached = []
        # cached, real, cached again: the order (warm caches, clocks, a busy host) cannot favour one side
        for label, ds in (("cached_batch", OneBatch()), ("real_data", real), ("cached_batch", OneBatch())):
            clock = EpochClock()
            model.fit(ds, epochs=args.step_epochs, verbose=0, callbacks=[clock.callback])
            epochs = _timed(clock.epochs)
            step = sum(epochs) / len(epochs) / len(real)
            if label == "cached_batch":
                cached.append(step)
                step = sum(cached) / len(cached)
            out[f"{label}_step_ms"] = step * 1e3
            out[f"{label}_images_per_s"] = batch / step
        out["cached_batch_runs_ms"] = [c * 1e3 for c in cached]
        out["real_over_cached"] = out["real_data_step_ms"] / out["cached_batch_step_ms"]
        out["tflops"] = out["real_data_images_per_s"] * flops / 1e12
        out["fraction_of_h100_dense_bf16_peak"] = out["tflops"] * 1e12 / H100_BF16_DENSE_PEAK
        return out
    finally:
        distribute.release()
        keras.mixed_precision.set_global_policy("float32")
        np.random.seed(0)


def reference(args, data: Path, num_classes: int, name: str, batch: int) -> dict:
    """The reference: ImageDataGenerator.flow_from_directory -> the same architecture, float32."""
    import keras
    from keras.src.legacy.preprocessing.image import ImageDataGenerator
    from reference_pipeline import REFERENCE_SETTINGS

    from virion.models.registry import build_model

    it = ImageDataGenerator(**REFERENCE_SETTINGS).flow_from_directory(
        str(data / "train"),
        target_size=(args.input_size,) * 2,
        batch_size=batch,
        class_mode="categorical",
        subset="training",
    )
    model = build_model(name, num_classes, args.input_size, "none")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"], jit_compile=True
    )
    steps = max(1, min(args.ref_steps, len(it)))
    clock = EpochClock()
    model.fit(it, epochs=args.ref_epochs, steps_per_epoch=steps, verbose=0, callbacks=[clock.callback])
    epochs = _timed(clock.epochs)
    return {
        "images_per_s": steps * batch * len(epochs) / sum(epochs),
        "epoch_seconds": clock.epochs,
        "steps_per_epoch": steps,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    from virion.backend import select_backend

    select_backend("jax")
    import jax
    import keras

    work = Path(args.work or tempfile.mkdtemp(prefix="virion-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    # Identical train steps (end-to-end run, step comparison) compile once across the script.
    jax.config.update("jax_compilation_cache_dir", str(work / "jax-cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    os.environ.setdefault("VIRION_CACHE_DIR", str(work / "cache"))
    device = jax.devices()[0]
    kind = str(device.device_kind)
    if args.out:
        out = Path(args.out)
    elif args.smoke:  # a smoke run proves the script works; its numbers are not results
        out = work / "gpu_train_smoke.json"
    else:
        out = HERE / "results" / f"gpu_train_{kind.lower().replace(' ', '_')}.json"
    results = {
        "script": "benchmarks/bench_gpu_train.py",
        "smoke": args.smoke,
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "jax": jax.__version__,
        "device": kind,
        "platform": device.platform,
        "device_count": jax.device_count(),
        "python": platform.python_version(),
        "input_size": args.input_size,
        "settings": vars(args),
        "models": {},
        # float32 convolutions/matmuls may run as TF32 on tensor cores (JAX's default precision)
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
    }

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))

    t0 = time.perf_counter()
    data = make_data(args, work)
    results["data_seconds"] = time.perf_counter() - t0
    from virion.data.cache import load_split_arrays
    from virion.data.decode import DecodeSettings
    from virion.data.layout import load_dataset

    dataset = load_dataset(data)
    arrays = load_split_arrays(dataset.splits["train"], DecodeSettings(size=args.input_size), progress=False)
    num_classes = len(dataset.class_names)
    results["train_images"] = len(arrays.labels)
    print(
        f"{kind}: {len(arrays.labels)} training images, {num_classes} classes, data ready in "
        f"{results['data_seconds']:.0f} s",
        flush=True,
    )
    save()

    for name in args.models:
        entry = results["models"].setdefault(name, {})
        for batch in args.batches:
            for precision in args.precisions:
                key = f"batch{batch}_{precision}"
                entry[key] = {"end_to_end": end_to_end(args, data, work, name, batch, precision)}
                e2e = entry[key]["end_to_end"]
                print(
                    f"{name} {key}: virion train {e2e['images_per_s_end_to_end']:.0f} images/s end to end, "
                    f"epoch of {PUBLIC_TRAIN_IMAGES} images {e2e[f'epoch_seconds_at_{PUBLIC_TRAIN_IMAGES}']:.2f} s",
                    flush=True,
                )
                save()
                entry[key]["steps"] = steps = step_times(args, arrays, num_classes, name, batch, precision)
                print(
                    f"{name} {key}: step {steps['real_data_step_ms']:.1f} ms real data vs "
                    f"{steps['cached_batch_step_ms']:.1f} ms one cached batch "
                    f"(x{steps['real_over_cached']:.3f}), {steps['tflops']:.1f} TFLOP/s = "
                    f"{100 * steps['fraction_of_h100_dense_bf16_peak']:.1f}% of the H100 bf16 peak",
                    flush=True,
                )
                save()
        if not args.skip_reference:
            ref = reference(args, data, num_classes, name, args.ref_batch)
            entry["reference"] = ref
            rates = {
                key: value["end_to_end"]["images_per_s_end_to_end"]
                for key, value in entry.items()
                if isinstance(value, dict) and "end_to_end" in value
            }
            ref["virion_over_reference"] = {key: rate / ref["images_per_s"] for key, rate in rates.items()}
            best = max(rates, key=rates.get)
            print(
                f"{name}: reference {ref['images_per_s']:.0f} images/s (batch {args.ref_batch}) -> virion "
                f"{best} {ref['virion_over_reference'][best]:.1f}x",
                flush=True,
            )
            save()
    results["total_seconds"] = time.perf_counter() - t0
    save()
    print(f"results: {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CPU training speed of the from-scratch ResNet-50: Keras 2 (tf_keras) vs virion, side by side.

Why: the reference stack (Keras 2 via tf_keras, same TensorFlow) trained ResNet-50 faster on the
CPU than Keras 3. This script measures, in one process and interleaved (A, B, C, A, B, C, ...) so
that a noisy shared machine hits every variant alike:

  tf_keras        tf_keras.applications.ResNet50(weights=None) behind a 1/255 Rescaling
  virion-stock    virion's build_resnet50 with keras.layers.BatchNormalization
  virion-fused    virion's build_resnet50 with virion.models.batchnorm.BatchNormalization
  *-bf16          the same under the "mixed_bfloat16" policy (this CPU has AVX512_BF16)

on random data (no input pipeline), model.fit with Adam 1e-3 and categorical cross-entropy.
`--what bn` instead times batch normalization alone (forward + backward, moving-statistics
update) at every ResNet-50 activation shape, weighted by how many BN layers have that shape:
the profile that says how much of a training step BN costs in each implementation.

Run (reference settings; about 3 minutes on 2 quiet cores):
    .venv/bin/python benchmarks/bench_resnet_cpu.py --rounds 3 --warmup 2 --steps 4
    .venv/bin/python benchmarks/bench_resnet_cpu.py --what bn [--bn-training off]
    .venv/bin/python benchmarks/bench_resnet_cpu.py --what adam
Smoke test (seconds):
    .venv/bin/python benchmarks/bench_resnet_cpu.py --size 32 --batch 4 --rounds 1 --warmup 1 \
        --steps 1 --variants tf_keras virion-fused
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

VARIANTS = (
    "tf_keras",
    "virion-stock",
    "virion-fused",
    "tf_keras-bf16",
    "virion-stock-bf16",
    "virion-fused-bf16",
)
DEFAULT_VARIANTS = ("tf_keras", "virion-stock", "virion-fused", "virion-fused-bf16")
NUM_CLASSES = 14


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--what",
        choices=("train", "bn", "adam"),
        default="train",
        help="train: whole training steps; bn: batch normalization alone; "
        "adam: one Adam update of ResNet-50's weights, Keras 3 vs tf_keras",
    )
    p.add_argument(
        "--bn-training",
        choices=("on", "off"),
        default="on",
        help="bn mode: on times forward+backward in training mode; off times the "
        "inference forward (a frozen base, evaluation, prediction)",
    )
    p.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=list(DEFAULT_VARIANTS), help="models to compare (train mode)"
    )
    p.add_argument("--size", type=int, default=128, help="input height and width in pixels")
    p.add_argument("--batch", type=int, default=64, help="batch size")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the variants")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per round and variant")
    p.add_argument("--steps", type=int, default=4, help="timed steps per round and variant")
    p.add_argument(
        "--steps-per-execution", type=int, default=1, help="Keras steps_per_execution for the Keras 3 models"
    )
    p.add_argument(
        "--intra", type=int, default=0, help="tf.config.threading intra-op threads (0: TensorFlow's default)"
    )
    p.add_argument(
        "--inter", type=int, default=0, help="tf.config.threading inter-op threads (0: TensorFlow's default)"
    )
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- models


@contextlib.contextmanager
def _keras3_policy(name):
    import keras

    old = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(old)


def build_virion(size, fused, bf16, steps_per_execution):
    """virion's ResNet-50 with the stock or the fused BN (patched in for the build only)."""
    import keras

    from virion.models import resnet50
    from virion.models.batchnorm import BatchNormalization

    bn_class = BatchNormalization if fused else keras.layers.BatchNormalization
    original = resnet50._bn
    resnet50._bn = lambda name: bn_class(axis=-1, epsilon=resnet50.BN_EPSILON, name=name)
    try:
        with _keras3_policy("mixed_bfloat16" if bf16 else "float32"):
            model = resnet50.build_resnet50(NUM_CLASSES, (size, size, 3))
    finally:
        resnet50._bn = original
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    return model


def build_tf_keras(size, bf16):
    """The reference stack: Keras 2's ResNet50(weights=None), inputs scaled 1/255 in the graph."""
    import tf_keras

    tf_keras.mixed_precision.set_global_policy("mixed_bfloat16" if bf16 else "float32")
    try:
        inputs = tf_keras.Input((size, size, 3))
        x = tf_keras.layers.Rescaling(1.0 / 255)(inputs)
        base = tf_keras.applications.ResNet50(
            weights=None, include_top=False, input_shape=(size, size, 3), input_tensor=x
        )
        x = tf_keras.layers.GlobalAveragePooling2D()(base.output)
        outputs = tf_keras.layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32")(x)
        model = tf_keras.Model(inputs, outputs)
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    model.compile(
        optimizer=tf_keras.optimizers.Adam(1e-3),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def build(variant, args):
    bf16 = variant.endswith("-bf16")
    if variant.startswith("tf_keras"):
        return build_tf_keras(args.size, bf16)
    return build_virion(args.size, "fused" in variant, bf16, args.steps_per_execution)


# --------------------------------------------------------------------------- timing


class _BatchClock:
    """Records the wall time at the end of each training batch (works for Keras 2 and 3)."""

    def __init__(self):
        self.times = []

    def __call__(self, batch, logs=None):
        self.times.append(time.perf_counter())


def time_fit(model, data, args):
    """Images/s over `args.steps` steps after `args.warmup` untimed ones, in one fit call."""
    x, y = data
    clock = _BatchClock()
    if model.__module__.startswith("tf_keras") or type(model).__module__.startswith("tf_keras"):
        import tf_keras

        callback = tf_keras.callbacks.LambdaCallback(on_train_batch_end=clock)
    else:
        import keras

        callback = keras.callbacks.LambdaCallback(on_train_batch_end=clock)
    steps = args.warmup + args.steps
    reps = steps * args.batch // len(x) + 1
    model.fit(
        np.concatenate([x] * reps)[: steps * args.batch],
        np.concatenate([y] * reps)[: steps * args.batch],
        batch_size=args.batch,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[callback],
    )
    # With steps_per_execution > 1 Keras 3 reports once per execution; count images accordingly.
    stamps = clock.times
    per_stamp = steps / len(stamps)
    first = max(0, round(args.warmup / per_stamp) - 1)
    span = stamps[-1] - stamps[first]
    images = (len(stamps) - 1 - first) * per_stamp * args.batch
    return images / span if span > 0 else float("nan")


def run_train(args):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype("float32")
    y = np.eye(NUM_CLASSES, dtype="float32")[rng.integers(0, NUM_CLASSES, args.batch)]
    models = {}
    for v in args.variants:
        t0 = time.perf_counter()
        models[v] = build(v, args)
        print(f"built {v} ({models[v].count_params():,} params) in {time.perf_counter() - t0:.1f}s", flush=True)
    results = {v: [] for v in args.variants}
    for r in range(args.rounds):
        for v in args.variants:
            ips = time_fit(models[v], (x, y), args)
            results[v].append(ips)
            print(f"round {r + 1}/{args.rounds}  {v:<18} {ips:7.2f} images/s", flush=True)
    report(results, args.variants[0], "images/s (higher is better)")
    return results


# --------------------------------------------------------------------------- BN alone


def resnet50_bn_shapes(batch, size):
    """(shape, count) of every BN input in ResNet-50 at this input size (53 layers in all)."""
    s = size // 2  # after the 7x7/2 stem convolution
    shapes = {(batch, s, s, 64): 1}
    s //= 2  # max-pool
    for blocks, filters in ((3, 64), (4, 128), (6, 256), (3, 512)):
        if filters != 64:
            s = max(1, s // 2)
        inner = (batch, s, s, filters)
        outer = (batch, s, s, 4 * filters)
        shapes[inner] = shapes.get(inner, 0) + 2 * blocks
        shapes[outer] = shapes.get(outer, 0) + blocks + 1  # 3_bn of each block + projection
    return shapes


def _bn_step(layer_fn, shape, args):
    """tf.function of one BN forward+backward with gradients for x, gamma and beta."""
    import tensorflow as tf

    x = tf.random.normal(shape, 1.0, 2.0)
    dy = tf.random.normal(shape)
    layer = layer_fn()
    layer(x[:1], training=False)  # build

    @tf.function
    def infer(x):
        return layer(x, training=False)

    if args.bn_training == "off":
        return lambda: infer(x)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * dy)
        return tape.gradient(loss, [x] + list(layer.trainable_weights))

    return lambda: step(x)


def run_bn(args):
    import keras
    import tf_keras

    from virion.models.batchnorm import BatchNormalization

    eps = 1.001e-5
    impls = {
        "tf_keras (fused)": lambda: tf_keras.layers.BatchNormalization(epsilon=eps),
        "keras3 stock": lambda: keras.layers.BatchNormalization(epsilon=eps),
        "virion fused": lambda: BatchNormalization(epsilon=eps),
    }
    shapes = resnet50_bn_shapes(args.batch, args.size)
    totals = {k: [] for k in impls}
    for r in range(args.rounds):
        per_round = dict.fromkeys(impls, 0.0)
        for shape, count in shapes.items():
            for name, make in impls.items():
                step = _bn_step(make, shape, args)
                for _ in range(args.warmup):
                    step()
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step()
                ms = (time.perf_counter() - t0) / args.steps * 1e3
                per_round[name] += ms * count
                if r == 0:
                    print(f"{str(shape):<22} x{count:<2} {name:<18} {ms:8.2f} ms", flush=True)
        for k, v in per_round.items():
            totals[k].append(v)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in per_round.items()))
    what = "forward+backward" if args.bn_training == "on" else "inference forward"
    report(totals, "tf_keras (fused)", f"ms of BN {what} per ResNet-50 step, all 53 layers (lower is better)")
    return totals


# --------------------------------------------------------------------------- Adam alone


def run_adam(args):
    """One Adam update of all ResNet-50 weights: Keras 3 (element-wise ops) vs tf_keras
    (the fused ResourceApplyAdam kernel), in a tf.function like a training step."""
    import keras
    import tensorflow as tf
    import tf_keras

    from virion.models.resnet50 import build_resnet50

    shapes = [tuple(w.shape) for w in build_resnet50(NUM_CLASSES, (32, 32, 3)).trainable_weights]
    grads = [tf.random.normal(s, stddev=1e-3) for s in shapes]

    def keras3():
        variables = [keras.Variable(tf.zeros(s)) for s in shapes]
        opt = keras.optimizers.Adam(1e-3)
        opt.build(variables)
        return tf.function(lambda: opt.apply(grads, variables))

    def tfk():
        variables = [tf.Variable(tf.zeros(s)) for s in shapes]
        opt = tf_keras.optimizers.Adam(1e-3)
        return tf.function(lambda: opt.apply_gradients(zip(grads, variables)))

    steps = {"tf_keras Adam": tfk(), "keras3 Adam": keras3()}
    print(f"{len(shapes)} variables, {sum(int(np.prod(s)) for s in shapes):,} weights")
    totals = {k: [] for k in steps}
    for _ in range(args.rounds):
        for name, fn in steps.items():
            for _ in range(args.warmup):
                fn()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn()
            totals[name].append((time.perf_counter() - t0) / args.steps * 1e3)
    report(totals, "tf_keras Adam", "ms per Adam update of all weights (lower is better)")
    return totals


# --------------------------------------------------------------------------- output


def report(results, baseline, unit):
    print(f"\n{unit}; median over rounds, ratio to {baseline}")
    base = statistics.median(results[baseline])
    for name, values in results.items():
        med = statistics.median(values)
        spread = f"{min(values):.2f}-{max(values):.2f}"
        print(f"  {name:<20} {med:9.2f}   range {spread:<15} ratio {med / base:5.3f}")


def main(argv=None):
    args = parse_args(argv)
    import tensorflow as tf

    if args.intra:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra)
    if args.inter:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter)
    print(
        f"TensorFlow {tf.__version__}, oneDNN opts "
        f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'default(on)')}, "
        f"threads intra={args.intra or 'default'} inter={args.inter or 'default'}, "
        f"{os.cpu_count()} CPUs, input {args.size}px, batch {args.batch}",
        flush=True,
    )
    results = {"bn": run_bn, "adam": run_adam, "train": run_train}[args.what](args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

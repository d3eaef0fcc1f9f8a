"""`virion train` on Keras' JAX backend, TensorFlow import blocked: one process with two simulated
devices (data parallel, interrupted, resumed with `virion train --resume`, evaluated, reported), one training step
compared with a single device, and two processes joined through jax.distributed (multi-host)."""

from __future__ import annotations

import socket

import numpy as np
import pytest

# Shared preamble of the child processes: block TensorFlow, write a tiny 3-class PNG dataset, and
# put a tiny network in ResNet-50's place in the registry (the real one takes minutes to compile
# on a 2-core CPU; the training code around it is what these tests are about).
PREAMBLE = r'''
import json, sys
class _BlockTF:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow.") or name == "tf_keras":
            raise ImportError(f"TensorFlow imported on the JAX path: {name}")
        return None
sys.meta_path.insert(0, _BlockTF())
from pathlib import Path
import numpy as np
from PIL import Image

def write_data(root):
    rng = np.random.default_rng(0)
    for c, name in enumerate(["alpha", "beta", "gamma"]):
        d = Path(root) / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(10):
            img = rng.integers(0, 60, (40, 40)).astype(np.uint8)
            img[8 + 8 * c:16 + 8 * c, 8:32] = 200
            Image.fromarray(img).save(d / f"{name}_{i}.png")

from virion.training.distribute import prepare_process
prepare_process("auto")  # the CLI's order: backend (and multi-host start) before Keras
import keras
import virion.models.resnet50 as _resnet50
from virion.models.batchnorm import BatchNormalization

def tiny(num_classes, shape):
    inp = keras.Input(shape)
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, use_bias=False)(x)
    x = BatchNormalization()(x)
    x = keras.layers.Activation("relu", name="conv5_block3_out")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(num_classes, activation="softmax")(x), name="resnet50")

_resnet50.build_resnet50 = tiny
from virion import workflow
from virion.training import distribute

class Probe(keras.callbacks.Callback):
    """Records how the weights are laid out; stops after epoch `stop_after` (a simulated kill)."""
    def __init__(self, stop_after=None):
        super().__init__()
        self.stop_after, self.devices = stop_after, []
    def on_train_begin(self, logs=None):
        self.devices.append(len(self.model.trainable_weights[0].value.sharding.device_set))
    def on_epoch_end(self, epoch, logs=None):
        if self.stop_after is not None and epoch + 1 == self.stop_after:
            raise KeyboardInterrupt

def settings(root, **kw):
    return dict(data=str(Path(root) / "data"), out=str(Path(root) / "run"), models=["resnet50"], input_size=32,
                batch_size=8, epochs=2, weights="none", val_fraction=0.25, test_fraction=0.2, **kw)

def weights_digest(run_dir):
    from virion.run.loading import load_keras_model
    model = load_keras_model(next(Path(run_dir, "resnet50").glob("*.keras")))
    return float(sum(np.abs(np.asarray(w, np.float64)).sum() for w in model.get_weights()))
'''

STEP = r"""
def build():
    keras.utils.set_random_seed(1)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inp)  # a bias before BN has a ~0 gradient
    x = BatchNormalization()(x)  # batch statistics must be those of the GLOBAL batch
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="categorical_crossentropy")
    return model

rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (8, 12, 12, 3)).astype("float32")
y = np.eye(3, dtype="float32")[rng.integers(0, 3, 8)]
step = {}
for devices in (1, 2):
    dist = distribute.configure(devices)
    model = build()
    start = [w.tolist() for w in model.get_weights()]
    loss = float(model.train_on_batch(x, y))
    step[devices] = {"distributed": dist is not None, "loss": loss, "start": start,
                     "kernel_devices": len(model.layers[1].kernel.value.sharding.device_set),
                     "weights": [w.tolist() for w in model.get_weights()]}
distribute.release()

root = Path(sys.argv[1])
write_data(root / "data")
probe = Probe(stop_after=1)
try:
    # mixup on: the mixing runs in the jitted device function, on the two devices' batch shards
    workflow.train(progress=False, extra_callbacks=[probe], **settings(root, devices="all", mixup=0.2))
    interrupted = False
except KeyboardInterrupt:
    interrupted = True
from virion.cli.main import main  # the resume goes through `virion train --resume RUN`
code = main(["train", "--resume", str(root / "run")])
folder = root / "run" / "resnet50"
meta = json.loads((folder / "metadata.json").read_text())
history = (folder / "history.csv").read_text().strip().splitlines()
print(json.dumps({"step": step, "interrupted": interrupted, "devices_seen": probe.devices, "cli_exit": code,
                  "config_launch": [json.loads((root / "run" / "config.json").read_text()).get(k)
                                    for k in ("backend", "devices", "coordinator")],
                  "mixup": json.loads((root / "run" / "config.json").read_text()).get("mixup"),
                  "backend": meta.get("versions", {}).get("backend"), "tf_loaded": "tensorflow" in sys.modules,
                  "epochs": [row.split(",")[0] for row in history[1:]],
                  "files": sorted(p.name for p in folder.iterdir()),
                  "evaluated": (folder / "evaluation").is_dir(), "report": (root / "run" / "report.html").is_file(),
                  "distribution_after": keras.distribution.distribution() is not None}))
"""

MULTIHOST = r"""
root = Path(sys.argv[1])
if distribute.is_writer():
    write_data(root / "data")
import jax
from jax.experimental import multihost_utils
multihost_utils.sync_global_devices("data written")
probe = Probe()
result = workflow.train(progress=False, extra_callbacks=[probe], **settings(root, devices="all", cutmix=1.0))
print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(), "devices": jax.device_count(),
                  "writer": distribute.is_writer(), "run_dir": str(result.run_dir), "devices_seen": probe.devices,
                  "digest": weights_digest(result.run_dir), "tf_loaded": "tensorflow" in sys.modules}))
"""


@pytest.fixture(scope="module")
def single_process(jax_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("jax-train")
    return jax_run(PREAMBLE + STEP, devices=2, timeout=300, args=[str(root)], VIRION_CACHE_DIR=str(root / "cache"))


def test_one_step_on_two_devices_equals_one_device(single_process):
    one, two = single_process["step"]["1"], single_process["step"]["2"]
    assert not one["distributed"] and one["kernel_devices"] == 1
    assert two["distributed"] and two["kernel_devices"] == 2  # a replica of the weights on each device
    for a, b in zip(one["start"], two["start"]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert abs(one["loss"] - two["loss"]) < 1e-5 * max(1.0, abs(one["loss"]))
    changed = False
    for a0, a, b in zip(one["start"], one["weights"], two["weights"]):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
        changed |= not np.allclose(a0, a)
    assert changed, "the step must change the weights, or the comparison proves nothing"


def test_two_device_train_resumes_evaluates_and_never_imports_tensorflow(single_process):
    res = single_process
    assert res["backend"] == "jax" and res["tf_loaded"] is False
    assert res["devices_seen"] and set(res["devices_seen"]) == {2}, "data parallel over both devices"
    assert res["interrupted"] and res["cli_exit"] == 0
    assert res["epochs"] == ["1", "2"], "`virion train --resume` continued: each epoch once in history.csv"
    assert res["config_launch"] == ["auto", "all", None]
    assert res["mixup"] == 0.2  # the resumed run kept its mixing setting
    assert "resnet50_virus_classification.keras" in res["files"] and "metadata.json" in res["files"]
    assert res["evaluated"] and res["report"]
    assert res["distribution_after"] is False, "evaluation runs on one device"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Errors that mean "this jaxlib cannot run collectives between CPU processes", not a virion bug.
NO_CPU_COLLECTIVES = ("gloo", "collectives", "UNIMPLEMENTED", "not supported on CPU")


def test_two_processes_train_as_one_multi_host_run(jax_children, tmp_path):
    port = _free_port()
    env = dict(VIRION_COORDINATOR=f"127.0.0.1:{port}", VIRION_NUM_PROCESSES=2, VIRION_CACHE_DIR=str(tmp_path / "cache"))
    procs = [
        jax_children.start(PREAMBLE + MULTIHOST, devices=1, args=[tmp_path], VIRION_PROCESS_ID=i, **env) for i in (0, 1)
    ]
    outcomes = [jax_children.result(p, timeout=300) for p in procs]
    if any(code != 0 for code, _, _ in outcomes):
        text = "\n".join(out for _, _, out in outcomes)
        missing = [m for m in NO_CPU_COLLECTIVES if m in text and "Traceback" in text]
        if missing and "virion" not in text.split("Traceback")[-1].split("Error")[0]:
            pytest.skip(
                f"this jaxlib cannot run collectives between CPU processes ({missing[0]}): multi-host "
                "training is tested where JAX supports it (gloo CPU collectives, jax >= 0.4.27)"
            )
        pytest.fail(f"multi-host run failed:\n{text}")
    first, second = (res for _, res, _ in outcomes)
    assert {first["process"], second["process"]} == {0, 1} and first["processes"] == 2 and first["devices"] == 2
    assert first["devices_seen"] and set(first["devices_seen"]) == set(second["devices_seen"]) == {2}, (
        "one mesh over both processes' devices"
    )
    assert first["tf_loaded"] is False and second["tf_loaded"] is False
    writer, other = (first, second) if first["writer"] else (second, first)
    assert writer["process"] == 0 and not other["writer"]
    assert writer["run_dir"] == str(tmp_path / "run"), "process 0 writes the run folder"
    assert other["run_dir"] != writer["run_dir"] and str(tmp_path / "cache") in other["run_dir"]
    assert abs(writer["digest"] - other["digest"]) < 1e-6 * abs(writer["digest"]), "both processes hold one model"

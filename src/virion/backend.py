"""Pick Keras' compute backend per machine, before Keras is imported.

Keras 3 reads ``KERAS_BACKEND`` once, when ``keras`` is first imported, and cannot switch
afterwards. virion trains fastest on TensorFlow on a CPU (ResNet-50 about 3x faster than JAX on
2 cores, with the fused batch-norm kernel) and on JAX on an NVIDIA GPU (CUDA 12 wheels from
``pip install "virion[cuda]"``, no 600 MB TensorFlow needed). So ``auto`` means: JAX when JAX sees
a GPU, TensorFlow otherwise (JAX when TensorFlow is not installed at all).

Detection never imports TensorFlow, and imports JAX only when a JAX GPU plugin is installed, so
the CPU start-up stays as fast as before.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from virion.errors import VirionError

BACKENDS = ("auto", "tensorflow", "jax")
ENV_VAR = "KERAS_BACKEND"
# JAX reaches a GPU only through one of these plugin / wheel distributions.
_JAX_GPU_DISTRIBUTIONS = (
    "jax-cuda12-plugin",
    "jax-cuda13-plugin",
    "jax-rocm60-plugin",
    "jax-rocm7-plugin",
    "jaxlib-cuda12",
    "jax-cuda12-pjrt",
)

# What the user set before virion set anything (virion/__init__ fills in a default).
_USER_ENV = os.environ.get(ENV_VAR)


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _jax_gpu_plugin_installed() -> bool:
    import importlib.metadata  # 0.1-0.4 s to import: only when JAX is installed and asked about

    for dist in _JAX_GPU_DISTRIBUTIONS:
        try:
            importlib.metadata.version(dist)
            return True
        except importlib.metadata.PackageNotFoundError:
            continue
    try:  # plugins installed some other way register under the jax_plugins namespace
        import pkgutil

        spec = importlib.util.find_spec("jax_plugins")
        paths = list(spec.submodule_search_locations or []) if spec else []
        return any(("cuda" in m.name or "rocm" in m.name) for m in pkgutil.iter_modules(paths))
    except (ImportError, ValueError):
        return False


def jax_gpu_available() -> bool:
    """True when JAX is installed with a GPU plugin and actually sees a GPU. Never imports TF."""
    if not installed("jax"):
        return False
    if os.environ.get("JAX_PLATFORMS", "").strip().lower() in ("cpu", "tpu"):
        return False  # the user keeps JAX off the GPU
    if "jax" not in sys.modules and not _jax_gpu_plugin_installed():
        return False  # plain CPU jaxlib: no GPU possible, and no slow JAX start-up
    try:
        import jax

        return any(d.platform in ("gpu", "cuda", "rocm") for d in jax.devices())
    except Exception:  # noqa: BLE001 - a broken CUDA install means "no GPU", not a crash
        return False


def default_backend() -> str:
    """A backend that is installed, for when nothing was chosen: TensorFlow if present, else JAX."""
    if installed("tensorflow") or not installed("jax"):
        return "tensorflow"
    return "jax"


def set_default_env() -> None:
    """Give KERAS_BACKEND a working default (called by `import virion`); never overrides the user."""
    os.environ.setdefault(ENV_VAR, default_backend())


def resolve(choice: str = "auto") -> str:
    """The backend `choice` means on this machine ("tensorflow" or "jax"), without importing Keras."""
    if choice not in BACKENDS:
        raise VirionError(f"--backend {choice!r} is not a backend virion supports: choose one of {', '.join(BACKENDS)}")
    if choice != "auto":
        return choice
    if _USER_ENV in ("tensorflow", "jax"):  # an explicit KERAS_BACKEND wins over auto
        return _USER_ENV
    if jax_gpu_available():
        return "jax"
    return default_backend()


def loaded_backend() -> str | None:
    """The backend of the Keras already imported in this process, or None."""
    keras = sys.modules.get("keras")
    if keras is None:
        return None
    try:
        return keras.backend.backend()
    except AttributeError:  # keras only partly imported
        return os.environ.get(ENV_VAR)


def select_backend(choice: str = "auto") -> str:
    """Set KERAS_BACKEND for `choice` (auto | tensorflow | jax) and return the backend in use.

    Call it before anything imports Keras. When Keras is already loaded, an explicit choice that
    differs is a VirionError (Keras cannot switch); "auto" then keeps the loaded backend.
    """
    current = loaded_backend()
    if current is not None and choice == "auto":
        return current  # no detection needed (and no JAX start-up in a TensorFlow process)
    wanted = resolve(choice)
    if current is not None:
        if current == wanted:
            return current
        raise VirionError(
            f"--backend {choice}: Keras is already running on {current} in this process and "
            f"cannot switch; start a new process with KERAS_BACKEND={wanted} (or call "
            f"virion.backend.select_backend before importing keras)"
        )
    if wanted == "tensorflow" and not installed("tensorflow") and choice == "auto":
        raise VirionError(
            'no Keras backend is installed: pip install "virion[cpu]" (TensorFlow, CPU) '
            'or "virion[cuda]" (JAX, NVIDIA GPU)'
        )
    if wanted == "tensorflow" and not installed("tensorflow"):
        raise VirionError(
            "--backend tensorflow: TensorFlow is not installed; use --backend jax "
            '(pip install "virion[jax]" or "virion[cuda]") or pip install tensorflow'
        )
    if wanted == "jax" and not installed("jax"):
        raise VirionError(
            '--backend jax: JAX is not installed; pip install "virion[jax]" (CPU) or "virion[cuda]" (NVIDIA GPU)'
        )
    os.environ[ENV_VAR] = wanted
    return wanted


def runtime_info() -> dict:
    """What ran the computation, for metadata.json: backend, device kind and counts."""
    backend = loaded_backend() or os.environ.get(ENV_VAR, "tensorflow")
    info = {"backend": backend, "device_kind": "cpu", "devices": 1, "processes": 1}
    if backend == "jax":
        import jax

        devices = jax.devices()
        info.update(device_kind=str(devices[0].device_kind), devices=len(devices), processes=int(jax.process_count()))
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            info.update(device_kind="gpu", devices=len(gpus))
    return info


def gpu_available() -> bool:
    """Whether the loaded backend computes on a GPU (decides the "auto" speed-ups)."""
    backend = loaded_backend() or os.environ.get(ENV_VAR, "tensorflow")
    if backend == "jax":
        import jax

        return jax.default_backend() in ("gpu", "cuda", "rocm")
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return False


# ---------------------------------------------------------------------------- device topology
# Here, low in the house, because the data layer's NumPy pipeline needs it too.


def _jax_loaded() -> bool:
    """JAX is the Keras backend of this process (never imports JAX or Keras on its own)."""
    keras = sys.modules.get("keras")
    if keras is None or "jax" not in sys.modules:
        return False
    try:
        return keras.backend.backend() == "jax"
    except AttributeError:
        return False


def topology() -> dict:
    """Global device count, process count and this process's index under the active distribution."""
    info = {"devices": 1, "processes": 1, "process_index": 0}
    if not _jax_loaded():
        return info
    import jax
    import keras

    distribution = keras.distribution.distribution()
    if distribution is not None:
        info["devices"] = int(distribution.device_mesh.devices.size)
    info["processes"] = int(jax.process_count())
    info["process_index"] = int(jax.process_index())
    return info


def local_batch_sharding():
    """The JAX sharding for this process's part of a batch, as Keras' DataParallel lays it out.

    One process: the distribution's own data layout (Keras then has nothing to move). Several:
    this process's devices of the mesh; Keras assembles the global batch from every process's part.
    """
    if not _jax_loaded():
        return None
    import jax
    import keras

    distribution = keras.distribution.distribution()
    if distribution is None:
        return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    mesh = distribution.device_mesh.backend_mesh
    spec = jax.sharding.PartitionSpec(distribution.batch_dim_name)
    if jax.process_count() == 1:
        return jax.sharding.NamedSharding(mesh, spec)
    mine = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    import numpy as np

    return jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(mine), mesh.axis_names), spec)

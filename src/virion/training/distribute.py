"""Data-parallel training on many devices and machines with Keras' own distribution API.

On the JAX backend `keras.distribution.DataParallel` puts a replica of the weights on every
device of a mesh and splits each global batch along it; XLA inserts the gradient all-reduce.
virion adds only the choices around it:

- `--devices all|N`: all local accelerators (default) or the first N of each process;
- the batch size is the GLOBAL batch: with DataParallel the loss is the mean over the global
  batch, so one step on D devices computes the same update as one step on one device with the
  same batch (tested). Learning-rate rule: keep the learning rate for the same global batch; if
  you raise the global batch to keep more devices busy (e.g. 64 -> 512 on 8 GPUs), scale the
  learning rate linearly with it (`scaled_learning_rate`) and consider a few warm-up epochs;
- multi-host: `jax.distributed.initialize` from options or the environment (VIRION_COORDINATOR,
  VIRION_NUM_PROCESSES, VIRION_PROCESS_ID; SLURM and other clusters JAX detects by itself), each
  process feeding its own slice of every global batch (`virion.data.numpy_pipeline`);
- `is_writer()`: only process 0 writes checkpoints, history, evaluation and reports.

TensorFlow keeps its single-device path (the CPU default); several devices need `--backend jax`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from virion.backend import _jax_loaded, local_batch_sharding, topology  # noqa: F401 - re-exported
from virion.errors import VirionError

ENV_COORDINATOR = "VIRION_COORDINATOR"
ENV_NUM_PROCESSES = "VIRION_NUM_PROCESSES"
ENV_PROCESS_ID = "VIRION_PROCESS_ID"

_state = {"multihost": False}


# ---------------------------------------------------------------------------- options
def parse_devices(value) -> str | int:
    """'all' or a positive count, from the option / config value."""
    if value is None or value == "all":
        return "all"
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if isinstance(value, bool) or count < 1 or str(value).strip() != str(count):
        raise VirionError(f"--devices {value!r} is invalid: use all or a positive number of devices per machine")
    return count


def scaled_learning_rate(base_lr: float, global_batch: int, base_batch: int = 64) -> float:
    """The linear scaling rule: the learning rate for `global_batch` when `base_lr` suited `base_batch`."""
    return float(base_lr) * int(global_batch) / int(base_batch)


@dataclass(frozen=True)
class MultiHost:
    """How to reach the other processes of a multi-machine run (None fields: JAX detects them)."""

    coordinator: str | None
    num_processes: int | None
    process_id: int | None


def multihost_settings(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None, env=None
) -> MultiHost | None:
    """The multi-host settings from options, else VIRION_* variables, else a SLURM job; None: one machine.

    Inside a SLURM allocation of more than one task, JAX reads the coordinator, the process count
    and the process id from SLURM's variables itself, so none need to be given.
    """
    env = os.environ if env is None else env
    coordinator = coordinator or env.get(ENV_COORDINATOR) or None

    def number(value, option, env_name):
        if value is None:
            value = env.get(env_name)
        if value in (None, ""):
            return None
        try:
            return int(value)
        except (TypeError, ValueError):
            raise VirionError(f"{option} / {env_name}={value!r} is not a whole number") from None

    num_processes = number(num_processes, "--num-processes", ENV_NUM_PROCESSES)
    process_id = number(process_id, "--process-id", ENV_PROCESS_ID)
    if coordinator is None and num_processes is None and process_id is None:
        slurm_tasks = env.get("SLURM_NTASKS") or env.get("SLURM_NPROCS")
        if slurm_tasks and slurm_tasks.isdigit() and int(slurm_tasks) > 1 and "SLURM_PROCID" in env:
            return MultiHost(None, None, None)
        return None
    if num_processes == 1:
        return None
    if coordinator is None or num_processes is None or process_id is None:
        raise VirionError(
            "multi-machine training needs all three of --coordinator HOST:PORT, --num-processes N "
            "and --process-id I (or VIRION_COORDINATOR, VIRION_NUM_PROCESSES, VIRION_PROCESS_ID)"
        )
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise VirionError(
            f"--process-id {process_id} must lie in 0..{num_processes - 1} for --num-processes {num_processes}"
        )
    if ":" not in coordinator:
        raise VirionError(f"--coordinator {coordinator!r} needs a port: HOST:PORT of process 0, e.g. node1:1234")
    return MultiHost(coordinator, num_processes, process_id)


def initialize_multihost(settings: MultiHost) -> None:
    """`jax.distributed.initialize` once, before any JAX computation (CPU collectives: gloo)."""
    if _state["multihost"]:
        return
    import jax

    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):  # pragma: no cover - older JAX without the option
        pass
    try:
        jax.distributed.initialize(
            coordinator_address=settings.coordinator,
            num_processes=settings.num_processes,
            process_id=settings.process_id,
        )
    except RuntimeError as exc:
        raise VirionError(
            f"multi-machine start failed ({exc}); start every process before any other "
            f"JAX work, with the same --coordinator and --num-processes"
        ) from None
    _state["multihost"] = True


# ---------------------------------------------------------------------------- devices
def configure(devices="all"):
    """Set (or clear) Keras' global distribution for `devices`; returns it (None: one device).

    Must run before the model is built, so its variables are laid out on the mesh.
    """
    import keras

    wanted = parse_devices(devices)
    if keras.backend.backend() != "jax":
        if wanted not in ("all", 1):
            raise VirionError(
                f"--devices {wanted}: training on several devices needs --backend jax "
                f"(this process runs Keras on {keras.backend.backend()})"
            )
        return None
    import jax

    local = jax.local_devices()
    per_process = len(local) if wanted == "all" else wanted
    if per_process > len(local):
        raise VirionError(
            f"--devices {wanted}: this machine has only {len(local)} "
            f"{local[0].platform.upper()} device(s); use --devices all or at most {len(local)}"
        )
    chosen = [d for p in range(jax.process_count()) for d in _first_local(jax, per_process, p)]
    if len(chosen) == 1:
        keras.distribution.set_distribution(None)
        return None
    names = [f"{d.platform}:{d.id}" for d in chosen]
    # Each process feeds its own slice of the global batch (NumpyBatches), so no tf.data auto-sharding.
    distribution = keras.distribution.DataParallel(devices=names, auto_shard_dataset=False)
    keras.distribution.set_distribution(distribution)
    return distribution


def _first_local(jax, count: int, process_index: int):
    devices = sorted((d for d in jax.devices() if d.process_index == process_index), key=lambda d: d.id)
    return devices[:count]


def release() -> None:
    """Back to one device (e.g. before evaluating saved models on process 0 alone)."""
    if "keras" in sys.modules:
        sys.modules["keras"].distribution.set_distribution(None)


def is_writer() -> bool:
    """Whether this process writes files (checkpoints, history, evaluation, reports): process 0 only."""
    if not _jax_loaded():
        return True
    import jax

    return jax.process_index() == 0


def prepare_process(
    backend: str = "auto",
    *,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> str:
    """Pick the backend and join a multi-machine run, before Keras is imported; returns the backend.

    Joining comes first because `jax.distributed.initialize` must precede any JAX computation,
    and "auto" detection asks JAX for its devices. Safe to call again once Keras is loaded (then it
    only checks the choice).
    """
    from virion import backend as _backend
    from virion.backend import select_backend

    settings = multihost_settings(coordinator, num_processes, process_id)
    if settings is not None and settings.coordinator is None:  # a SLURM job of several tasks
        # Join only on the JAX path; decided without starting JAX (initialize must come first).
        jax_path = backend == "jax" or (
            backend == "auto"
            and (
                _backend.loaded_backend() == "jax"
                or (_backend.loaded_backend() is None and _backend._jax_gpu_plugin_installed())
            )
        )
        if not jax_path:
            settings = None
    if settings is None:
        return select_backend(backend)
    if backend == "tensorflow":
        raise VirionError(
            "--backend tensorflow runs on one machine; multi-machine training needs --backend jax (or auto)"
        )
    name = select_backend("jax")
    initialize_multihost(settings)
    return name


def setup(
    devices="all",
    *,
    backend: str = "auto",
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
):
    """`prepare_process`, then the device mesh (`configure`): returns the distribution (None: one device)."""
    prepare_process(backend, coordinator=coordinator, num_processes=num_processes, process_id=process_id)
    return configure(devices)


def private_run_dir(out) -> str:
    """Where a process other than 0 keeps its own copy of the run folder's files.

    Every process runs the same code (so the collective steps line up), but only process 0 writes
    the real run folder; the others write here, out of its way, in the decode cache folder: a
    per-process path derived from the run folder, so `--resume` finds it again.
    """
    import hashlib
    from pathlib import Path

    from virion.data.cache import default_cache_dir

    index = 0
    if _jax_loaded():
        import jax

        index = jax.process_index()
    resolved = str(Path(out).expanduser().resolve())
    key = hashlib.sha256(resolved.encode()).hexdigest()[:12]
    return str(default_cache_dir() / "processes" / f"{Path(resolved).name}-{key}-process{index}")

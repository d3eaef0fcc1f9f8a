"""Backend choice, device and multi-host options: the checks that need no JAX process."""

from __future__ import annotations

import pytest

from virion import backend
from virion.errors import VirionError
from virion.training import distribute
from virion.training.config import TrainConfig


def test_backend_choice_is_checked_and_explicit():
    with pytest.raises(VirionError, match="--backend 'torch'"):
        backend.resolve("torch")
    assert backend.resolve("jax") == "jax" and backend.resolve("tensorflow") == "tensorflow"


def test_loaded_keras_cannot_switch_backend_but_auto_keeps_it():
    import keras

    loaded = keras.backend.backend()
    other = "jax" if loaded == "tensorflow" else "tensorflow"
    assert backend.select_backend("auto") == loaded
    assert backend.select_backend(loaded) == loaded
    with pytest.raises(VirionError, match="cannot switch"):
        backend.select_backend(other)


def test_select_backend_sets_keras_backend_before_keras_loads(monkeypatch):
    monkeypatch.setattr(backend, "loaded_backend", lambda: None)
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    if backend.installed("jax"):
        assert backend.select_backend("jax") == "jax"
        import os

        assert os.environ["KERAS_BACKEND"] == "jax"
    monkeypatch.setattr(backend, "installed", lambda module: module != "jax")
    with pytest.raises(VirionError, match="JAX is not installed"):
        backend.select_backend("jax")


def test_auto_without_a_jax_gpu_plugin_never_starts_jax(monkeypatch):
    import sys

    monkeypatch.setattr(backend, "_jax_gpu_plugin_installed", lambda: False)
    monkeypatch.delitem(sys.modules, "jax", raising=False)
    monkeypatch.setattr(backend, "_USER_ENV", None)
    assert backend.jax_gpu_available() is False
    assert "jax" not in sys.modules
    assert backend.resolve("auto") == backend.default_backend()


def test_multihost_settings_from_options_environment_and_slurm():
    assert distribute.multihost_settings(env={}) is None
    got = distribute.multihost_settings(
        env={"VIRION_COORDINATOR": "node1:1234", "VIRION_NUM_PROCESSES": "4", "VIRION_PROCESS_ID": "3"}
    )
    assert got == distribute.MultiHost("node1:1234", 4, 3)
    assert distribute.multihost_settings("a:1", 2, 0, env={"VIRION_PROCESS_ID": "1"}) == distribute.MultiHost(
        "a:1", 2, 0
    )
    assert distribute.multihost_settings(env={"SLURM_NTASKS": "2", "SLURM_PROCID": "1"}) == distribute.MultiHost(
        None, None, None
    )
    assert distribute.multihost_settings(env={"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None
    assert distribute.multihost_settings("a:1", 1, 0, env={}) is None
    with pytest.raises(VirionError, match="needs all three"):
        distribute.multihost_settings("a:1", env={})
    with pytest.raises(VirionError, match="--process-id 2 must lie in 0..1"):
        distribute.multihost_settings("a:1", 2, 2, env={})
    with pytest.raises(VirionError, match="needs a port"):
        distribute.multihost_settings("nodeA", 2, 0, env={})
    with pytest.raises(VirionError, match="VIRION_NUM_PROCESSES"):
        distribute.multihost_settings(env={"VIRION_COORDINATOR": "a:1", "VIRION_NUM_PROCESSES": "two"})


def test_devices_option_and_the_tensorflow_path():
    assert distribute.parse_devices("all") == "all" and distribute.parse_devices("3") == 3
    for bad in ("0", "-1", "x", True, 1.5):
        with pytest.raises(VirionError, match="--devices"):
            distribute.parse_devices(bad)
    import keras

    if keras.backend.backend() == "tensorflow":
        assert distribute.configure("all") is None
        with pytest.raises(VirionError, match="needs --backend jax"):
            distribute.configure(2)
        assert distribute.is_writer() and distribute.topology() == {"devices": 1, "processes": 1, "process_index": 0}
    assert distribute.scaled_learning_rate(1e-3, 512, 64) == pytest.approx(8e-3)


def test_train_config_carries_the_device_settings():
    config = TrainConfig().merged(
        {"backend": "jax", "devices": "2", "coordinator": "node1:1234", "num_processes": "2", "process_id": "1"}
    )
    assert (config.backend, config.devices, config.coordinator, config.num_processes, config.process_id) == (
        "jax",
        2,
        "node1:1234",
        2,
        1,
    )
    assert TrainConfig().devices == "all" and TrainConfig().backend == "auto"
    for bad in ({"devices": "0"}, {"backend": "torch"}, {"coordinator": "node1"}):
        with pytest.raises(VirionError):
            TrainConfig().merged(bad)

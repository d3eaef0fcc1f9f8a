"""JAX tests run in child processes: the main pytest process has Keras on TensorFlow, and a Keras
process cannot switch backends. Each child gets KERAS_BACKEND=jax and N simulated CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=N)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")


def jax_env(devices: int = 2, **extra) -> dict:
    env = dict(os.environ)
    for key in list(env):
        if key.startswith(("VIRION_COORDINATOR", "VIRION_NUM_PROCESSES", "VIRION_PROCESS_ID", "SLURM_")):
            env.pop(key)
    env.update(
        KERAS_BACKEND="jax",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONWARNINGS="ignore",
        PYTHONPATH=SRC + os.pathsep + env.get("PYTHONPATH", ""),
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_jax(code: str, *, devices: int = 2, args=(), **extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        env=jax_env(devices, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def result_of(proc: subprocess.Popen, timeout: float) -> tuple[int, dict | None, str]:
    """(exit code, the JSON object the child printed last, its output) of a finished child."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return -9, None, f"timed out after {timeout} s\n{out[-3000:]}\n{err[-5000:]}"
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return proc.returncode, (json.loads(lines[-1]) if lines else None), f"{out[-3000:]}\n{err[-6000:]}"


def run_jax(code: str, *, devices: int = 2, timeout: float = 300, args=(), **extra) -> dict:
    """Run `code` in a fresh JAX process; it must print one JSON object as its last JSON line."""
    code_, result, output = result_of(start_jax(code, devices=devices, args=args, **extra), timeout)
    if code_ != 0 or result is None:
        pytest.fail(f"JAX child process failed ({code_}):\n{output}")
    return result


@pytest.fixture(scope="session")
def jax_installed():
    if importlib.util.find_spec("jax") is None:
        pytest.skip("JAX is not installed (pip install -e '.[dev]' brings the CPU build)")


@pytest.fixture(scope="session")
def jax_run(jax_installed):
    return run_jax


class JaxChildren:
    """Start JAX children side by side (`start`), then collect each one's `result`."""

    start = staticmethod(start_jax)
    result = staticmethod(result_of)


@pytest.fixture(scope="session")
def jax_children(jax_installed):
    return JaxChildren()

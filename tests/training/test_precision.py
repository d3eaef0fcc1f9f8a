"""Precision settings: bfloat16 is an explicit choice; 'auto' means float32 on a CPU."""

import keras
import pytest

from virion.errors import VirionError
from virion.training.config import TrainConfig
from virion.training.trainer import _Precision


def test_bfloat16_sets_the_mixed_policy_and_restores_it():
    before = keras.mixed_precision.global_policy().name
    with _Precision(TrainConfig(mixed_precision="bfloat16")):
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == before


def test_auto_stays_float32_without_a_gpu(monkeypatch):
    monkeypatch.setattr("virion.training.config.gpu_available", lambda: False)
    with _Precision(TrainConfig()) as precision:
        assert keras.mixed_precision.global_policy().name == "float32"
        assert precision.jit is False


def test_unknown_precision_is_a_one_line_error():
    with pytest.raises(VirionError, match="mixed.precision"):
        TrainConfig().merged({"mixed_precision": "fp8"})

"""virion: classify virus particles in TEM images with deep learning."""

import os as _os

# Quiet TensorFlow's C++ chatter before any backend is imported; users can override. Level 3: it
# also logs benign notices at ERROR level ("oneDNN supports DT_INT32 only ..."); real failures still
# reach the user as Python exceptions. The CLI keeps this unless --verbose (cli.main).
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Keras reads KERAS_BACKEND at its import: default to an installed backend (TensorFlow if present);
# `virion.backend.select_backend` picks per machine (JAX on a GPU) before Keras loads.
from virion.backend import set_default_env as _set_default_env  # noqa: E402

_set_default_env()

__version__ = "0.1.0"

# The notebook API. Imported lazily (PEP 562) so that `import virion` stays fast and loads no
# TensorFlow/Keras: each name is looked up on first use.
__all__ = [
    "train", "evaluate", "load", "synth", "crops", "train_detector", "scan", "compare", "report", "TrainConfig",
    "Classifier",
]  # fmt: skip

_LAZY = {
    "train": ("virion.workflow", "train"),  # train(config=None, **settings) -> RunResult
    "evaluate": ("virion.workflow", "evaluate"),  # evaluate(run_dir, data=None) -> {model: summary}
    "compare": ("virion.workflow", "compare"),
    "report": ("virion.workflow", "report"),
    "load": ("virion.inference.classifier", "load"),  # load(path, models=None) -> Classifier
    "synth": ("virion.data.synth", "generate_dataset"),  # synth(out, per_class=..., size=...) -> Path
    "crops": ("virion.micrograph.crops", "cut_crops"),  # crops(boxes_csv, out, size=256, ...) -> CropsResult
    # train_detector(boxes_csv, out, epochs=30, ...) -> DetectorTrainingResult (the detector saved in out)
    "train_detector": ("virion.micrograph.heatmap_training", "train_from_boxes"),
    "scan": ("virion.micrograph.scan", "scan"),  # scan(run_or_classifier, paths, out=None, ...) -> ScanResult
    "TrainConfig": ("virion.training.config", "TrainConfig"),
    "Classifier": ("virion.inference.classifier", "Classifier"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'virion' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)

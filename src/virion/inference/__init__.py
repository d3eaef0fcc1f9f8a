"""Prediction and Grad-CAM on new images: `Classifier` is the one prediction path.

Imported lazily so that `import virion.inference` does not load Keras.
"""

from __future__ import annotations

__all__ = ["Classifier", "Predictions", "Explanation"]


def __getattr__(name: str):
    if name in __all__:
        from virion.inference import classifier

        return getattr(classifier, name)
    raise AttributeError(f"module 'virion.inference' has no attribute {name!r}")

"""Helpers shared by the micrograph tests (importable through this folder's conftest.py)."""

from __future__ import annotations

import numpy as np

from virion.data.layout import BACKGROUND_CLASS


class CentreBrightness:
    """A stand-in classifier: a window whose centre is bright is class A, else `_background`."""

    class_names = ["A", "B", BACKGROUND_CLASS]
    metadata: dict = {}
    default_model = "centre-brightness"

    def predict(self, windows, *, model=None, tta=False, batch_size=32, progress=False):
        windows = np.asarray(windows, float)
        centre = windows[:, 118:138, 118:138].mean(axis=(1, 2))
        ring = windows[:, 60:196, 60:196].mean(axis=(1, 2))
        particle = centre > ring + 25
        probs = np.where(particle[:, None], [0.8, 0.15, 0.05], [0.05, 0.05, 0.9])

        class Out:
            probabilities = probs
            class_names = self.class_names

        return Out()

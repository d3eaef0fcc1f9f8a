"""Multinomial logistic regression's scores in NumPy, from plain arrays: no pickle.

scikit-learn fits it (`sklearn.linear_model.LogisticRegression`); predicting needs only the
weights and intercepts, stored in the model's .npz.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LinearSoftmax:
    """Logits x @ coef.T + intercept over `k` classes (k >= 2)."""

    coef: np.ndarray  # (k, d)
    intercept: np.ndarray  # (k,)

    @classmethod
    def from_sklearn(cls, lr) -> LinearSoftmax:
        coef = np.asarray(lr.coef_, np.float64)
        intercept = np.asarray(lr.intercept_, np.float64)
        if coef.shape[0] == 1:  # two classes: sklearn keeps one row (the second class's logit)
            coef = np.vstack([-coef / 2, coef / 2])
            intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
        return cls(coef, intercept)

    @property
    def n_classes(self) -> int:
        return len(self.intercept)

    def class_scores(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) @ self.coef.T + self.intercept

    def arrays(self, prefix: str = "linear_") -> dict[str, np.ndarray]:
        return {f"{prefix}coef": self.coef, f"{prefix}intercept": self.intercept}

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "linear_") -> LinearSoftmax:
        coef = np.asarray(arrays[f"{prefix}coef"], np.float64)
        return cls(coef, np.asarray(arrays[f"{prefix}intercept"], np.float64))

    def count_params(self) -> int:
        return int(self.coef.size + self.intercept.size)

"""Linear class scores in NumPy, from plain arrays: no pickle.

scikit-learn fits the heads (`LogisticRegression`, `LinearDiscriminantAnalysis`); predicting needs
only the weights and intercepts, stored in the model's .npz.
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

    @classmethod
    def sum(cls, heads: list[LinearSoftmax], x: np.ndarray) -> LinearSoftmax:
        """One linear map: the sum of `heads`' scores, each divided by the spread (sd) of its scores on `x`.

        Scaling by the spread puts heads whose scores live on different scales (logits, LDA
        discriminants) on an equal footing; the sum of linear maps is still one linear map.
        """
        coef, intercept = 0.0, 0.0
        for head in heads:
            spread = float(head.class_scores(x).std()) or 1.0
            coef, intercept = coef + head.coef / spread, intercept + head.intercept / spread
        return cls(np.asarray(coef, np.float64), np.asarray(intercept, np.float64))

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

"""An RBF support-vector machine's decision function in NumPy, from plain arrays: no pickle.

scikit-learn trains the SVM (`sklearn.svm.SVC`, libsvm's one-vs-one multi-class); this module
keeps only what predicting needs (support vectors, dual coefficients, intercepts, support counts
per class, gamma) and evaluates the same decision values. tests/models/test_texture.py checks
them against `SVC.decision_function`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RbfSvm:
    """One-vs-one RBF SVM over `k` classes (0..k-1 in the order of `n_support`)."""

    support_vectors: np.ndarray  # (n_sv, d), grouped by class
    dual_coef: np.ndarray  # (k - 1, n_sv), libsvm's layout
    intercept: np.ndarray  # (k * (k - 1) / 2,), pairs (0,1), (0,2), ..., (k-2,k-1)
    n_support: np.ndarray  # (k,) support vectors per class
    gamma: float

    @classmethod
    def from_sklearn(cls, svc) -> RbfSvm:
        if svc.kernel != "rbf":
            raise ValueError(f"only the RBF kernel is supported, got {svc.kernel!r}")
        return cls(
            np.asarray(svc.support_vectors_, np.float64),
            np.asarray(svc.dual_coef_, np.float64),
            np.asarray(svc.intercept_, np.float64),
            np.asarray(svc.n_support_, np.int64),
            float(svc._gamma),
        )

    @property
    def n_classes(self) -> int:
        return len(self.n_support)

    def kernel(self, x: np.ndarray) -> np.ndarray:
        """exp(-gamma |x - sv|^2) for every row of `x` and every support vector: (n, n_sv)."""
        x = np.asarray(x, np.float64)
        sv = self.support_vectors
        d2 = (x * x).sum(1)[:, None] + (sv * sv).sum(1)[None, :] - 2.0 * x @ sv.T
        return np.exp(-self.gamma * np.maximum(d2, 0.0))

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """One-vs-one decision values (n, k(k-1)/2): positive favours the pair's first class.

        libsvm's layout: the dual coefficients of class i's support vectors against class j sit in
        row j-1 (j > i) or row j (j < i) of `dual_coef`.
        """
        kmat = self.kernel(x)
        k = self.n_classes
        start = np.concatenate([[0], np.cumsum(self.n_support)])
        out = np.empty((len(kmat), k * (k - 1) // 2))
        p = 0
        for i in range(k):
            si = slice(start[i], start[i + 1])
            for j in range(i + 1, k):
                sj = slice(start[j], start[j + 1])
                out[:, p] = kmat[:, si] @ self.dual_coef[j - 1, si] + kmat[:, sj] @ self.dual_coef[i, sj]
                out[:, p] += self.intercept[p]
                p += 1
        return out

    def class_scores(self, x: np.ndarray) -> np.ndarray:
        """Per-class score (n, k): the sum of the class's signed one-vs-one decision values.

        A continuous version of libsvm's vote count (it ranks classes the same way in nearly every
        case) that softmax with a fitted temperature turns into probabilities.
        """
        dec = self.decision_function(x)
        k = self.n_classes
        scores = np.zeros((len(dec), k))
        p = 0
        for i in range(k):
            for j in range(i + 1, k):
                scores[:, i] += dec[:, p]
                scores[:, j] -= dec[:, p]
                p += 1
        return scores

    def arrays(self, prefix: str = "svm_") -> dict[str, np.ndarray]:
        return {
            f"{prefix}support_vectors": self.support_vectors,
            f"{prefix}dual_coef": self.dual_coef,
            f"{prefix}intercept": self.intercept,
            f"{prefix}n_support": self.n_support,
            f"{prefix}gamma": np.array(self.gamma, np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "svm_") -> RbfSvm:
        return cls(
            np.asarray(arrays[f"{prefix}support_vectors"], np.float64),
            np.asarray(arrays[f"{prefix}dual_coef"], np.float64),
            np.asarray(arrays[f"{prefix}intercept"], np.float64),
            np.asarray(arrays[f"{prefix}n_support"], np.int64),
            float(arrays[f"{prefix}gamma"]),
        )

    def count_params(self) -> int:
        return int(self.support_vectors.size + self.dual_coef.size + self.intercept.size + 1)

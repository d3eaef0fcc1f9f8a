"""Turning classifier scores into probabilities one can average, and measuring how honest they are.

Temperature scaling (Guo et al. 2017): softmax(scores / T) with one T fitted by log-likelihood on
data the classifier did not train on. One parameter cannot overfit a small validation split, and it
never changes the arg-max, so accuracy is the classifier's own.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar


def softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(scores, np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_loss(probabilities: np.ndarray, labels: np.ndarray, eps: float = 1e-15) -> float:
    """Mean negative log-probability of the true class (probabilities clipped at `eps`)."""
    p = np.asarray(probabilities, np.float64)[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.log(np.clip(p, eps, 1.0)).mean())


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE: |accuracy - confidence| of the top class in `bins` equal-width confidence bins, weighted."""
    p = np.asarray(probabilities, np.float64)
    conf = p.max(axis=1)
    right = p.argmax(axis=1) == np.asarray(labels)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.sum() * abs(right[sel].mean() - conf[sel].mean())
    return float(total / max(len(p), 1))


def fit_temperature(scores: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the log-loss of softmax(scores / T) on (scores, labels)."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels)
    if len(labels) == 0:
        return 1.0

    def loss(log_t: float) -> float:
        return log_loss(softmax(scores, np.exp(log_t)), labels)

    result = minimize_scalar(loss, bounds=(np.log(1e-3), np.log(1e3)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))

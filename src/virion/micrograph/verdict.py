"""One answer per micrograph (or specimen) from the probabilities of its accepted particles.

The rule: each virus class gets the sum of its probability over the accepted particles, each
particle's probability vector weighted by its detector score (a particle votes with its whole
probability vector, so a confident particle counts more than a doubtful one, a clear detection more
than a faint one, and a second-best class still collects evidence); the class with the largest sum
is the verdict, and its probability is its share of the summed probability. `none` when no
particle was accepted; `uncertain` when fewer than `min_particles` particles have the verdict as
their own top class, or when the verdict's share leads the runner-up's by less than `margin`
(default 0.02: a near tie). The class columns of a `_background` class are left out of the vote.

Weights (`weight_by`, `particle_weights`): "score" (the default) multiplies each particle's
probability vector by its detector score (the heat map's probability of a particle centre, or the
LoG z-score); "none" weighs every particle 1. Why these defaults: on the development micrographs
(5 session-grouped folds, the learned detector; docs/micrographs.md) the rule chosen on four folds
and scored on the fifth was the same on every fold (min confidence 0.3, margin 0.02, score weights):
verdict accuracy 0.916 +- 0.036, against 0.870 +- 0.030 for the earlier rule (margin 0.10,
unweighted), 0.016 +- 0.012 below the verdict from the annotated boxes. The margin of 0.10 had made
28 of the 559 micrographs `uncertain`, and half of those led with the right class.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from virion.data.layout import BACKGROUND_CLASS

NONE = "none"
UNCERTAIN = "uncertain"
DEFAULT_MARGIN = 0.02
DEFAULT_MIN_PARTICLES = 1
# How particles weigh in the verdict (`particle_weights`): "score" (the detector's score) or "none".
DEFAULT_WEIGHT_BY = "score"
WEIGHT_BY = ("score", "none")


@dataclass
class Verdict:
    """The answer for one micrograph or specimen.

    verdict: a class name, `none` or `uncertain`; leading: the class with the largest summed
    probability (also when uncertain; "" when none); probability: its share; runner_up and
    runner_up_probability: the next class; particles: accepted particles; counts: particles per
    top class.
    """

    verdict: str
    leading: str = ""
    probability: float = 0.0
    runner_up: str = ""
    runner_up_probability: float = 0.0
    particles: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def counts_text(self) -> str:
        """`Class:n;...`, most particles first (ties by name)."""
        return ";".join(f"{name}:{n}" for name, n in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def describe(self) -> str:
        """One line for people: `Adenovirus (0.93; Adenovirus:5;Rotavirus:1)`."""
        if not self.particles:
            return self.verdict
        lead = f"{self.leading} " if self.verdict != self.leading else ""
        return f"{self.verdict} ({lead}{self.probability:.2f}; {self.counts_text()})"

    def row(self) -> dict:
        return {
            "verdict": self.verdict,
            "probability": f"{self.probability:.4f}" if self.particles else "",
            "runner_up": self.runner_up,
            "particles": self.particles,
            "counts": self.counts_text(),
            "leading": self.leading,
        }


def particle_weights(scores, weight_by: str = DEFAULT_WEIGHT_BY) -> np.ndarray | None:
    """Each particle's weight in the verdict: its detector score (a LoG z-score or a heat-map
    probability, > 0 for any accepted candidate) for "score", None (every particle 1) for "none"."""
    if weight_by not in WEIGHT_BY:
        raise ValueError(f"weight_by must be one of {', '.join(WEIGHT_BY)}, not {weight_by!r}")
    if weight_by == "none":
        return None
    return np.clip(np.asarray(scores, dtype=float).reshape(-1), 0.0, None)


def decide(
    probabilities: np.ndarray,
    class_names: list[str],
    *,
    weights=None,
    min_particles: int = DEFAULT_MIN_PARTICLES,
    margin: float = DEFAULT_MARGIN,
) -> Verdict:
    """The verdict from the (N, C) class probabilities of N accepted particles (the rule in the module docstring).

    weights: one non-negative weight per particle (`particle_weights`), multiplying its probability
    vector in the sums; None weighs every particle 1. Counts stay counts of particles.
    """
    probabilities = np.asarray(probabilities, dtype=float).reshape(-1, len(class_names))
    virus = [i for i, name in enumerate(class_names) if name != BACKGROUND_CLASS]
    if len(probabilities) == 0 or not virus:
        return Verdict(NONE)
    p = probabilities[:, virus]
    names = [class_names[i] for i in virus]
    top = np.argmax(p, axis=1)
    counts = Counter(names[i] for i in top)
    if weights is not None:
        w = np.asarray(weights, dtype=float).reshape(-1)
        if len(w) != len(p):
            raise ValueError(f"decide: {len(w)} weights for {len(p)} particles")
        p = p * np.clip(np.nan_to_num(w, nan=0.0), 0.0, None)[:, None]
    total = p.sum(axis=0)
    if not float(total.sum()) > 0:  # every weight zero: fall back to unweighted sums
        total = probabilities[:, virus].sum(axis=0)
    share = total / max(float(total.sum()), 1e-12)
    order = np.argsort(-share, kind="stable")
    lead = int(order[0])
    second = int(order[1]) if len(order) > 1 else None
    second_share = float(share[second]) if second is not None else 0.0
    supported = counts.get(names[lead], 0)
    certain = supported >= max(1, int(min_particles)) and float(share[lead]) - second_share >= margin
    return Verdict(
        verdict=names[lead] if certain else UNCERTAIN,
        leading=names[lead],
        probability=float(share[lead]),
        runner_up=names[second] if second is not None and share[second] > 0 else "",
        runner_up_probability=second_share,
        particles=len(p),
        counts=dict(counts),
    )

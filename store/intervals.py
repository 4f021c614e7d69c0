"""Confidence intervals of a mean score: a seeded percentile bootstrap over samples (pure).

A task score is the mean of per-sample scores; with a handful of samples it says little, so
every score row carries its sample count and a 95 % interval. The percentile bootstrap draws
`n_resamples` resamples of the samples with replacement (numpy's PCG64 seeded by `seed`, so a
rerun gives the same bounds) and takes the (1 - level) / 2 and (1 + level) / 2 quantiles of
their means. It makes no normality assumption (scores are often 0/1), but with very few
samples it is too narrow (n = 1 gives a zero-width interval) and is bounded by the observed
scores: all-zero samples give [0, 0]. Read the bounds with the sample count next to them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    n: int  # samples the interval is computed from
    mean: float
    low: float
    high: float
    level: float

    def overlaps(self, other: Interval) -> bool:
        """Whether the two intervals share a point: then the two means are not distinguishable
        at this level (a conservative reading: disjoint intervals are)."""
        return self.low <= other.high and other.low <= self.high


def bootstrap_interval(scores: Sequence[float], *, n_resamples: int = DEFAULT_RESAMPLES,
                       level: float = DEFAULT_LEVEL, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean of `scores` (see the module docstring)."""
    _check(scores, n_resamples, level)
    values = np.asarray(scores, dtype=np.float64)  # [n]
    rng = np.random.Generator(np.random.PCG64(seed))
    picks = rng.integers(0, values.size, size=(n_resamples, values.size))  # [resamples, n]
    means = values[picks].mean(axis=1)  # [resamples]
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(n=int(values.size), mean=float(values.mean()), low=float(low), high=float(high),
                    level=level)


def _check(scores: Sequence[float], n_resamples: int, level: float) -> None:
    problems = []
    if len(scores) == 0:
        problems.append("scores is empty (allowed: at least 1 sample)")
    elif not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scores):
        problems.append("scores must be finite numbers")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        problems.append(f"n_resamples={n_resamples!r} is out of range (allowed: integer >= 1)")
    if not isinstance(level, float) or not 0.0 < level < 1.0:
        problems.append(f"level={level!r} is out of range (allowed: a float in (0, 1))")
    if problems:
        raise ValueError("bootstrap_interval: " + "; ".join(problems))


__all__ = ["DEFAULT_LEVEL", "DEFAULT_RESAMPLES", "Interval", "bootstrap_interval"]

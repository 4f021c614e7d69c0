"""store.intervals: the seeded percentile bootstrap of a mean score."""

from __future__ import annotations

import math

import numpy as np
import pytest

from store.intervals import Interval, bootstrap_interval


def test_same_seed_same_bounds_other_seed_other_bounds():
    scores = [0.03, 0.91, 0.77, 0.12, 0.58, 0.5, 0.25, 0.99]
    a = bootstrap_interval(scores, n_resamples=500, seed=3)
    assert a == bootstrap_interval(scores, n_resamples=500, seed=3)
    b = bootstrap_interval(scores, n_resamples=500, seed=4)
    assert (a.low, a.high) != (b.low, b.high)
    assert a.n == 8 and a.mean == pytest.approx(sum(scores) / 8) and a.level == 0.95
    assert min(scores) <= a.low <= a.mean <= a.high <= max(scores)


def test_large_sample_matches_the_normal_approximation():
    # 400 fair 0/1 scores: the 95 % interval of the mean is about mean +- 1.96 * 0.5 / 20.
    scores = [float(i % 2) for i in range(400)]
    ci = bootstrap_interval(scores, n_resamples=4000, seed=0)
    half = 1.96 * math.sqrt(0.25 / 400)
    assert ci.low == pytest.approx(0.5 - half, abs=0.008)
    assert ci.high == pytest.approx(0.5 + half, abs=0.008)


def test_matches_scipy_percentile_bootstrap():
    from scipy.stats import bootstrap

    scores = np.random.default_rng(7).random(60)
    ours = bootstrap_interval(list(scores), n_resamples=20000, seed=1)
    theirs = bootstrap(scores[None, :], np.mean, n_resamples=20000, method="percentile",
                       confidence_level=0.95, random_state=1).confidence_interval
    assert ours.low == pytest.approx(theirs.low, abs=0.01)
    assert ours.high == pytest.approx(theirs.high, abs=0.01)


def test_more_samples_narrower_interval_and_constant_scores_zero_width():
    few = bootstrap_interval([0.0, 1.0] * 5, seed=0)
    many = bootstrap_interval([0.0, 1.0] * 200, seed=0)
    assert many.high - many.low < few.high - few.low
    flat = bootstrap_interval([1.0, 1.0, 1.0], seed=0)
    assert (flat.low, flat.high) == (1.0, 1.0)


def test_overlap():
    a = Interval(n=4, mean=0.5, low=0.2, high=0.6, level=0.95)
    assert a.overlaps(Interval(n=4, mean=0.7, low=0.6, high=0.9, level=0.95))
    assert not a.overlaps(Interval(n=4, mean=0.8, low=0.61, high=0.9, level=0.95))


@pytest.mark.parametrize("kwargs, needle", [
    (dict(scores=[]), "scores is empty"),
    (dict(scores=[0.5, math.nan]), "finite"),
    (dict(scores=[1.0], n_resamples=0), "n_resamples=0 is out of range"),
    (dict(scores=[1.0], level=1.0), "level=1.0 is out of range"),
])
def test_bad_input_is_named(kwargs, needle):
    scores = kwargs.pop("scores")
    with pytest.raises(ValueError, match=needle):
        bootstrap_interval(scores, **kwargs)

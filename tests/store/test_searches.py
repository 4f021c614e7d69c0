"""The pure figures of a search (`store.searches`): aggregation over shards, the budget
penalty, the chosen trial and the Pareto front."""

from __future__ import annotations

import math

import pytest

from store.searches import (
    UNMEASURED,
    UnitFigures,
    aggregate,
    best_trial,
    feasible,
    pareto_front,
    penalized,
    trials,
)


def unit(kl, bits, n=1, ppl=10.0):
    return UnitFigures(n_samples=n, kl=kl, perplexity=ppl, score=None, avg_bits=bits, kv_bytes=100.0 * bits)


def test_figures_are_item_weighted_and_perplexity_is_a_geometric_mean():
    fig = aggregate([unit(0.1, 2.0, n=1, ppl=10.0), unit(0.4, 4.0, n=3, ppl=1000.0)])
    assert fig.kl == pytest.approx((0.1 + 3 * 0.4) / 4)
    assert fig.avg_bits == pytest.approx((2.0 + 3 * 4.0) / 4)
    assert fig.perplexity == pytest.approx(math.exp((math.log(10) + 3 * math.log(1000)) / 4))
    assert aggregate([unit(None, 2.0)]).kl is None  # a unit that did not measure it


def test_the_penalty_grows_with_the_excess_and_keeps_feasible_values_unchanged():
    within, over, far = aggregate([unit(0.2, 2.9)]), aggregate([unit(0.1, 3.3)]), aggregate([unit(0.1, 4.0)])
    assert feasible(within, 3.0, None) and not feasible(over, 3.0, None)
    assert penalized(within, "kl", 3.0, None) == 0.2
    assert penalized(within, "kl", 3.0, None) < penalized(over, "kl", 3.0, None) < penalized(far, "kl", 3.0, None)
    assert not feasible(within, None, 100)  # 290 measured bytes > 100
    assert penalized(aggregate([unit(None, 2.0)]), "kl", 3.0, None) == UNMEASURED


def rows(config_id, shards, kl, bits, method="streamkv", minute=0):
    return [{"config_id": config_id, "method": method, "config_json": {"method": method}, "shard": f"{s}/4",
             "n_samples": 1, "kl": kl, "perplexity": 5.0, "avg_key_bits": bits, "avg_value_bits": bits,
             "kv_bytes": 10, "finished_at": minute + s, "status": "done"} for s in shards]


def test_the_choice_is_the_best_complete_trial_within_budget():
    data = (rows("partial", [0], 0.01, 2.0, minute=0) + rows("over", [0, 1], 0.02, 3.5, minute=10)
            + rows("ok", [0, 1], 0.05, 2.9, minute=20) + rows("worse", [0, 1], 0.09, 2.5, minute=30)
            + rows("ok", [2, 3], 0.06, 2.9, minute=40) + rows("base", [2, 3], 0.0, 16, method="none", minute=50))
    found = trials(data, (0, 1), (2, 3), 4)
    assert [t.config_id for t in found] == ["partial", "over", "ok", "worse", "base"]
    best = best_trial(found, "kl", 3.0, None)
    assert best.config_id == "ok" and best.holdout.kl == pytest.approx(0.06)
    assert next(t for t in found if t.config_id == "base").search.units == 0
    assert best_trial(found, "kl", 2.0, None) is None


def test_pareto_front_keeps_points_nothing_beats_in_both():
    points = [(0.5, 2.0), (0.3, 3.0), (0.4, 3.5), (0.1, 4.0), (0.5, 2.0)]
    assert pareto_front(points) == [0, 1, 3]

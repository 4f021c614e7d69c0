"""What a search's stored units say: per-trial figures, the Pareto front, the chosen trial.

Pure functions over `store.queries.result_frame` rows of one search (a sweep whose spec is a
search spec), shared by the `streamkv tune` driver (cluster/tune.py) and the dashboard's search view, so both
choose the same trial from the same rows. A trial is a config_id; its figures aggregate the
units of its shards: KL and score weighted by each unit's items (n_samples), perplexity as
exp of the item-weighted mean log perplexity (exact for equal-length windows), measured bits
as the item-weighted mean of (avg_key_bits + avg_value_bits) / 2, cache bytes as the
item-weighted mean bytes per item.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

OBJECTIVE_MODES = {"kl": "min", "perplexity": "min", "score": "max"}
# The search spec's default data split (cluster.tune_spec.DataSpec): here, so the dashboard,
# which reads a stored spec as the user wrote it, fills in the same defaults.
DEFAULT_SHARDS = 8
DEFAULT_SEARCH_SHARDS: tuple[int, ...] = (0, 1, 2, 3)
DEFAULT_HOLDOUT_SHARDS: tuple[int, ...] = (4, 5, 6, 7)
# A trial over its budget reports quality + this x (1 + |quality|) x its relative excess, so a
# model-based search learns where the budget is instead of seeing one flat penalty value.
PENALTY = 10.0
UNMEASURED = 1e9


@dataclass(frozen=True)
class UnitFigures:
    """One unit's figures (a search or held-apart shard of one config)."""

    n_samples: int
    kl: float | None
    perplexity: float | None
    score: float | None
    avg_bits: float | None
    kv_bytes: float | None


@dataclass(frozen=True)
class Figures:
    """A config's figures over some of its units."""

    units: int
    n_samples: int
    kl: float | None
    perplexity: float | None
    score: float | None
    avg_bits: float | None
    kv_bytes: float | None

    def value(self, objective: str) -> float | None:
        return getattr(self, objective)


def _weighted(pairs: Iterable[tuple[float | None, int]]) -> float | None:
    pairs = list(pairs)
    if not pairs or any(v is None or not math.isfinite(v) for v, _ in pairs):
        return None
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total if total else None


def aggregate(units: Sequence[UnitFigures]) -> Figures:
    n = [max(1, u.n_samples) for u in units]
    log_ppl = _weighted((None if u.perplexity is None else math.log(u.perplexity), w) for u, w in zip(units, n))
    return Figures(units=len(units), n_samples=sum(u.n_samples for u in units),
                   kl=_weighted((u.kl, w) for u, w in zip(units, n)),
                   perplexity=None if log_ppl is None else math.exp(log_ppl),
                   score=_weighted((u.score, w) for u, w in zip(units, n)),
                   avg_bits=_weighted((u.avg_bits, w) for u, w in zip(units, n)),
                   kv_bytes=_weighted((u.kv_bytes, w) for u, w in zip(units, n)))


def feasible(fig: Figures, max_avg_bits: float | None, max_cache_bytes: int | None) -> bool:
    """Within the budget, as measured (a budget the cache could not measure is not met)."""
    if max_avg_bits is not None and (fig.avg_bits is None or fig.avg_bits > max_avg_bits):
        return False
    if max_cache_bytes is not None and (fig.kv_bytes is None or fig.kv_bytes > max_cache_bytes):
        return False
    return True


def excess(fig: Figures, max_avg_bits: float | None, max_cache_bytes: int | None) -> float:
    """How far over its budget a config is, relative to the budget (0 when within it)."""
    over = 0.0
    if max_avg_bits is not None and fig.avg_bits is not None:
        over = max(over, fig.avg_bits / max_avg_bits - 1.0)
    if max_cache_bytes is not None and fig.kv_bytes is not None:
        over = max(over, fig.kv_bytes / max_cache_bytes - 1.0)
    return over


def penalized(fig: Figures, objective: str, max_avg_bits: float | None, max_cache_bytes: int | None) -> float:
    """The figure the search minimizes: the objective (negated score), plus the budget penalty."""
    value = fig.value(objective)
    if value is None:  # nothing measured: worse than anything measured (finite: Optuna refuses inf)
        return UNMEASURED
    signed = -value if OBJECTIVE_MODES[objective] == "max" else value
    if feasible(fig, max_avg_bits, max_cache_bytes):
        return signed
    return signed + PENALTY * (1.0 + abs(signed)) * max(excess(fig, max_avg_bits, max_cache_bytes), 1e-6)


# --- from store rows ----------------------------------------------------------------------------------
def unit_figures(row: Mapping[str, Any]) -> UnitFigures:
    """Figures of one `result_frame` row (or a mapping with the same names)."""
    def num(name: str) -> float | None:
        v = row.get(name)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    k, v = num("avg_key_bits"), num("avg_value_bits")
    return UnitFigures(n_samples=int(row.get("n_samples") or 0), kl=num("kl"), perplexity=num("perplexity"),
                       score=num("score"), avg_bits=None if k is None or v is None else (k + v) / 2,
                       kv_bytes=num("kv_bytes"))


def shard_index(shard: str) -> int:
    return int(str(shard).split("/")[0])


@dataclass(frozen=True)
class Trial:
    config_id: str
    method: str
    config: dict[str, Any]
    search: Figures  # over its search shards done so far
    complete: bool  # every search shard done
    finished_at: Any  # the last of its search units
    holdout: Figures | None  # over its held-apart shards, when evaluated


def trials(rows: Iterable[Mapping[str, Any]], search_shards: Sequence[int], holdout_shards: Sequence[int],
           shard_count: int) -> list[Trial]:
    """One `Trial` per config with units done, in the order its search units finished (the
    baseline has held-apart units only: its search figures are empty)."""
    by_config: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.get("status", "done") != "done":
            continue
        shard = str(row["shard"])
        if int(shard.split("/")[1]) != shard_count:
            continue
        entry = by_config.setdefault(row["config_id"], {"row": row, "search": {}, "holdout": {}})
        index = shard_index(shard)
        part = "search" if index in search_shards else "holdout" if index in holdout_shards else None
        if part:
            entry[part][index] = row
    out = []
    for cid, entry in by_config.items():
        search_rows = list(entry["search"].values())
        held = list(entry["holdout"].values())
        if not search_rows and not held:
            continue
        out.append(Trial(
            config_id=cid, method=entry["row"].get("method"), config=dict(entry["row"].get("config_json") or {}),
            search=aggregate([unit_figures(r) for r in search_rows]),
            complete=len(search_rows) == len(search_shards),
            finished_at=max(r.get("finished_at") for r in search_rows or held),
            holdout=aggregate([unit_figures(r) for r in held]) if len(held) == len(holdout_shards) else None))
    return sorted(out, key=lambda t: (t.finished_at is None, t.finished_at))


def is_baseline(t: Trial) -> bool:
    """The uncompressed reference of a search: evaluated on the held-apart shards only."""
    return t.search.units == 0


def best_trial(found: Sequence[Trial], objective: str, max_avg_bits: float | None,
               max_cache_bytes: int | None) -> Trial | None:
    """The complete, within-budget trial with the best objective on the search shards."""
    ok = [t for t in found if t.complete
          and feasible(t.search, max_avg_bits, max_cache_bytes) and t.search.value(objective) is not None]
    if not ok:
        return None
    sign = -1.0 if OBJECTIVE_MODES[objective] == "max" else 1.0
    return min(ok, key=lambda t: sign * t.search.value(objective))


def bit_allocation(config: Mapping[str, Any], n_layers: int | None = None) -> list[tuple[str, list[int]]]:
    """A config's normal bits per layer as picture rows (label, bits of layer 0..L-1): 'key' and
    'value', or 'key h0', 'key h1', ... for a per-head allocation; a uniform config fills
    `n_layers` layers with its normal bits (none when n_layers is not given)."""
    rows = []
    for kind in ("key", "value"):
        per_head, per_layer = config.get(f"head_{kind}_bits"), config.get(f"layer_{kind}_bits")
        if per_head:
            rows += [(f"{kind} h{h}", [int(layer[h]) for layer in per_head]) for h in range(len(per_head[0]))]
        elif per_layer:
            rows.append((kind, [int(b) for b in per_layer]))
        elif n_layers and config.get(f"{kind}_bits_normal") is not None:
            rows.append((kind, [int(config[f"{kind}_bits_normal"])] * n_layers))
    return rows


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (quality to minimize, bits to minimize) no other point beats in
    both (ties in both: the first), sorted by bits."""
    order = sorted(range(len(points)), key=lambda i: (points[i][1], points[i][0]))
    front, best = [], math.inf
    for i in order:
        if points[i][0] < best:
            front.append(i)
            best = points[i][0]
    return front


__all__ = ["Figures", "Trial", "UnitFigures", "aggregate", "best_trial", "bit_allocation", "excess", "feasible", "is_baseline", "pareto_front",
           "penalized", "trials", "unit_figures"]

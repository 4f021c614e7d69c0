"""The dashboard's view of a configuration search (`streamkv tune`): a sweep whose spec is a
search spec. Data shaping here is pure (frames in, frames out); `render` draws it.

- trials over time: each trial's objective on the search shards, in the order its last
  search unit finished, with the best within-budget value so far;
- quality vs measured bits, one point per trial, the Pareto front (lower both) marked, the
  budget as a rule;
- the chosen trial's bits per layer (keys and values) as a picture;
- the held-apart check: the chosen trial and the uncompressed baseline on the shards the
  search never saw, next to its search-shard figures.

The trials and the choice come from `store.searches`, the functions the driver uses, so
the view shows the trial the command chose.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from store.searches import (
    DEFAULT_HOLDOUT_SHARDS,
    DEFAULT_SEARCH_SHARDS,
    DEFAULT_SHARDS,
    Trial,
    best_trial,
    bit_allocation,
    feasible,
    is_baseline,
    pareto_front,
    trials,
)


@dataclass(frozen=True)
class SearchInfo:
    """What the view needs of a search spec (as stored with the sweep row)."""

    objective: str
    search_shards: tuple[int, ...]
    holdout_shards: tuple[int, ...]
    shards: int
    max_avg_bits: float | None
    max_cache_bytes: int | None


def search_info(spec: Mapping[str, Any] | None) -> SearchInfo | None:
    """None for a sweep that is not a search (its spec has no space / shard split)."""
    if not isinstance(spec, Mapping) or "space" not in spec:
        return None
    data = spec.get("data") or {}
    constraint = spec.get("constraint") or {}
    return SearchInfo(objective=str(spec.get("objective", "kl")),
                      search_shards=tuple(data.get("search_shards", DEFAULT_SEARCH_SHARDS)),
                      holdout_shards=tuple(data.get("holdout_shards", DEFAULT_HOLDOUT_SHARDS)),
                      shards=int(data.get("shards", DEFAULT_SHARDS)),
                      max_avg_bits=constraint.get("max_avg_bits"), max_cache_bytes=constraint.get("max_cache_bytes"))


def search_trials(results: pd.DataFrame, info: SearchInfo) -> list[Trial]:
    return trials(results.to_dict("records"), info.search_shards, info.holdout_shards, info.shards)


def chosen(found: list[Trial], info: SearchInfo) -> Trial | None:
    return best_trial(found, info.objective, info.max_avg_bits, info.max_cache_bytes)


def trial_frame(found: list[Trial], info: SearchInfo) -> pd.DataFrame:
    """One row per trial (not the baseline): order, figures, budget, Pareto membership, and
    the best within-budget objective so far."""
    rows = [{"trial": i + 1, "config_id": t.config_id, "finished_at": t.finished_at,
             "objective": t.search.value(info.objective), "avg_bits": t.search.avg_bits,
             "kv_bytes": t.search.kv_bytes, "shards": t.search.units, "complete": t.complete,
             "within_budget": feasible(t.search, info.max_avg_bits, info.max_cache_bytes)}
            for i, t in enumerate(t for t in found if not is_baseline(t))]
    frame = pd.DataFrame(rows, columns=["trial", "config_id", "finished_at", "objective", "avg_bits", "kv_bytes",
                                        "shards", "complete", "within_budget"])
    if frame.empty:
        return frame.assign(pareto=pd.Series(dtype=bool), best_so_far=pd.Series(dtype=float))
    sign = -1.0 if info.objective == "score" else 1.0
    ok = frame.dropna(subset=["objective", "avg_bits"])
    front = {ok.index[i] for i in pareto_front(list(zip(sign * ok["objective"], ok["avg_bits"])))}
    frame["pareto"] = frame.index.isin(front)
    eligible = frame["objective"].where(frame["within_budget"] & frame["complete"]) * sign
    frame["best_so_far"] = eligible.cummin().ffill() * sign
    return frame


def layer_bits_frame(config: Mapping[str, Any], n_layers: int | None = None) -> pd.DataFrame:
    """Long frame (layer, kind, bits) of a config's normal bits per layer (`kind`: key / value,
    or key h0, ... per KV head): `store.searches.bit_allocation`."""
    rows = [{"layer": i, "kind": label, "bits": b} for label, bits in bit_allocation(config, n_layers)
            for i, b in enumerate(bits)]
    return pd.DataFrame(rows, columns=["layer", "kind", "bits"])


def holdout_table(best: Trial | None, baseline: Trial | None, objective: str) -> pd.DataFrame:
    """The held-apart check: search vs held-apart figures of the chosen trial and the baseline."""
    rows = []
    for label, t in (("chosen", best), ("uncompressed (none)", baseline)):
        if t is None:
            continue
        for part, fig in (("search shards", t.search), ("held-apart shards", t.holdout)):
            if fig is not None and fig.units:
                rows.append({"config": f"{label} {t.config_id}", "data": part, objective: fig.value(objective),
                             "perplexity": fig.perplexity, "kl": fig.kl, "measured bits": fig.avg_bits,
                             "items": fig.n_samples})
    return pd.DataFrame(rows)


# --- drawing --------------------------------------------------------------------------------------------
def render(results: pd.DataFrame, info: SearchInfo) -> None:
    import altair as alt
    import streamlit as st

    found = search_trials(results, info)
    frame = trial_frame(found, info)
    best = chosen(found, info)
    baseline = next((t for t in found if is_baseline(t)), None)
    if frame.empty:
        st.info("No trial of this search has finished a search shard yet.")
        return
    budget = (f"budget {info.max_avg_bits:g} measured bits" if info.max_avg_bits is not None else
              f"budget {info.max_cache_bytes} cache bytes" if info.max_cache_bytes is not None else "no budget")
    st.caption(f"{len(frame)} trial(s) · objective {info.objective} · {budget} · search shards "
               f"{list(info.search_shards)}, held apart {list(info.holdout_shards)} of {info.shards}")
    y = alt.Y("objective:Q", title=f"{info.objective} (search shards)", scale=alt.Scale(zero=False))
    over_time = alt.Chart(frame).mark_point(filled=True).encode(
        x=alt.X("trial:Q", title="trial (by finish time)"), y=y,
        color=alt.Color("within_budget:N", title="within budget"),
        tooltip=["config_id", "objective", "avg_bits", "shards"])
    best_line = alt.Chart(frame.dropna(subset=["best_so_far"])).mark_line(color="gray").encode(
        x="trial:Q", y="best_so_far:Q")
    st.altair_chart(alt.layer(over_time, best_line).properties(height=300, title="Trials over time"),
                    width="stretch")
    scatter = alt.Chart(frame).mark_point(size=80, filled=True).encode(
        x=alt.X("avg_bits:Q", title="measured bits (K/V mean)", scale=alt.Scale(zero=False)), y=y,
        shape=alt.Shape("pareto:N", title="Pareto front"), color=alt.Color("within_budget:N"),
        tooltip=["config_id", "objective", "avg_bits", "shards"])
    front = alt.Chart(frame[frame["pareto"]].sort_values("avg_bits")).mark_line(strokeDash=[4, 2], color="gray") \
        .encode(x="avg_bits:Q", y="objective:Q")
    layers = [front, scatter]
    if info.max_avg_bits is not None:
        layers.append(alt.Chart(pd.DataFrame({"avg_bits": [info.max_avg_bits]})).mark_rule(color="red")
                      .encode(x="avg_bits:Q"))
    st.altair_chart(alt.layer(*layers).properties(height=360, title="Quality vs measured bits"),
                    width="stretch")
    st.dataframe(frame, hide_index=True, width="stretch")
    if best is None:
        st.info("No trial has completed its search shards within the budget yet.")
        return
    st.markdown(f"**Chosen trial** `{best.config_id}`")
    bits = layer_bits_frame(best.config)
    if not bits.empty:
        st.altair_chart(alt.Chart(bits).mark_rect().encode(
            x=alt.X("layer:O"), y=alt.Y("kind:N"), color=alt.Color("bits:O", scale=alt.Scale(scheme="viridis")),
            tooltip=["layer", "kind", "bits"]).properties(height=60 + 20 * bits["kind"].nunique(),
                                                            title="Bits per layer of the chosen trial"),
            width="stretch")
    st.dataframe(holdout_table(best, baseline, info.objective), hide_index=True, width="stretch")


__all__ = ["SearchInfo", "chosen", "holdout_table", "layer_bits_frame", "render", "search_info", "search_trials",
           "trial_frame"]

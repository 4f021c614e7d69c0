"""streamkv results dashboard (Streamlit): read-only views of the results store.

    streamlit run dashboard/app.py -- --db sqlite:///results/streamkv.db --blobs results/blobs

or set STREAMKV_DB / STREAMKV_BLOBS. Reads only through `store` (queries + BlobStore) on a
read-only engine; no SQL is built from user input. Data shaping lives in dashboard/views.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run dashboard/app.py` from anywhere
    sys.path.insert(0, str(ROOT))

import altair as alt
import pandas as pd
import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from dashboard import search_view
from dashboard import views as v
from store import BlobError, BlobStore, StoreError, UnitKey, readonly_engine
from store import queries as q
from store.db import DEFAULT_URL, safe_url

DEFAULT_BLOBS = "results/blobs"
CACHE_TTL_S = 60


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """--db / --blobs after `--`; env STREAMKV_DB / STREAMKV_BLOBS; then the defaults."""
    p = argparse.ArgumentParser(prog="dashboard/app.py", add_help=False, allow_abbrev=False)
    p.add_argument("--db", default=os.environ.get("STREAMKV_DB") or DEFAULT_URL)
    p.add_argument("--blobs", default=os.environ.get("STREAMKV_BLOBS") or DEFAULT_BLOBS)
    args, _unknown = p.parse_known_args(list(argv))
    return args


# --- cached store access (keyed by URL + sweep) -----------------------------------------------
@st.cache_resource(show_spinner=False)
def engine_for(url: str) -> Any:
    return readonly_engine(url)


@st.cache_resource(show_spinner=False)
def blobs_for(uri: str) -> BlobStore:
    return BlobStore(uri)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner="Loading sweeps…")
def load_sweeps(url: str) -> pd.DataFrame:
    return q.list_sweeps(engine_for(url))


@st.cache_data(ttl=CACHE_TTL_S, show_spinner="Loading results…")
def load_sweep(url: str, sweep_id: str) -> v.SweepData:
    return v.load_sweep_data(engine_for(url), sweep_id)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def load_config_labels(url: str, sweep_id: str) -> dict[str, str]:
    record = q.get_sweep(engine_for(url), sweep_id)
    return v.config_labels(record.spec if record else None)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner="Loading unit status…")
def load_health(url: str, sweep_id: str) -> dict[str, pd.DataFrame]:
    return v.load_health(engine_for(url), sweep_id)


@st.cache_data(ttl=10 * CACHE_TTL_S, show_spinner="Loading traces…")
def load_traces(url: str, blobs_uri: str, key: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    return v.load_unit_traces(engine_for(url), blobs_for(blobs_uri), UnitKey(*key))


# --- widgets bound to the URL's query parameters ----------------------------------------------
def qp_choice(label: str, name: str, options: Sequence[Any], state: dict[str, Any],
              fmt: Any = str, where: Any = st) -> Any:
    """A selectbox whose initial value comes from ?name=..., recorded back into `state`."""
    opts = list(options)
    wanted = st.query_params.get(name)
    labels = [str(o) for o in opts]
    index = labels.index(wanted) if wanted in labels else 0
    value = where.selectbox(label, opts, index=index, format_func=fmt, key=f"sel_{name}")
    state[name] = str(value)
    return value


def qp_multi(label: str, name: str, options: Sequence[Any], state: dict[str, Any]) -> list[Any]:
    """A multiselect (default: all) initialised from ?name=a&name=b."""
    given = v.parse_labels(st.query_params.get_all(name), options)
    chosen = st.sidebar.multiselect(label, list(options), default=given or list(options),
                                    format_func=v.value_label, key=f"f_{name}")
    if len(chosen) < len(options):  # "all" stays out of the URL
        state[name] = [v.value_label(c) for c in chosen]
    return chosen


# --- views ------------------------------------------------------------------------------------
def tooltip(fields: Sequence[str]) -> list[alt.Tooltip]:
    return [alt.Tooltip("config_id:N", title="config"), alt.Tooltip("method:N"),
            # field= rather than "name:N": a method's field name is not ours to parse
            *[alt.Tooltip(field=f, type="nominal") for f in fields if f != "method"],
            alt.Tooltip("y:Q", title="value", format=".4f")]


def quality_view(scores: pd.DataFrame, fields: list[str], state: dict[str, Any]) -> None:
    c1, c2 = st.columns(2)
    metric = qp_choice("Quality metric", "metric", list(v.METRICS), state, where=c1)
    x = qp_choice("Memory measure", "x", list(v.MEMORY_AXES), state, where=c2,
                  fmt=lambda k: v.MEMORY_AXES[k][0].split(" (")[0])
    (y_title, y_up), (x_title, x_up) = v.METRICS[metric], v.MEMORY_AXES[x]
    pts = v.quality_points(scores, metric, fields).dropna(subset=["y", x])
    if pts.empty:
        st.info(f"No '{metric}' values for the current selection.")
        return
    pts["pareto"] = v.pareto_front(pts, x, "y", x_higher_better=x_up, y_higher_better=y_up)
    xs, ys = (alt.X(f"{x}:Q", title=x_title, scale=alt.Scale(zero=False)),
              alt.Y("y:Q", title=y_title, scale=alt.Scale(zero=False)))
    points = alt.Chart(pts).mark_point(size=90, filled=True).encode(
        x=xs, y=ys, color=alt.Color("method:N", title="Method"),
        shape=alt.Shape("pareto:N", title="On Pareto front"), tooltip=tooltip(fields))
    front = alt.Chart(pts[pts["pareto"]].sort_values(x)).mark_line(
        strokeDash=[4, 2], color="gray").encode(x=xs, y=ys, order=f"{x}:Q")
    layers = [front, points]
    bars = pts.dropna(subset=["y_low", "y_high"])
    if len(bars):  # the score of one task: its 95 % bootstrap interval over samples
        layers.append(alt.Chart(bars).mark_rule().encode(
            x=xs, y=alt.Y("y_low:Q", title=y_title), y2="y_high:Q", color=alt.Color("method:N"),
            tooltip=[*tooltip(fields), alt.Tooltip("y_low:Q", title="95% low", format=".2f"),
                     alt.Tooltip("y_high:Q", title="95% high", format=".2f"), alt.Tooltip("n:Q")]))
    base = v.baseline_value(pts)
    if base is not None:
        layers.append(alt.Chart(pd.DataFrame({"y": [base], "label": ["fp16 baseline"]}))
                      .mark_rule(color="red", strokeDash=[6, 3]).encode(
                          y=alt.Y("y:Q", title=y_title),
                          tooltip=[alt.Tooltip("label:N"), alt.Tooltip("y:Q", format=".4f")]))
    st.altair_chart(alt.layer(*layers).properties(
        height=420, title=f"{metric} vs {x} (one point per config; dashed red: uncompressed)"),
        width="stretch")
    if metric == "score":
        note = v.not_distinguishable_note(pts)
        st.caption((note + " " if note else "") + (
            "Error bars: 95 % bootstrap intervals over samples." if len(bars) else
            "Select one task to see each score's 95 % interval (a mean over tasks has none)."))
    cols = ["model_id", "config_id", "method", *[f for f in fields if f != "method"],
            "y", "y_low", "y_high", "n", "avg_bits", "compression_ratio", "tasks", "pareto"]
    shown = pts[[c for c in cols if c in pts.columns]]
    if not len(bars):
        shown = shown.drop(columns=["y_low", "y_high"], errors="ignore")
    st.dataframe(shown.rename(columns={"y": metric, "y_low": "95% low", "y_high": "95% high"}),
                 hide_index=True, width="stretch")


def ablation_view(scores: pd.DataFrame, fields: list[str], state: dict[str, Any]) -> None:
    axes = fields or ["method"]
    axis = qp_choice("Ablation axis", "axis", axes, state)
    table = v.ablation_table(scores, axis, fields)
    if table.empty:
        st.info("No task scores for the current selection.")
        return
    if scores["baseline_score"].isna().all():
        st.warning("This sweep has no finished uncompressed baseline (method='none') for these "
                   "tasks: deltas are empty.")
    st.caption("Score per task and its delta against the uncompressed (method='none') score "
               "of the same sweep, model and task; 'avg' columns are the mean over tasks.")
    st.dataframe(table, hide_index=True, width="stretch", key="ablation_table")
    st.download_button("Download CSV", v.table_csv(table), file_name=f"ablation_{axis}.csv",
                       mime="text/csv", key="ablation_csv")
    intervals = v.task_intervals(scores)
    if len(intervals):
        interval_chart(intervals)


def interval_chart(intervals: pd.DataFrame) -> None:
    """Each task's score per config with its 95 % interval, and which ones overlap."""
    title = "Task score (95 % bootstrap interval)"
    y = alt.Y("y:Q", title=title, scale=alt.Scale(zero=False))
    x = alt.X("config_id:N", title="config", sort=None)
    base = alt.Chart(intervals)
    chart = alt.layer(
        base.mark_rule().encode(x=x, y=alt.Y("y_low:Q", title=title), y2="y_high:Q",
                                color=alt.Color("method:N", title="Method")),
        base.mark_point(filled=True, size=70).encode(
            x=x, y=y, color="method:N",
            tooltip=["config_id:N", "method:N", "task:N", alt.Tooltip("y:Q", format=".2f"),
                     alt.Tooltip("y_low:Q", title="95% low", format=".2f"),
                     alt.Tooltip("y_high:Q", title="95% high", format=".2f"), "n:Q"]),
    ).properties(height=260).facet(column=alt.Column("task:N", title=None))
    st.altair_chart(chart)
    for task, rows in intervals.groupby("task", sort=True):
        note = v.not_distinguishable_note(rows)
        if note:
            st.caption(f"{task}: {note}")


def trace_view(url: str, blobs_uri: str, results: pd.DataFrame, state: dict[str, Any]) -> None:
    if results.empty:
        st.info("No finished units to show traces for.")
        return
    c1, c2, c3 = st.columns(3)
    cfg = qp_choice("Config", "trace_config", sorted(results["config_id"].unique()), state,
                    where=c1, fmt=lambda c: f"{c} ({results.loc[results.config_id == c, 'method'].iloc[0]})")
    rows = results[results["config_id"] == cfg]
    task = qp_choice("Task", "trace_task", sorted(rows["task"].unique()), state, where=c2)
    rows = rows[rows["task"] == task]
    shard = qp_choice("Shard (unit)", "trace_shard", sorted(rows["shard"].unique()), state, where=c3)
    row = rows[rows["shard"] == shard].iloc[0]
    key = tuple(str(row[c]) for c in ("sweep_id", "model_id", "config_id", "task", "shard"))
    try:
        tables = load_traces(url, blobs_uri, key)
    except (BlobError, KeyError) as exc:
        st.error(f"Cannot read this unit's trace blobs: {exc}")
        return
    outliers, summary = tables.get("outlier_channels"), tables.get("layer_summary")
    if outliers is None or outliers.empty:
        st.info("This unit has no outlier-channel trace (methods without channel statistics, "
                "e.g. none / int8 / kivi, store empty traces).")
        return
    kind = st.radio("Cache tensor", ["key", "value"], horizontal=True, key="trace_kind")
    heat = v.outlier_heatmap(outliers, kind)
    st.altair_chart(alt.Chart(heat).mark_rect().encode(
        x=alt.X("head:O", title="KV head (index)"), y=alt.Y("layer:O", title="Layer (index)"),
        color=alt.Color("outlier_channels:Q", title="Outlier channels (count/sample)"),
        tooltip=["layer:O", "head:O", alt.Tooltip("outlier_channels:Q", format=".2f")],
    ).properties(height=360, title=f"Outlier channels per layer x head ({kind}s)"),
        width="stretch")
    if summary is not None and not summary.empty:
        head_dim = None
        if "head_dim" not in summary.columns:  # traces written before head_dim was recorded
            head_dim = int(st.number_input("Channels per head (head_dim)", min_value=1, step=1,
                                           value=v.guess_head_dim(outliers), key="head_dim"))
        ratio = v.layer_outlier_ratio(summary, head_dim)
        st.altair_chart(alt.Chart(ratio).mark_bar().encode(
            x=alt.X("layer:O", title="Layer (index)"),
            y=alt.Y("outlier_ratio:Q", title="Outlier ratio (fraction of channels)"),
            color=alt.Color("kind:N", title="Tensor"), xOffset="kind:N",
            tooltip=["layer:O", "kind:N", alt.Tooltip("outlier_ratio:Q", format=".3f")],
        ).properties(height=300, title="Outlier ratio per layer"), width="stretch")


def niah_heatmap(grid: pd.DataFrame, difference: bool) -> alt.FacetChart:
    """Context length x needle depth per config: the score, or its difference against none."""
    field, title = ("score_delta", "Score − none (points)") if difference else ("score", "Score (0-100)")
    scale = (alt.Scale(scheme="redblue", domain=[-100, 100]) if difference
             else alt.Scale(scheme="viridis", domain=[0, 100]))
    base = alt.Chart(grid).encode(
        x=alt.X("depth:O", title="needle depth (%)"),
        y=alt.Y("context_length:O", title="Context length (tokens)", sort="descending"))
    rect = base.mark_rect().encode(
        color=alt.Color(f"{field}:Q", title=title, scale=scale),
        tooltip=["config:N", "context_length:O", "depth:O", alt.Tooltip("score:Q", format=".1f"),
                 alt.Tooltip("score_delta:Q", title="score − none", format=".1f"), "n_samples:Q"])
    text = base.mark_text(fontSize=12).encode(text=alt.Text(f"{field}:Q", format=".0f"),
                                              color=alt.value("black"))
    return alt.layer(rect, text).properties(width=130, height=150).facet(
        facet=alt.Facet("config:N", title=None), columns=5)


def ruler_view(cells: pd.DataFrame, state: dict[str, Any]) -> None:
    st.caption("RULER's synthetic tasks (string match: the share of the references found in the "
               "prediction, 0-100) at context lengths in the model's tokens; the needle-in-a-"
               "haystack grid has one unit per context length x needle depth.")
    niah_tasks = sorted(cells.loc[cells["depth"].notna(), "ruler_task"].unique())
    if niah_tasks:
        task = qp_choice("NIAH task", "niah_task", niah_tasks, state)
        grid = v.niah_grid(cells, task)
        shown = qp_choice("Heatmap of", "niah_show", ["score", "difference vs none"], state)
        difference = shown != "score"
        if difference and grid["score_delta"].isna().all():
            st.warning("No finished uncompressed (method='none') cells: no difference to show.")
        st.altair_chart(niah_heatmap(grid, difference).properties(
            title=f"{task}: {'score − none' if difference else 'score'} per cell"))
        st.dataframe(grid, hide_index=True, width="stretch", key="niah_grid")
    table = v.ruler_table(cells)
    if not table.empty:
        st.markdown("**RULER table** (score per task, by config and context length)")
        st.dataframe(table, hide_index=True, width="stretch", key="ruler_table")
        st.download_button("Download CSV", v.table_csv(table), file_name="ruler.csv", mime="text/csv",
                           key="ruler_csv")


def health_view(health: dict[str, pd.DataFrame]) -> None:
    counts = v.health_summary(health["units"])
    cols = st.columns(5)
    for col, status in zip(cols, ("done", "failed", "running", "pending", "skipped")):
        col.metric(f"Units {status}", counts[status])
    fails = v.failure_table(health["failures"])
    if fails.empty:
        st.success("No failed units.")
    else:
        st.warning(f"{len(fails)} unit(s) failed or are waiting for a retry after an error.")
        st.dataframe(fails, hide_index=True, width="stretch", key="failures")
        for _, f in fails.head(5).iterrows():
            with st.expander(f"{f['config_id']} · {f['task']} · shard {f['shard']} ({f['status']})"):
                st.code(str(f["error"]), language=None)
    tp = health["throughput"]
    if tp.empty:
        st.info("No finished units yet: no throughput to show.")
        return
    st.altair_chart(alt.Chart(tp).mark_bar().encode(
        x=alt.X("bucket:T", title="Finished at (UTC, 5-minute buckets)"),
        y=alt.Y("units:Q", title="Units finished (count per bucket)"),
        tooltip=["bucket:T", "units:Q", "samples:Q", "cumulative_units:Q"],
    ).properties(height=260, title="Throughput over time"), width="stretch")


# --- page -------------------------------------------------------------------------------------
def sidebar_filters(data: v.SweepData, state: dict[str, Any]) -> tuple[pd.DataFrame, list[str]]:
    scores = data.task_scores
    fields = v.varying_fields(scores)
    selection = {c: qp_multi(c.replace("_", " ").capitalize(), c, v.options_of(scores, c), state)
                 for c in [*v.FILTER_BASICS, *[f for f in fields if f != "method"]]
                 if c in scores.columns}
    return v.apply_filters(scores, selection), fields


def render(url: str, blobs_uri: str) -> None:
    st.title("streamkv results")
    sweeps = load_sweeps(url)
    if sweeps.empty:
        st.info("The results store has no sweeps yet. Run a sweep (e.g. `streamkv sweep ...`) "
                f"writing to {safe_url(url)}, then press Refresh.")
        return
    state: dict[str, Any] = {}
    names = dict(zip(sweeps["sweep_id"], sweeps["name"]))
    sweep_id = qp_choice("Sweep", "sweep", list(sweeps["sweep_id"]), state, where=st.sidebar,
                         fmt=lambda s: f"{names[s]} ({s})")
    info = sweeps[sweeps["sweep_id"] == sweep_id].iloc[0]
    st.subheader(f"{info['name']} · {sweep_id}")
    st.caption(f"status {info['status']} · {info['n_units']} units · store {safe_url(url)}")
    data, health = load_sweep(url, sweep_id), load_health(url, sweep_id)
    n_failed = int(info["n_failed"])
    if n_failed:
        st.warning(f"{n_failed} unit(s) of this sweep failed: see the Sweep health tab for "
                   "their error text.")
    if data.task_scores.empty:
        st.info("This sweep has no finished units yet: only its health is shown.")
        health_view(health)
        st.query_params.from_dict(state)
        return
    scores, fields = sidebar_filters(data, state)
    m = st.columns(4)
    m[0].metric("Units done", int(info["n_done"]))
    m[1].metric("Units failed", n_failed)
    m[2].metric("Configs shown", int(scores["config_id"].nunique()))
    mean = scores["score"].mean()
    m[3].metric("Mean score (selection)", "—" if pd.isna(mean) else f"{mean:.4f}")
    cells = v.ruler_cells(scores, load_config_labels(url, sweep_id))
    record = q.get_sweep(engine_for(url), sweep_id)
    search = search_view.search_info(record.spec if record else None)  # None: not a `streamkv tune` search
    extra_tabs = (["RULER / NIAH"] if len(cells) else []) + (["Search"] if search else [])
    tabs = st.tabs(["Quality vs memory", "Ablation", "Outlier traces", "Sweep health"] + extra_tabs)
    with tabs[0]:
        quality_view(scores, fields, state)
    with tabs[1]:
        ablation_view(scores, fields, state)
    with tabs[2]:
        shown = data.results[data.results["config_id"].isin(scores["config_id"])]
        trace_view(url, blobs_uri, shown, state)
    with tabs[3]:
        health_view(health)
    extra = iter(tabs[4:])
    if len(cells):
        with next(extra):
            ruler_view(cells, state)
    if search:
        with next(extra):
            search_view.render(data.results, search)
    st.query_params.from_dict(state)


def main() -> None:
    st.set_page_config(page_title="streamkv results", layout="wide")
    args = parse_args(sys.argv[1:])
    if st.sidebar.button("Refresh data"):
        st.cache_data.clear()
    try:
        render(args.db, args.blobs)
    except StoreError as exc:
        st.error(str(exc))
    except SQLAlchemyError as exc:
        st.error(f"Cannot read the results database {safe_url(args.db)}: "
                 f"{str(getattr(exc, 'orig', exc)).splitlines()[0]} (is it a streamkv store? "
                 "create or migrate it with the store's create_store_engine / upgrade).")


main()

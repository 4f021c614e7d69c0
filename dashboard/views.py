"""Data shaping of the dashboard: pure functions from store frames to tables and chart data.

Nothing here imports Streamlit; `load_sweep_data` / `load_health` / `load_unit_traces` are the
only functions that touch the store (through `store.queries`), and app.py wraps them in
Streamlit's caches. Everything else takes and returns pandas DataFrames and is tested directly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy.engine import Engine

from store import BlobStore, UnitKey
from store import queries as q

# metric -> (axis title with units, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "score": ("Task score (task metric, higher is better)", True),
    "perplexity": ("Perplexity (lower is better)", False),
    "kl": ("KL divergence to fp16 (nats/token, lower is better)", False),
    "top1_agreement": ("Top-1 agreement with fp16 (fraction, higher is better)", True),
}
# memory measure -> (axis title with units, higher is better)
MEMORY_AXES: dict[str, tuple[str, bool]] = {
    "avg_bits": ("Average KV bits (bits per element, key/value mean)", False),
    "compression_ratio": ("Compression ratio (x vs fp16 KV bytes)", True),
}
BASELINE_METHOD = "none"
FILTER_BASICS: tuple[str, ...] = ("model_id", "task", "method")


# --- store reads (thin; cached by app.py) -----------------------------------------------------
@dataclass
class SweepData:
    # Both with config_json and one column per config field (store.queries.expand_config).
    results: pd.DataFrame  # v_unit_results rows of the sweep (one per finished unit)
    task_scores: pd.DataFrame  # v_task_scores rows of the sweep


def load_sweep_data(engine: Engine, sweep_id: str) -> SweepData:
    """What the first view needs: unit results and per-task scores of one sweep."""
    return SweepData(results=q.result_frame(engine, sweep_id=sweep_id),
                     task_scores=q.baseline_deltas(engine, sweep_id=sweep_id))


def load_health(engine: Engine, sweep_id: str, freq: str = "5min") -> dict[str, pd.DataFrame]:
    return {"units": q.unit_status(engine, sweep_id), "failures": q.failures(engine, sweep_id),
            "throughput": q.throughput(engine, sweep_id, freq=freq)}


def load_unit_traces(engine: Engine, blobs: BlobStore, key: UnitKey) -> dict[str, pd.DataFrame]:
    """A unit's trace tables by kind (sha256-verified by the BlobStore)."""
    return {kind: blobs.get_table(ref).to_pandas()
            for kind, ref in sorted(q.trace_refs(engine, key).items())}


# --- filters ----------------------------------------------------------------------------------
def varying_fields(frame: pd.DataFrame, candidates: Sequence[str] | None = None) -> list[str]:
    """Config fields (default: every config field column of the frame, whatever the method)
    with more than one distinct value; NULL, i.e. a config without the field, counts as one."""
    names = q.config_columns(frame) if candidates is None else candidates
    return [c for c in names if c in frame.columns
            and frame[c].astype("object").map(value_label).nunique() > 1]


def options_of(frame: pd.DataFrame, column: str) -> list[Any]:
    """Distinct values of a column, sorted, None last."""
    values = list(dict.fromkeys(frame[column].astype("object").where(frame[column].notna(), None)))
    present = sorted((v for v in values if v is not None), key=lambda v: (str(type(v)), v))
    return present + ([None] if None in values else [])


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def value_label(value: Any) -> str:
    """How a filter shows a value (and writes it to the URL): "—" for a missing one."""
    return "—" if _missing(value) else str(value)


def parse_labels(labels: Sequence[str], options: Sequence[Any]) -> list[Any]:
    """The options whose `value_label` is in `labels` (query-parameter strings back to values)."""
    wanted = set(labels)
    return [o for o in options if value_label(o) in wanted]


def apply_filters(frame: pd.DataFrame, selection: Mapping[str, Sequence[Any]]) -> pd.DataFrame:
    """Rows whose column values are all selected; columns not in the frame are ignored."""
    mask = pd.Series(True, index=frame.index)
    for column, allowed in selection.items():
        if column not in frame.columns:
            continue
        labels = {value_label(v) for v in allowed}
        mask &= frame[column].astype("object").map(value_label).isin(labels)
    return frame[mask]


# --- quality vs memory ------------------------------------------------------------------------
def quality_points(task_scores: pd.DataFrame, metric: str, fields: Sequence[str] = ()) -> pd.DataFrame:
    """One point per model x config: `metric` and memory averaged over the selected tasks.

    For the score of a single task, y_low / y_high are its stored 95 % interval and n its
    sample count; NaN otherwise (a mean over tasks has no stored interval)."""
    cols = ["model_id", "config_id", "method", *[f for f in fields if f not in ("method",)]]
    if task_scores.empty:
        return pd.DataFrame(columns=[*cols, "y", "avg_bits", "compression_ratio", "tasks", "y_low",
                                     "y_high", "n"])
    df = task_scores.assign(avg_bits=(task_scores["avg_key_bits"] + task_scores["avg_value_bits"]) / 2)
    for name in ("score_ci_low", "score_ci_high", "n_samples"):
        if name not in df.columns:
            df[name] = float("nan")
    keys = [c for c in cols if c in df.columns]
    grouped = df.astype({c: "object" for c in keys}).groupby(keys, dropna=False, sort=True)
    out = grouped.agg(y=(metric, "mean"), avg_bits=("avg_bits", "mean"),
                      compression_ratio=("compression_ratio", "mean"),
                      tasks=("task", "nunique"), y_low=("score_ci_low", "mean"),
                      y_high=("score_ci_high", "mean"), n=("n_samples", "sum")).reset_index()
    single = (out["tasks"] == 1) & (metric == "score")
    out.loc[~single, ["y_low", "y_high"]] = float("nan")
    return out


def indistinguishable_pairs(points: pd.DataFrame) -> list[tuple[str, str]]:
    """(label, label) of the points of one model whose 95 % intervals overlap: their scores are
    not distinguishable at that level. Labels are "method config_id"; points without an
    interval are left out."""
    have = points.dropna(subset=["y_low", "y_high"]) if {"y_low", "y_high"} <= set(points.columns) \
        else points.iloc[0:0]
    rows = list(have.itertuples(index=False))
    pairs = []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            if a.model_id == b.model_id and a.y_low <= b.y_high and b.y_low <= a.y_high:
                pairs.append((f"{a.method} {a.config_id}", f"{b.method} {b.config_id}"))
    return pairs


def pareto_front(points: pd.DataFrame, x: str, y: str, *, x_higher_better: bool,
                 y_higher_better: bool) -> pd.Series:
    """Boolean mask of the non-dominated rows (NaN rows are never on the front).

    A row is dominated when another is at least as good on both axes and better on one.
    """
    xs = points[x].astype(float) * (1 if x_higher_better else -1)
    ys = points[y].astype(float) * (1 if y_higher_better else -1)
    valid = xs.notna() & ys.notna()
    mask = pd.Series(False, index=points.index)
    for i in points.index[valid]:
        better_eq = (xs[valid] >= xs[i]) & (ys[valid] >= ys[i])
        strictly = (xs[valid] > xs[i]) | (ys[valid] > ys[i])
        mask[i] = not (better_eq & strictly).any()
    return mask


def baseline_value(points: pd.DataFrame) -> float | None:
    """Mean y of the uncompressed (method='none') points, None when absent."""
    base = points.loc[points["method"] == BASELINE_METHOD, "y"].dropna()
    return float(base.mean()) if len(base) else None


# --- ablation ---------------------------------------------------------------------------------
def ablation_table(task_scores: pd.DataFrame, axis: str, fields: Sequence[str] = ()) -> pd.DataFrame:
    """One row per model x config, sorted by `axis`: each task's score and its delta against
    the uncompressed baseline of the sweep, then the mean over tasks of both."""
    index = ["model_id", axis, *[f for f in fields if f != axis], "config_id"]
    index = list(dict.fromkeys(c for c in index if c in task_scores.columns))
    if task_scores.empty:
        return pd.DataFrame(columns=[*index, "avg score", "avg delta"])
    df = task_scores.astype({c: "object" for c in index})
    # The 95 % interval and sample count of each score, where the rows carry them.
    ci = "score_ci_low" in df.columns and df["score_ci_low"].notna().any()
    values = ["score", "score_delta", *(["score_ci_low", "score_ci_high", "n_samples"] if ci else [])]
    wide = (df.groupby([*index, "task"], dropna=False, sort=False)[values]
            .mean().unstack("task"))
    tasks = sorted(df["task"].unique())
    out = pd.DataFrame(index=wide.index)
    for t in tasks:
        out[f"{t} score"] = wide[("score", t)]
        out[f"{t} delta"] = wide[("score_delta", t)]
        if ci:
            out[f"{t} 95% CI"] = [interval_label(lo, hi) for lo, hi in
                                  zip(wide[("score_ci_low", t)], wide[("score_ci_high", t)])]
            out[f"{t} n"] = wide[("n_samples", t)]
    out["avg score"] = out[[f"{t} score" for t in tasks]].mean(axis=1)
    out["avg delta"] = out[[f"{t} delta" for t in tasks]].mean(axis=1)
    out = out.reset_index()
    # Missing values (None, or the NaN groupby turns them into) last; NaN would not sort.
    order = out[axis].map(lambda v: (_missing(v), str(type(v)), 0 if _missing(v) else v))
    return out.iloc[sorted(range(len(out)), key=lambda i: (order.iloc[i], out["config_id"].iloc[i]))
                    ].reset_index(drop=True)


def task_intervals(task_scores: pd.DataFrame) -> pd.DataFrame:
    """One row per model x config x task with a stored interval: y (score), y_low, y_high, n."""
    cols = ["model_id", "config_id", "method", "task", "y", "y_low", "y_high", "n"]
    if task_scores.empty or "score_ci_low" not in task_scores.columns:
        return pd.DataFrame(columns=cols)
    out = task_scores.rename(columns={"score": "y", "score_ci_low": "y_low", "score_ci_high": "y_high",
                                      "n_samples": "n"})
    return out.dropna(subset=["y", "y_low", "y_high"])[cols].reset_index(drop=True)


def not_distinguishable_note(points: pd.DataFrame, limit: int = 8) -> str | None:
    """A sentence naming the pairs of `indistinguishable_pairs(points)`, None when none."""
    pairs = indistinguishable_pairs(points)
    if not pairs:
        return None
    shown = "; ".join(f"{a} vs {b}" for a, b in pairs[:limit])
    more = f" (and {len(pairs) - limit} more)" if len(pairs) > limit else ""
    return f"Not distinguishable (95 % intervals overlap): {shown}{more}."


def interval_label(low: Any, high: Any) -> str:
    """"[low, high]" with one decimal, "—" when either bound is missing."""
    return "—" if _missing(low) or _missing(high) else f"[{float(low):.1f}, {float(high):.1f}]"


def table_csv(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=False).encode("utf-8")


# --- traces -----------------------------------------------------------------------------------
def outlier_heatmap(outliers: pd.DataFrame, kind: str) -> pd.DataFrame:
    """layer x head grid (every pair of the observed layer and head ranges) with the outlier
    channel count, averaged over samples when the table has a sample_id column."""
    cols = ["layer", "head", "outlier_channels"]
    sel = outliers[outliers["kind"] == kind] if "kind" in outliers.columns else outliers
    if sel.empty:
        return pd.DataFrame(columns=cols)
    n_samples = sel["sample_id"].nunique() if "sample_id" in sel.columns else 1
    counts = sel.groupby(["layer", "head"]).size() / max(n_samples, 1)
    layers = range(int(outliers["layer"].min()), int(outliers["layer"].max()) + 1)
    heads = range(int(outliers["head"].min()), int(outliers["head"].max()) + 1)
    grid = pd.MultiIndex.from_product([layers, heads], names=["layer", "head"])
    return counts.reindex(grid, fill_value=0.0).rename("outlier_channels").reset_index()


def guess_head_dim(outliers: pd.DataFrame) -> int:
    """Smallest power of two above the largest channel index seen (at least 8)."""
    top = int(outliers["channel"].max()) + 1 if len(outliers) else 1
    return max(8, 1 << (top - 1).bit_length())


def layer_outlier_ratio(summary: pd.DataFrame, head_dim: int | None = None) -> pd.DataFrame:
    """Per layer and kind: outlier channels / (heads x head_dim), mean over samples. head_dim
    comes from the trace's own column; the argument is for traces without one."""
    cols = ["layer", "kind", "outlier_ratio", "outlier_channels"]
    if summary.empty:
        return pd.DataFrame(columns=cols)
    heads = summary["heads"] if "heads" in summary.columns else 1
    dims = summary["head_dim"] if "head_dim" in summary.columns else head_dim
    if dims is None:
        raise ValueError("layer_summary has no head_dim column: pass head_dim")
    df = summary.assign(outlier_ratio=summary["outlier_channels"] / (heads * dims))
    out = df.groupby(["layer", "kind"], as_index=False).agg(
        outlier_ratio=("outlier_ratio", "mean"), outlier_channels=("outlier_channels", "mean"))
    return out[cols]


# --- health -----------------------------------------------------------------------------------
def health_summary(units: pd.DataFrame) -> dict[str, int]:
    """Unit counts by status plus total."""
    counts = {s: 0 for s in ("done", "failed", "running", "pending", "skipped")}
    if not units.empty:
        for status, n in units["status"].value_counts().items():
            counts[str(status)] = int(n)
    counts["total"] = len(units)
    return counts


def failure_table(failures: pd.DataFrame) -> pd.DataFrame:
    cols = ["model_id", "config_id", "task", "shard", "status", "attempts", "worker", "error"]
    return failures[[c for c in cols if c in failures.columns]].reset_index(drop=True)


# --- RULER and needle-in-a-haystack -----------------------------------------------------------
def config_labels(spec: Mapping[str, Any] | None) -> dict[str, str]:
    """config_id -> the label the sweep spec gave it ("preset streamkv-4", "points[0]"...),
    with the "preset " prefix dropped; empty when the spec does not list its configs."""
    configs = (spec or {}).get("configs") or []
    return {str(c["config_id"]): str(c.get("label") or c["config_id"]).removeprefix("preset ")
            for c in configs if isinstance(c, Mapping) and "config_id" in c}


def ruler_cells(task_scores: pd.DataFrame, labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The RULER rows of v_task_scores with their cell split out of the stored task name
    (`store.cells.cell_name`): ruler_task, context_length, depth (None outside the NIAH
    grid), and `config`, a display label per config (the spec's label, else method + id)."""
    from store.cells import parse_cell

    cols = ["ruler_task", "context_length", "depth", "config"]
    if task_scores.empty:
        return task_scores.assign(**{c: pd.Series(dtype="object") for c in cols})
    cells = task_scores["task"].map(parse_cell)
    df = task_scores[cells.notna()].copy()
    parsed = cells[cells.notna()]
    df["ruler_task"] = [c[0] for c in parsed]
    df["context_length"] = [c[1] for c in parsed]
    df["depth"] = pd.Series([c[2] for c in parsed], index=df.index, dtype="object")
    names = labels or {}
    df["config"] = [names.get(cid) or f"{method} {cid}" for cid, method in zip(df["config_id"], df["method"])]
    return df


def niah_grid(cells: pd.DataFrame, task: str) -> pd.DataFrame:
    """One row per config x context length x depth of a NIAH task: score (0-100) and
    score_delta, its difference against the sweep's uncompressed (method='none') score of the
    same cell (NaN where that baseline has not finished)."""
    cols = ["model_id", "config", "config_id", "method", "context_length", "depth", "score",
            "score_delta", "n_samples"]
    sel = cells[(cells["ruler_task"] == task) & cells["depth"].notna()] if len(cells) else cells
    if sel.empty:
        return pd.DataFrame(columns=cols)
    out = sel.assign(depth=sel["depth"].astype(int), context_length=sel["context_length"].astype(int))
    return out[cols].sort_values(["config", "context_length", "depth"]).reset_index(drop=True)


def ruler_table(cells: pd.DataFrame) -> pd.DataFrame:
    """RULER's table: one row per model x config x context length, one column per task (the
    string-match score, 0-100), then their mean; the NIAH grid's cells (with a depth) are
    left out, as they measure one depth each rather than the task."""
    index = ["model_id", "config", "context_length"]
    sel = cells[cells["depth"].isna()] if len(cells) else cells
    if sel.empty:
        return pd.DataFrame(columns=[*index, "avg"])
    wide = sel.pivot_table(index=index, columns="ruler_task", values="score", aggfunc="mean")
    wide.columns = [str(c).removeprefix("ruler_") for c in wide.columns]
    wide["avg"] = wide.mean(axis=1)
    return wide.reset_index().sort_values(["model_id", "context_length", "config"]).reset_index(drop=True)

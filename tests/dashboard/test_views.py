"""dashboard.views on hand-built frames and on the demo store."""

from __future__ import annotations

import pandas as pd
import pytest
# At import time `conftest` is this folder's (pytest imports it first); inside a test it may be
# another folder's by then, so every name is taken here.
from conftest import (
    NIAH_DEPTHS,
    NIAH_LENGTHS,
    RULER_CONFIGS,
    RULER_SWEEP_ID,
    SCORES,
    SWEEP_ID,
    TOY_SCORES,
    TOY_SWEEP_ID,
    niah_score,
)

from dashboard import views as v
from store import readonly_engine


def test_pareto_front_exact() -> None:
    pts = pd.DataFrame({"x": [2.0, 3.0, 4.0, 4.0, 16.0, 5.0, float("nan")],
                        "y": [0.50, 0.45, 0.70, 0.60, 0.80, 0.70, 0.99]})
    front = v.pareto_front(pts, "x", "y", x_higher_better=False, y_higher_better=True)
    # (3, .45) dominated by (2, .5); (4, .6) by (4, .7); (5, .7) by (4, .7); NaN never on it
    assert front.tolist() == [True, False, True, False, True, False, False]
    # compression ratio (higher better) and perplexity (lower better)
    pts2 = pd.DataFrame({"x": [1.0, 3.0, 3.0, 6.0], "y": [10.0, 11.0, 12.0, 11.0]})
    front2 = v.pareto_front(pts2, "x", "y", x_higher_better=True, y_higher_better=False)
    assert front2.tolist() == [True, False, False, True]


def test_quality_points_and_baseline() -> None:
    ts = pd.DataFrame({"model_id": ["m"] * 4, "config_id": ["a", "a", "b", "b"],
                       "method": ["none", "none", "streamkv", "streamkv"],
                       "task": ["t1", "t2", "t1", "t2"], "score": [0.8, 0.6, 0.7, 0.5],
                       "avg_key_bits": [16.0, 16.0, 4.0, 4.0], "avg_value_bits": [16.0] * 2 + [2.0] * 2,
                       "compression_ratio": [1.0, 1.0, 4.0, 4.0]})
    pts = v.quality_points(ts, "score").set_index("config_id")
    assert pts.loc["a", "y"] == pytest.approx(0.7) and pts.loc["b", "y"] == pytest.approx(0.6)
    assert pts.loc["b", "avg_bits"] == 3.0 and pts.loc["b", "tasks"] == 2
    assert v.baseline_value(pts.reset_index()) == pytest.approx(0.7)


def test_ablation_deltas_exact() -> None:
    ts = pd.DataFrame({
        "model_id": ["m"] * 6, "config_id": ["base", "base", "on", "on", "off", "off"],
        "sink_protection": [True, True, True, True, False, False],
        "task": ["qa", "sum"] * 3, "score": [0.8, 0.6, 0.75, 0.6, 0.5, 0.4],
        "score_delta": [0.0, 0.0, -0.05, 0.0, -0.3, -0.2]})
    table = v.ablation_table(ts, "sink_protection")
    assert list(table.columns) == ["model_id", "sink_protection", "config_id", "qa score",
                                   "qa delta", "sum score", "sum delta", "avg score", "avg delta"]
    assert table["config_id"].tolist() == ["off", "base", "on"]  # sorted by axis, then id
    off = table.iloc[0]
    assert (off["qa delta"], off["sum delta"]) == (-0.3, -0.2)
    assert off["avg score"] == pytest.approx(0.45) and off["avg delta"] == pytest.approx(-0.25)
    assert table.iloc[2]["avg delta"] == pytest.approx(-0.025)
    assert v.table_csv(table).decode().splitlines()[0].startswith("model_id,sink_protection")


def test_heatmap_shape_and_counts() -> None:
    rows = [("s0", 0, "key", 0, 3), ("s0", 0, "key", 0, 9), ("s1", 0, "key", 0, 3),
            ("s0", 2, "key", 3, 1), ("s0", 1, "value", 1, 7)]
    df = pd.DataFrame(rows, columns=["sample_id", "layer", "kind", "head", "channel"])
    heat = v.outlier_heatmap(df, "key")
    assert heat.shape == (3 * 4, 3)  # layers 0..2 x heads 0..3, zeros filled
    cell = heat.set_index(["layer", "head"])["outlier_channels"]
    assert cell[(0, 0)] == 1.5 and cell[(2, 3)] == 0.5 and cell[(1, 1)] == 0.0
    assert v.guess_head_dim(df) == 16
    summ = pd.DataFrame({"sample_id": ["s0", "s1"], "layer": [0, 0], "kind": ["key"] * 2,
                         "heads": [2, 2], "outlier_channels": [4, 2]})
    ratio = v.layer_outlier_ratio(summ, head_dim=16)
    assert ratio["outlier_ratio"].tolist() == [pytest.approx(3 / 32)]
    # Traces that record head_dim use it, whatever the argument.
    ratio = v.layer_outlier_ratio(summ.assign(head_dim=64), head_dim=16)
    assert ratio["outlier_ratio"].tolist() == [pytest.approx(3 / 128)]


def test_filters_and_labels() -> None:
    df = pd.DataFrame({"task": ["a", "b", "c"], "ema_decay": [0.9, None, 0.5]})
    opts = v.options_of(df, "ema_decay")
    assert opts == [0.5, 0.9, None]
    assert v.parse_labels(["0.9", "—"], opts) == [0.9, None]
    out = v.apply_filters(df, {"task": ["a", "b"], "ema_decay": [None], "absent": [1]})
    assert out["task"].tolist() == ["b"]


def test_demo_store_frames(demo_store) -> None:
    engine = readonly_engine(demo_store["db_url"])
    try:
        data = v.load_sweep_data(engine, SWEEP_ID)
        health = v.load_health(engine, SWEEP_ID)
    finally:
        engine.dispose()
    fields = v.varying_fields(data.task_scores)
    assert {"method", "sink_protection", "outlier_detection", "key_bits_normal"} <= set(fields)
    table = v.ablation_table(data.task_scores, "sink_protection", fields)
    nosink = table[table["sink_protection"] == False].iloc[0]
    qa, summ, _, _ = SCORES["skv4_nosink"]
    assert nosink["qa delta"] == pytest.approx(qa - SCORES["none"][0])
    assert nosink["summary delta"] == pytest.approx(summ - SCORES["none"][1])
    counts = v.health_summary(health["units"])
    assert (counts["done"], counts["failed"], counts["running"], counts["pending"]) == (20, 2, 1, 1)
    assert "CUDA out of memory" in v.failure_table(health["failures"])["error"].iloc[0]


def test_fields_of_an_unknown_method_are_filters_and_ablation_axes(demo_store) -> None:
    engine = readonly_engine(demo_store["db_url"])
    try:
        data = v.load_sweep_data(engine, TOY_SWEEP_ID)
    finally:
        engine.dispose()
    scores = data.task_scores
    fields = v.varying_fields(scores)
    # chunk_size varies too: the toy method does not chunk (None) and the baseline does (512)
    assert fields == ["method", "chunk_size", "toy_scale"]
    assert v.options_of(scores, "toy_scale") == [0.5, 1.0, 2.0, None]
    picked = v.apply_filters(scores, {"toy_scale": v.parse_labels(["2.0"], [0.5, 1.0, 2.0])})
    assert picked["score"].mean() == pytest.approx(sum(TOY_SCORES["toy2.0"][:2]) / 2)
    assert scores["score"].mean() == pytest.approx(
        sum(qa + summ for qa, summ, _, _ in TOY_SCORES.values()) / 8)
    table = v.ablation_table(scores, "toy_scale", fields)
    assert table["toy_scale"].tolist()[:3] == [0.5, 1.0, 2.0]
    assert v.value_label(table["toy_scale"].iloc[3]) == "—"  # the baseline has none: last
    assert table["qa delta"].iloc[0] == pytest.approx(TOY_SCORES["toy0.5"][0] - TOY_SCORES["none"][0])


def test_ruler_views_on_the_demo_store(demo_store) -> None:
    from store import queries as q

    engine = readonly_engine(demo_store["db_url"])
    try:
        data = v.load_sweep_data(engine, RULER_SWEEP_ID)
        labels = v.config_labels(q.get_sweep(engine, RULER_SWEEP_ID).spec)
    finally:
        engine.dispose()
    assert sorted(labels.values()) == sorted(RULER_CONFIGS)
    cells = v.ruler_cells(data.task_scores, labels)
    assert len(cells) == len(data.task_scores) == 3 * (len(NIAH_LENGTHS) * len(NIAH_DEPTHS) + 2)
    grid = v.niah_grid(cells, "ruler_niah_single_1")
    assert len(grid) == 3 * 6 and set(grid["depth"]) == set(NIAH_DEPTHS)
    for _, row in grid.iterrows():
        assert row["score"] == niah_score(row["config"], row["context_length"], row["depth"])
        # the difference against none of the same cell (none scores 100 everywhere)
        assert row["score_delta"] == pytest.approx(row["score"] - 100.0)
    worst = grid.loc[grid["score_delta"].idxmin()]
    assert (worst["config"], worst["context_length"], worst["depth"]) == ("streamkv-2", 2048, 50)
    table = v.ruler_table(cells)
    assert list(table.columns) == ["model_id", "config", "context_length", "cwe", "vt", "avg"]
    by_config = table.set_index("config")
    assert by_config.loc["none", "vt"] == 80.0 and by_config.loc["streamkv-2", "cwe"] == 20.0
    assert by_config.loc["streamkv-4", "avg"] == pytest.approx(65.0)


def test_ruler_views_ignore_other_tasks() -> None:
    ts = pd.DataFrame({"task": ["qa", "ruler_vt@ctx1024", "ruler_vt@ctx1024x"], "config_id": ["a"] * 3,
                       "method": ["none"] * 3, "model_id": ["m"] * 3, "score": [1.0, 50.0, 9.0],
                       "score_delta": [0.0] * 3, "n_samples": [1] * 3})
    cells = v.ruler_cells(ts)
    assert cells["task"].tolist() == ["ruler_vt@ctx1024"] and cells["config"].tolist() == ["none a"]
    assert v.niah_grid(cells, "ruler_niah_single_1").empty
    assert v.ruler_table(v.ruler_cells(ts.iloc[:1])).empty
    assert v.config_labels(None) == {} and v.config_labels({"configs": [{"config_id": "x"}]}) == {"x": "x"}


def test_score_intervals_of_one_task_and_overlaps() -> None:
    ts = pd.DataFrame({"model_id": ["m"] * 6, "config_id": ["a", "a", "b", "b", "c", "c"],
                       "method": ["none", "none", "streamkv", "streamkv", "kivi", "kivi"],
                       "task": ["t1", "t2"] * 3, "score": [80.0, 60.0, 70.0, 50.0, 30.0, 40.0],
                       "score_ci_low": [70.0, 50.0, 62.0, 40.0, 20.0, 30.0],
                       "score_ci_high": [90.0, 70.0, 78.0, 60.0, 40.0, 49.0], "n_samples": [8] * 6,
                       "avg_key_bits": [16.0] * 2 + [4.0] * 4, "avg_value_bits": [16.0] * 2 + [4.0] * 4,
                       "compression_ratio": [1.0] * 2 + [4.0] * 4})
    one = v.quality_points(ts[ts["task"] == "t1"], "score").set_index("config_id")
    assert (one.loc["b", "y_low"], one.loc["b", "y_high"], one.loc["b", "n"]) == (62.0, 78.0, 8)
    assert v.indistinguishable_pairs(one.reset_index()) == [("none a", "streamkv b")]
    assert v.not_distinguishable_note(one.reset_index()) == (
        "Not distinguishable (95 % intervals overlap): none a vs streamkv b.")
    both = v.quality_points(ts, "score")  # a mean over two tasks has no stored interval
    assert both["y_low"].isna().all() and v.indistinguishable_pairs(both) == []
    per_task = v.task_intervals(ts)
    assert len(per_task) == 6 and set(per_task.columns) >= {"y", "y_low", "y_high", "n", "task"}
    t2 = per_task[per_task["task"] == "t2"]
    assert v.indistinguishable_pairs(t2) == [("none a", "streamkv b"), ("streamkv b", "kivi c")]
    table = v.ablation_table(ts.assign(score_delta=0.0), "method")
    assert table.set_index("config_id").loc["c", "t1 95% CI"] == "[20.0, 40.0]"
    assert table.set_index("config_id").loc["c", "t1 n"] == 8


def test_toy_store_intervals(demo_store) -> None:
    engine = readonly_engine(demo_store["db_url"])
    try:
        scores = v.load_sweep_data(engine, TOY_SWEEP_ID).task_scores
    finally:
        engine.dispose()
    qa = v.quality_points(scores[scores["task"] == "qa"], "score")
    assert qa["y_low"].notna().all() and (qa["y_low"] < qa["y"]).all() and (qa["y"] < qa["y_high"]).all()
    pairs = v.indistinguishable_pairs(qa)
    assert len(pairs) == 1 and {p.split()[0] for p in pairs[0]} == {"none", "toy"}

"""Reads: the views' numbers on a hand-built sweep, filters, traces, status tables."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import insert, text

from store import BlobCorruptedError, UnitKey, UnsafeBlobPathError, register_sweep
from store import mark_failed, write_unit_result
from store import queries
from store.repository import blobs_t
from tests.store.conftest import NONE, cid, config_dict, streamkv_config

CONFIGS = {"NONE": NONE, "SKV2": streamkv_config(2), "SKV4": streamkv_config(4)}
NONE, SKV2, SKV4 = "NONE", "SKV2", "SKV4"  # names: a dict cannot be part of a dict key
# (model, config, task, shard) -> (score, n_samples); all values exact in binary floating point.
UNITS = {
    ("m", NONE, "qa", "0/2"): (0.5, 2),
    ("m", NONE, "qa", "1/2"): (1.0, 2),      # baseline qa: (1 + 2) / 4 = 0.75
    ("m", SKV2, "qa", "0/2"): (0.25, 1),
    ("m", SKV2, "qa", "1/2"): (0.5, 3),      # streamkv-2 qa: (0.25 + 1.5) / 4 = 0.4375
    ("m", SKV4, "qa", "0/2"): (0.75, 4),     # one shard only: 0.75
    ("m", SKV2, "sum", "0/1"): (0.125, 8),   # no baseline for task "sum"
    ("m2", NONE, "qa", "0/1"): (0.5, 10),
    ("m2", SKV2, "qa", "0/1"): (0.625, 10),  # m2 has its own baseline: +0.125
}


@pytest.fixture
def filled(engine, blobs, make_result):
    keys = {spec: UnitKey("hand", spec[0], cid(CONFIGS[spec[1]]), spec[2], spec[3])
            for spec in UNITS}
    register_sweep(engine, "hand", "hand-built", {"note": "exact numbers"}, list(keys.values()),
                   list(CONFIGS.values()))
    for i, (spec, key) in enumerate(keys.items()):
        score, n = UNITS[spec]
        write_unit_result(engine, blobs, make_result(key, CONFIGS[spec[1]], score=score,
                                                     n_samples=n, tag=str(i), minute=i * 7))
    return keys


def _delta_rows(frame: pd.DataFrame) -> dict[tuple[str, str, str], tuple[float, float]]:
    return {(r.model_id, r.method + str(r.key_bits_normal), r.task): (r.score, r.score_delta)
            for r in frame.itertuples()}


def test_task_scores_weight_shards_and_subtract_the_baseline_exactly(engine, filled):
    rows = _delta_rows(queries.baseline_deltas(engine, sweep_id="hand"))
    assert rows[("m", "none16", "qa")] == (0.75, 0.0)
    assert rows[("m", "streamkv2", "qa")] == (0.4375, -0.3125)
    assert rows[("m", "streamkv4", "qa")] == (0.75, 0.0)
    assert rows[("m2", "streamkv2", "qa")] == (0.625, 0.125)
    score, delta = rows[("m", "streamkv2", "sum")]
    assert score == 0.125 and math.isnan(delta)  # no baseline -> NULL
    with engine.connect() as conn:  # the view itself, as a plain SQL user sees it
        row = conn.execute(text(
            "SELECT n_shards, n_samples, score, baseline_score, score_delta FROM v_task_scores "
            "WHERE model_id = 'm' AND method = 'streamkv' "
            "AND CAST(config_json->>'key_bits_normal' AS INTEGER) = 2 "
            "AND task = 'qa'")).one()
        assert tuple(row) == (2, 4, 0.4375, 0.75, -0.3125)
        assert conn.execute(text("SELECT score_delta FROM v_task_scores WHERE task = 'sum'")
                            ).scalar() is None


def test_result_frame_filters_on_known_columns_only(engine, filled):
    frame = queries.result_frame(engine, sweep_id="hand")
    assert len(frame) == len(UNITS) and frame["sweep_name"].unique().tolist() == ["hand-built"]
    assert frame["finished_at"].dt.tz is not None
    two_bit = queries.result_frame(engine, models="m", filters={"key_bits_normal": [2]})
    assert sorted(two_bit["score"]) == [0.125, 0.25, 0.5]
    assert set(two_bit["method"]) == {"streamkv"}
    none_qa = queries.result_frame(engine, tasks=["qa"], methods="none",
                                   filters={"outlier_threshold_abs": [None]})
    assert len(none_qa) == 3
    assert queries.result_frame(engine, models="m' OR '1'='1").empty  # values are bound
    with pytest.raises(ValueError, match="unknown filter column"):
        queries.result_frame(engine, filters={"1=1; DROP TABLE units; --": [1]})
    scored = queries.baseline_deltas(engine, filters={"key_bits_normal": 4})
    assert scored["method"].tolist() == ["streamkv"]


def test_fields_of_any_method_become_columns_and_filters(engine, blobs, filled, make_result):
    # A method the store has never heard of, with a field no built-in method has, and one
    # whose name is taken by a view column.
    toy = {scale: config_dict("toy", chunk_size=None, toy_scale=scale, score="high")
           for scale in (0.5, 2.0)}
    keys = {scale: UnitKey("hand", "m", cid(c), "qa", "0/1") for scale, c in toy.items()}
    register_sweep(engine, "hand", "hand-built", {}, list(keys.values()), list(toy.values()))
    for (scale, key), score in zip(keys.items(), (0.25, 0.5)):
        write_unit_result(engine, blobs, make_result(key, toy[scale], score=score))
    scores = queries.baseline_deltas(engine, sweep_id="hand", methods="toy")
    assert scores.set_index("toy_scale")["score_delta"].to_dict() == {0.5: -0.5, 2.0: -0.25}
    assert scores["chunk_size"].isna().all() and set(scores["config_score"]) == {"high"}
    assert "key_bits_normal" not in scores  # no toy config has it
    assert queries.config_columns(scores) == ["method", "chunk_size", "quantize_current_chunk",
                                              "config_score", "toy_scale"]
    picked = queries.result_frame(engine, filters={"toy_scale": 2.0})
    assert picked["score"].tolist() == [0.5] and picked["config_id"].tolist() == [keys[2.0].config_id]
    # streamkv configs lack toy_scale: for them it is NULL, which None selects
    assert len(queries.result_frame(engine, methods="streamkv", filters={"toy_scale": [None]})) == 5
    assert queries.result_frame(engine, methods="streamkv", filters={"toy_scale": 0.5}).empty
    with pytest.raises(ValueError, match="unknown filter column.*toy_scael"):
        queries.result_frame(engine, filters={"toy_scael": 0.5})


def test_sweep_and_unit_tables(engine, filled):
    sweeps = queries.list_sweeps(engine)
    assert sweeps.loc[0, "sweep_id"] == "hand" and sweeps.loc[0, "n_done"] == len(UNITS)
    key = filled[("m", SKV2, "qa", "0/2")]
    mark_failed(engine, key, "Traceback: worker lost", final=True)
    status = queries.unit_status(engine, "hand")
    assert len(status) == len(UNITS)
    assert status.set_index("shard").loc["0/2"].shape[0] == 3
    failed = queries.unit_status(engine, "hand", statuses="failed")
    assert failed["error"].tolist() == ["Traceback: worker lost"]
    assert queries.failures(engine)["error"].tolist() == ["Traceback: worker lost"]
    metrics = queries.metric_frame(engine, "hand", metrics=["score"])
    assert len(metrics) == len(UNITS)
    assert len(queries.samples_frame(engine, key)) == 1


def test_throughput_buckets_finished_units(engine, filled):
    frame = queries.throughput(engine, "hand", freq="15min")
    assert frame["units"].sum() == len(UNITS)
    assert frame["samples"].sum() == sum(n for _, n in UNITS.values())
    assert frame["cumulative_units"].iloc[-1] == len(UNITS)
    assert (frame["bucket"].diff().dropna() == timedelta(minutes=15)).all()
    assert queries.throughput(engine, "nothing").empty


def test_traces_load_through_the_blob_store_and_corruption_is_named(engine, blobs, filled):
    key = filled[("m", NONE, "qa", "1/2")]
    refs = queries.trace_refs(engine, key)
    assert set(refs) == {"outlier_channels"}
    table = queries.load_trace(engine, blobs, key, "outlier_channels")
    assert table.num_rows == refs["outlier_channels"].row_count == 8
    with pytest.raises(KeyError, match="no trace 'scales'"):
        queries.load_trace(engine, blobs, key, "scales")
    path = Path(blobs.path_of(refs["outlier_channels"].uri))
    path.write_bytes(path.read_bytes()[:-20] + b"x" * 20)
    with pytest.raises(BlobCorruptedError, match=refs["outlier_channels"].uri):
        queries.load_trace(engine, blobs, key, "outlier_channels")


def test_a_row_pointing_outside_the_blob_root_is_refused(engine, blobs, filled, tmp_path):
    key = filled[("m", NONE, "qa", "0/2")]
    secret = tmp_path / "secret.parquet"
    secret.write_bytes(b"not yours")
    unit_id = int(queries.result_frame(engine, models="m", tasks="qa", methods="none",
                                       filters={"shard": "0/2"})["unit_id"].iloc[0])
    with engine.begin() as conn:
        conn.execute(insert(blobs_t).values(
            unit_id=unit_id, kind="evil", uri="../secret.parquet", sha256="0" * 64, bytes=9,
            row_count=0, schema_json="[]", created_at=datetime.now(timezone.utc)))
    with pytest.raises(UnsafeBlobPathError):
        queries.load_trace(engine, blobs, key, "evil")


def test_a_task_run_as_several_shards_gets_the_interval_of_its_pooled_samples(engine, blobs, filled, make_result):
    from dataclasses import replace

    from store.intervals import bootstrap_interval

    # make_result's samples score i % 2: shards of (m, none, qa) hold [0, 1] and [0, 1];
    # (m, streamkv-2, qa): [0] and [0, 1, 0]
    rows = queries.baseline_deltas(engine, sweep_id="hand").set_index(["model_id", "config_id", "task"])
    for name, pooled in ((NONE, [0, 1, 0, 1]), (SKV2, [0, 0, 1, 0])):
        ci = bootstrap_interval([float(v) for v in pooled], seed=0)  # the units' seed
        row = rows.loc[("m", cid(CONFIGS[name]), "qa")]
        assert row["n_shards"] == 2 and ci.high > ci.low
        assert (row["score_ci_low"], row["score_ci_high"]) == pytest.approx((100 * ci.low, 100 * ci.high))
    # one shard: the view's own interval (none was computed for these hand-built rows), untouched
    assert math.isnan(rows.loc[("m", cid(CONFIGS[SKV4]), "qa"), "score_ci_low"])
    # the view itself (and pooled=False) leaves several shards NULL: shard intervals do not combine
    plain = queries.baseline_deltas(engine, sweep_id="hand", pooled=False)
    assert plain.loc[plain["n_shards"] > 1, "score_ci_low"].isna().all()

    # a shard without per-sample scores: the pooled mean would not be the task score, so no interval
    keys = [UnitKey("unscored", "m", cid(CONFIGS[NONE]), "qa", f"{i}/2") for i in range(2)]
    register_sweep(engine, "unscored", "unscored", {}, keys, [CONFIGS[NONE]])
    for i, key in enumerate(keys):
        result = make_result(key, CONFIGS[NONE], n_samples=3)
        if i == 1:
            result = replace(result, samples=[replace(s, score=None) for s in result.samples])
        write_unit_result(engine, blobs, result)
    unscored = queries.baseline_deltas(engine, sweep_id="unscored")
    assert unscored["n_shards"].tolist() == [2] and unscored["score_ci_low"].isna().all()

"""Writes: sweep registration, unit lifecycle, unit results (on SQLite and PostgreSQL)."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import func, select

from store import (
    UnitKey,
    UnknownSweepError,
    UnknownUnitError,
    completed_units,
    finish_sweep,
    mark_failed,
    mark_running,
    mark_skipped,
    register_sweep,
    sweep_progress,
    write_unit_result,
)
from store import queries
from store.repository import configs_t, samples_t
from tests.store.conftest import INT8, cid, config_dict


def _register(engine, sweep, keys=None, **kw):
    return register_sweep(engine, sweep["sweep_id"], "a sweep", {"tasks": ["t"]},
                          keys if keys is not None else sweep["keys"],
                          sweep["configs"], **kw)


def test_registration_is_idempotent_and_adds_missing_units(engine, blobs, small_sweep,
                                                           make_result):
    keys, cfgs = small_sweep["keys"], small_sweep["configs"]
    assert _register(engine, small_sweep, keys[:3], created_by="alice") == 3
    assert _register(engine, small_sweep, keys[:3]) == 0
    mark_running(engine, keys[0], "w", "cpu")
    write_unit_result(engine, blobs, make_result(keys[0], cfgs[0]))
    mark_failed(engine, keys[1], "boom", final=True)
    finish_sweep(engine, "sw")
    assert _register(engine, small_sweep) == 1  # the 4th unit; the others keep their state
    assert queries.unit_record(engine, keys[0]).status == "done"
    assert queries.unit_record(engine, keys[1]).status == "failed"
    assert sweep_progress(engine, "sw") == {"pending": 2, "running": 0, "done": 1, "failed": 1,
                                           "skipped": 0, "total": 4}
    sweep = queries.get_sweep(engine, "sw")
    assert sweep.status == "running" and sweep.created_by == "alice"  # reopened by new units
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(configs_t)) == 2
        row = conn.execute(select(configs_t).where(
            configs_t.c.config_id == cid(cfgs[1]))).one()
    assert (row.method, row.chunk_size, row.quantize_current_chunk) == ("streamkv", 512, False)
    assert row.config_json == cfgs[1]
    assert row.config_json["key_bits_normal"] == 2 and row.config_json["pre_rope_keys"] is True


def test_registration_validates_its_input(engine, small_sweep):
    keys = small_sweep["keys"]
    with pytest.raises(ValueError, match="config_id"):
        register_sweep(engine, "sw", "x", {}, keys, [small_sweep["configs"][0]])
    with pytest.raises(ValueError, match="shard"):
        register_sweep(engine, "sw", "x", {}, [UnitKey("sw", "m", keys[0].config_id, "t", "4/4")],
                       small_sweep["configs"])
    with pytest.raises(ValueError, match="belongs to sweep"):
        register_sweep(engine, "other", "x", {}, keys,
                       small_sweep["configs"])
    with pytest.raises(UnknownSweepError):
        sweep_progress(engine, "sw")  # nothing was registered


def test_unit_lifecycle(engine, small_sweep):
    _register(engine, small_sweep)
    key = small_sweep["keys"][0]
    assert mark_running(engine, key, "w1", "cuda:0") == 1
    mark_failed(engine, key, "CUDA out of memory\n" * 10_000, final=False)
    record = queries.unit_record(engine, key)
    assert record.status == "pending" and "out of memory" in record.error
    assert len(record.error) < 70_000  # long tracebacks are truncated, keeping the end
    assert mark_running(engine, key, "w2", "cuda:1") == 2
    record = queries.unit_record(engine, key)
    assert (record.status, record.worker, record.device, record.error) == (
        "running", "w2", "cuda:1", None)
    mark_failed(engine, key, "again", final=True)
    mark_skipped(engine, small_sweep["keys"][1], "model too large")
    fails = queries.failures(engine, "sw")
    assert fails["error"].tolist() == ["again"] and fails["attempts"].tolist() == [2]
    with pytest.raises(UnknownUnitError):
        mark_running(engine, UnitKey("sw", "nope", key.config_id, "t", "0/2"), "w", "cpu")


def test_unit_result_round_trip_and_replacement(engine, blobs, small_sweep, make_result):
    _register(engine, small_sweep)
    key, cfg = small_sweep["keys"][2], small_sweep["configs"][1]
    first = make_result(key, cfg, tag="one", n_samples=6,
                        metrics={"score": 0.5, "kl": float("nan"), "rouge_l": 0.25})
    unit_id = write_unit_result(engine, blobs, first)
    stored = queries.load_unit_result(engine, blobs, key)
    assert stored.metrics["score"] == 0.5 and stored.metrics["rouge_l"] == 0.25
    assert stored.metrics["kl"] is None  # NaN is stored as NULL on every database
    assert [s.sample_id for s in stored.samples] == [s.sample_id for s in first.samples]
    assert stored.samples[1].prediction == "pred one 1" and stored.samples[1].answers == ["a1"]
    assert stored.traces["outlier_channels"].equals(first.traces["outlier_channels"])
    assert stored.environment["versions"] == {"torch": "2.13.0"}
    assert stored.started_at == first.started_at and stored.finished_at == first.finished_at
    assert (stored.kv_bytes, stored.compression_ratio) == (1_000_000, 3.8)
    assert completed_units(engine, "sw") == {key}

    second = make_result(key, cfg, tag="two", n_samples=2, score=0.75)
    assert write_unit_result(engine, blobs, second) == unit_id
    stored = queries.load_unit_result(engine, blobs, key)
    assert stored.metrics == {"score": 0.75, "perplexity": 9.5, "kl": 0.01,
                              "top1_agreement": 0.97}
    assert len(stored.samples) == 2 and stored.samples[0].extra == {"tag": "two"}
    assert stored.traces["outlier_channels"].column("tag").to_pylist()[0] == "two"
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(samples_t)) == 2


def test_unit_result_checks(engine, blobs, small_sweep, make_result):
    _register(engine, small_sweep)
    key = small_sweep["keys"][0]
    wrong_config = make_result(key, INT8)
    with pytest.raises(ValueError, match="config_id"):
        write_unit_result(engine, blobs, wrong_config)
    dupes = make_result(key, small_sweep["configs"][0])
    dupes.samples[1].sample_id = dupes.samples[0].sample_id
    with pytest.raises(ValueError, match="duplicate sample_id"):
        write_unit_result(engine, blobs, dupes)
    unregistered = UnitKey("nope", "m", key.config_id, "t", "0/1")
    with pytest.raises(UnknownSweepError):
        write_unit_result(engine, blobs, make_result(unregistered, small_sweep["configs"][0]))


def test_results_for_unregistered_units_of_a_known_sweep_are_added(engine, blobs, small_sweep,
                                                                   make_result):
    _register(engine, small_sweep, small_sweep["keys"][:1])
    extra_key = UnitKey("sw", "m2", small_sweep["keys"][0].config_id, "t", "0/1")
    write_unit_result(engine, blobs, make_result(extra_key, small_sweep["configs"][0]))
    record = queries.unit_record(engine, extra_key)
    assert record.status == "done" and record.attempts == 1


def test_non_finite_and_odd_values_are_stored_portably(engine, blobs, small_sweep, make_result):
    _register(engine, small_sweep)
    key = small_sweep["keys"][0]
    r = make_result(key, small_sweep["configs"][0])
    r.samples[0].prediction = "nul\x00byte"
    r.samples[0].extra = {"inf": float("inf"), "nested": [float("nan"), 1.5], 3: "int key"}
    r.environment["odd"] = {1, 2}
    r.compression_ratio = float("inf")
    write_unit_result(engine, blobs, r)
    stored = queries.load_unit_result(engine, None, key)
    assert stored.samples[0].prediction == "nul\ufffdbyte"
    assert stored.samples[0].extra == {"inf": None, "nested": [None, 1.5], "3": "int key"}
    assert sorted(stored.environment["odd"]) == [1, 2]
    assert stored.compression_ratio is None or math.isnan(stored.compression_ratio)


@pytest.mark.parametrize("config, problem", [
    (["method", "none"], "must be a mapping"),
    (config_dict(method=""), "method"),
    ({"chunk_size": 512, "quantize_current_chunk": False}, "method"),
    (config_dict(chunk_size=0), "chunk_size"),
    (config_dict(chunk_size=True), "chunk_size"),
    (config_dict(chunk_size="512"), "chunk_size"),
    (config_dict(quantize_current_chunk="yes"), "quantize_current_chunk"),
    (config_dict(scale=float("nan")), "scale=nan is not finite"),
    (config_dict(groups=[1, float("inf")]), r"groups\[1\]=inf"),
    (config_dict(**{"nested": {1: "x"}}), "non-string key 1"),
    (config_dict(path=b"x"), "bytes.*not a JSON value"),
])
def test_configs_are_checked_for_what_the_store_relies_on(engine, config, problem):
    key = UnitKey("sw", "m", "0" * 12, "t", "0/1")
    with pytest.raises(ValueError, match=problem):
        register_sweep(engine, "sw", "x", {}, [key], [config])
    with engine.connect() as conn:  # nothing was written
        assert conn.scalar(select(func.count()).select_from(configs_t)) == 0


def test_any_method_is_stored_as_given_under_its_content_id(engine, blobs, make_result):
    toy = config_dict("toy-plugin", chunk_size=None, toy_scale=0.5, layers=[0, 3],
                      extra={"note": "ünïcode"})
    key = UnitKey("sw", "m", cid(toy), "t", "0/1")
    register_sweep(engine, "sw", "x", {}, [key], [toy])
    write_unit_result(engine, blobs, make_result(key, toy))
    with engine.connect() as conn:
        row = conn.execute(select(configs_t)).one()
    assert (row.config_id, row.method, row.chunk_size, row.quantize_current_chunk) == (
        cid(toy), "toy-plugin", None, False)
    assert row.config_json == toy and cid(row.config_json) == row.config_id
    assert queries.load_unit_result(engine, None, key).config == toy


def test_a_result_whose_config_does_not_hash_to_its_key_is_refused(engine, blobs, make_result):
    cfg = config_dict("toy", toy_scale=1.0)
    key = UnitKey("sw", "m", cid(cfg), "t", "0/1")
    register_sweep(engine, "sw", "x", {}, [key], [cfg])
    drifted = make_result(key, {**cfg, "toy_scale": 2.0})  # a field changed after planning
    with pytest.raises(ValueError, match="content_id.*different configs"):
        write_unit_result(engine, blobs, drifted)
    assert queries.unit_record(engine, key).status == "pending"

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
from streamkv.config import baseline


def _register(engine, sweep, keys=None, **kw):
    return register_sweep(engine, sweep["sweep_id"], "a sweep", {"tasks": ["t"]},
                          keys if keys is not None else sweep["keys"],
                          [c.to_dict() for c in sweep["configs"]], **kw)


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
            configs_t.c.config_id == cfgs[1].config_id)).one()
    assert row.method == "streamkv" and row.key_bits_normal == 2 and row.pre_rope_keys is True
    assert row.config_json == cfgs[1].to_dict()


def test_registration_validates_its_input(engine, small_sweep):
    keys = small_sweep["keys"]
    with pytest.raises(ValueError, match="config_id"):
        register_sweep(engine, "sw", "x", {}, keys, [small_sweep["configs"][0].to_dict()])
    with pytest.raises(ValueError, match="shard"):
        register_sweep(engine, "sw", "x", {}, [UnitKey("sw", "m", keys[0].config_id, "t", "4/4")],
                       [c.to_dict() for c in small_sweep["configs"]])
    with pytest.raises(ValueError, match="belongs to sweep"):
        register_sweep(engine, "other", "x", {}, keys,
                       [c.to_dict() for c in small_sweep["configs"]])
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
    wrong_config = make_result(key, baseline("int8"))
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

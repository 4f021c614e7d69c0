"""The search view (`dashboard/search_view.py`): its frames from a small search store written
through `store.repository`, and the tab under Streamlit's AppTest."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import search_view as sv
from store import BlobStore, UnitKey, UnitResult, create_store_engine, register_sweep, write_unit_result
from store.queries import result_frame
from tests.store.conftest import cid, config_dict

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
SEARCH_ID = "tune-demo"
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
SPEC = {"name": "tune-demo", "space": {"layer_key_bits": {"per_layer": [2, 4]}},
        "data": {"shards": 4, "search_shards": [0, 1], "holdout_shards": [2, 3]},
        "objective": "kl", "constraint": {"max_avg_bits": 3.0}}


def trial_config(bits: tuple[int, ...]) -> dict:
    return config_dict("streamkv", key_bits_normal=3, value_bits_normal=3, layer_key_bits=list(bits))


# trial -> (config, kl, measured bits); "c" is over budget though best, "b" is the choice
TRIALS = {"a": (trial_config((4, 4, 2)), 0.30, 2.9), "b": (trial_config((2, 4, 2)), 0.20, 2.8),
          "c": (trial_config((4, 4, 4)), 0.10, 3.4), "d": (trial_config((2, 2, 2)), 0.50, 2.5)}
NONE = config_dict("none")


def result(config: dict, shard: int, kl: float, bits: float, minute: int) -> UnitResult:
    key = UnitKey(SEARCH_ID, "tiny", cid(config), "wikitext2_ppl", f"{shard}/4")
    return UnitResult(key=key, config=config, method=config["method"],
                      metrics={"kl": kl + shard / 100, "perplexity": 10 + kl * 10, "nll": 2.3},
                      n_samples=1, avg_key_bits=bits, avg_value_bits=bits, kv_bytes=1000,
                      fp16_kv_bytes=5000, compression_ratio=5.0, started_at=T0 + timedelta(minutes=minute),
                      finished_at=T0 + timedelta(minutes=minute, seconds=30))


@pytest.fixture
def search_store(tmp_path):
    url, root = f"sqlite:///{tmp_path / 's.db'}", str(tmp_path / "blobs")
    engine, blobs = create_store_engine(url), BlobStore(root)
    results = [result(c, s, kl, bits, 10 * i + s) for i, (c, kl, bits) in enumerate(TRIALS.values()) for s in (0, 1)]
    results += [result(TRIALS["b"][0], s, 0.22, 2.8, 100 + s) for s in (2, 3)]  # the held-apart check
    results += [result(NONE, s, 0.0, 16.0, 110 + s) for s in (2, 3)]
    register_sweep(engine, SEARCH_ID, "tune-demo", SPEC, [r.key for r in results],
                   [r.config for r in results])
    for r in results:
        write_unit_result(engine, blobs, r)
    yield {"db_url": url, "blobs_uri": root, "engine": engine}
    engine.dispose()


def test_frames_show_the_trials_the_front_and_the_choice(search_store):
    info = sv.search_info(SPEC)
    found = sv.search_trials(result_frame(search_store["engine"], SEARCH_ID), info)
    frame = sv.trial_frame(found, info)
    assert list(frame["config_id"]) == [cid(TRIALS[n][0]) for n in "abcd"]  # in finish order
    assert list(frame["objective"].round(3)) == [0.305, 0.205, 0.105, 0.505]
    assert list(frame["within_budget"]) == [True, True, False, True]
    assert list(frame["pareto"]) == [False, True, True, True]  # a is beaten by b in both
    assert list(frame["best_so_far"].round(3)) == [0.305, 0.205, 0.205, 0.205]  # c is over budget
    best = sv.chosen(found, info)
    assert best.config_id == cid(TRIALS["b"][0])
    bits = sv.layer_bits_frame(best.config, n_layers=3)
    assert list(bits[bits["kind"] == "key"]["bits"]) == [2, 4, 2]
    assert list(bits[bits["kind"] == "value"]["bits"]) == [3, 3, 3]
    table = sv.holdout_table(best, next(t for t in found if t.method == "none"), "kl")
    assert list(table["data"]) == ["search shards", "held-apart shards", "held-apart shards"]
    assert table["kl"].round(3).tolist() == [0.205, 0.245, 0.025]


def test_a_sweep_that_is_not_a_search_has_no_search_view():
    assert sv.search_info({"grid": {"key_bits_normal": [2, 4]}}) is None


def test_search_tab_renders(monkeypatch, search_store):
    monkeypatch.setenv("STREAMKV_DB", search_store["db_url"])
    monkeypatch.setenv("STREAMKV_BLOBS", search_store["blobs_uri"])
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception and not at.error
    assert [t.label for t in at.tabs][-1] == "Search"
    assert any(f"`{cid(TRIALS['b'][0])}`" in m.value for m in at.markdown)
    held = next(d.value for d in at.dataframe if "data" in d.value.columns)
    assert "held-apart shards" in set(held["data"])


def test_a_per_head_allocation_is_drawn_one_row_per_kv_head():
    config = {"head_key_bits": [[2, 3], [4, 2]], "layer_value_bits": [3, 2], "key_bits_normal": 4}
    bits = sv.layer_bits_frame(config)
    assert list(dict.fromkeys(bits["kind"])) == ["key h0", "key h1", "value"]
    assert list(bits[bits["kind"] == "key h1"]["bits"]) == [3, 2]
    assert list(bits[bits["kind"] == "value"]["bits"]) == [3, 2]

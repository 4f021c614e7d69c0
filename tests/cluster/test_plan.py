"""plan(spec): deterministic, grouped by model, one unit per (model, config, task, shard)."""

from __future__ import annotations

from pathlib import Path

from cluster.plan import by_model, plan
from cluster.spec import load_spec, parse_spec

REPO = Path(__file__).resolve().parents[2]


def test_tiny_plan():
    spec = load_spec(REPO / "sweeps" / "tiny.yaml")
    units = plan(spec)
    assert len(units) == 2 * 2 * 2
    assert units == plan(load_spec(REPO / "sweeps" / "tiny.yaml"))  # deterministic
    assert len({u.key for u in units}) == len(units)
    assert {u.sweep_id for u in units} == {spec.resolved_sweep_id}
    ppl = [u for u in units if u.task == "wikitext2_ppl"]
    assert {u.context_length for u in ppl} == {128} and {u.limit for u in ppl} == {1}
    assert {u.shard for u in units} == {"0/2", "1/2"}


def test_units_grouped_by_model_and_per_dataset_settings():
    spec = parse_spec({
        "models": ["tiny-random-llama", "smollm2-135m"],
        "presets": ["none", "streamkv-3"],
        "datasets": [{"task": "wikitext2_ppl", "context_length": 1024, "shards": 3},
                     {"task": "kv_retrieval_synth", "context_length": 100, "limit": 1, "max_length": 300}],
        "shards": 2, "limit": 5, "seed": 7,
    }, base_dir=REPO)
    units = plan(spec)
    groups = by_model(units)
    assert [m for m, _ in groups] == ["tiny-random-llama", "smollm2-135m"]
    assert len(units) == 2 * 2 * (3 + 2)
    kv = [u for u in units if u.task == "kv_retrieval_synth"]
    assert {(u.limit, u.max_length, u.seed) for u in kv} == {(1, 300, 7)}
    assert {u.shard for u in units if u.task == "wikitext2_ppl"} == {"0/3", "1/3", "2/3"}
    assert {u.limit for u in units if u.task == "wikitext2_ppl"} == {5}

"""Search specs (`cluster.tune_spec`): every problem listed with its path before anything runs,
the budget floor, and the trial parameters <-> config mapping (no Ray, no model)."""

from __future__ import annotations

import pytest

from cluster.spec import SpecError
from cluster.tune_spec import ModelShape, min_avg_bits, model_problems, parse_search_spec
from cluster.tune_trials import group_params, start_points, trial_config, trial_settings
from streamkv.loading import model_config
from tests.conftest import assert_problems

GOOD = {
    "model": "tiny-random-llama",
    "base": {"preset": "streamkv-3"},
    "space": {"chunk_size": {"choice": [32, 64]}, "ema_decay": {"uniform": [0.5, 0.99]},
              "attention_sink_size": {"int": [0, 8]},
              "layer_key_bits": {"per_layer": [2, 3, 4, 8]}, "layer_value_bits": {"per_layer": [2, 4], "groups": 1}},
    "data": {"context_length": 128, "shards": 6, "search_shards": [0, 1, 2], "holdout_shards": [3, 4]},
    "constraint": {"max_avg_bits": 3.0},
}


def problems_of(data) -> list[str]:
    with pytest.raises(SpecError) as err:
        parse_search_spec(data)
    return err.value.problems


def test_a_good_spec_parses_with_its_defaults():
    spec = parse_search_spec(GOOD)
    assert [d.field for d in spec.space] == list(GOOD["space"])
    assert spec.objective == "kl" and spec.mode == "min" and spec.max_avg_bits == 3.0
    assert spec.base["value_quant_groups"] == 4  # the preset's, under the method's defaults
    assert spec.resolved_search_id.startswith("search-")
    # where it is stored does not change which search it is
    moved = parse_search_spec({**GOOD, "store": {"url": "sqlite:////elsewhere.db"}, "storage": "/x"})
    assert moved.resolved_search_id == spec.resolved_search_id


def test_every_problem_is_listed_with_its_path():
    bad = {**GOOD, "bogus": 1,
           "space": {"no_such_field": {"choice": [1]}, "chunk_size": {"choice": []},
                     "ema_decay": {"uniform": [0.9, 0.5]}, "attention_sink_size": {"int": [4, 2]},
                     "value_quant_groups": {"choice": [1, "two"]}, "layer_key_bits": {"per_layer": [2, 5]}},
           "data": {"shards": 4, "search_shards": [0, 1], "holdout_shards": [1, 7]},
           "objective": "bleu", "search": {"num_samples": 0, "asha": {"grace_period": 3}}}
    found = problems_of(bad)
    expected = ["bogus: unknown key", "space.no_such_field: unknown field of method 'streamkv'",
                "space.chunk_size.choice: [] is an empty range", "space.ema_decay.uniform: [0.9, 0.5] is an empty range",
                "space.attention_sink_size.int: [4, 2] is an empty range",
                "space.value_quant_groups.choice[1]: 'two' is out of range",
                "space.layer_key_bits.per_layer: [5] are not bit widths",
                "data.holdout_shards: [7] are not shard indices (allowed: 0 .. 3)",
                "data.holdout_shards: shard(s) [1] are also search shards",
                "objective: 'bleu' is out of range", "search.num_samples: 0 is out of range",
                "search.asha.grace_period: 3 > the 2 search shards"]
    assert_problems(found, expected)


def test_a_budget_no_configuration_can_meet_is_refused_with_its_floor():
    # streamkv-3: values at 3 bits unless searched; keys down to 2 per layer; 4 sink tokens at 8
    floor = min_avg_bits(parse_search_spec({**GOOD, "constraint": None}).base,
                         parse_search_spec({**GOOD, "constraint": None}).space, 128)
    assert floor == pytest.approx(2.0)  # sink size may be 0 (int: [0, 8]); 2-bit keys and values
    fixed_sinks = {**GOOD, "space": {k: v for k, v in GOOD["space"].items() if k != "attention_sink_size"}}
    spec = parse_search_spec({**fixed_sinks, "constraint": None})
    assert min_avg_bits(spec.base, spec.space, 128) == pytest.approx((124 * 2 + 4 * 8) / 128)
    found = problems_of({**fixed_sinks, "constraint": {"max_avg_bits": 2.1}})
    assert found == [p for p in found if p.startswith("constraint.max_avg_bits: 2.1 cannot be met")] and found
    assert "2.188" in found[0]
    parse_search_spec({**fixed_sinks, "constraint": {"max_avg_bits": 2.2}})  # just above the floor: accepted


def test_model_dependent_problems_need_the_models_config():
    config = model_config("tiny-random-llama")
    spec = parse_search_spec({**GOOD, "space": {**GOOD["space"],
                                                "layer_key_bits": {"per_layer": [2, 4], "groups": 99},
                                                "value_quant_groups": {"choice": [1, 3]}},
                              "constraint": {"max_cache_bytes": 10}})
    found = model_problems(spec, config)
    assert any(p.startswith(f"space.layer_key_bits.groups: 99 > the model's num_hidden_layers="
                            f"{config.num_hidden_layers}") for p in found)
    assert any(p.startswith("space.value_quant_groups.choice: [3] do not divide") for p in found)
    assert any(p.startswith("constraint.max_cache_bytes: 10 cannot be met") for p in found)


def test_trial_parameters_become_a_config_with_bits_per_layer_group():
    spec = parse_search_spec({**GOOD, "space": {**GOOD["space"], "layer_key_bits": {"per_layer": [2, 8], "groups": 2}}})
    names = group_params(spec.space[3], ModelShape(5, 2))
    assert names == ["layer_key_bits.g0", "layer_key_bits.g1"]
    params = {"chunk_size": 64, "ema_decay": 0.7, "attention_sink_size": 3, "layer_key_bits.g0": 2,
              "layer_key_bits.g1": 8, "layer_value_bits.g0": 4}
    settings = trial_settings(spec, params, ModelShape(5, 2))
    assert settings["layer_key_bits"] == (2, 2, 2, 8, 8) and settings["layer_value_bits"] == (4,) * 5
    config = trial_config(spec, params, ModelShape(5, 2))
    assert config.chunk_size == 64 and config.ema_decay == 0.7 and config.attention_sink_size == 3
    assert config.value_quant_groups == 4  # from the base


def test_start_points_become_tune_parameters_and_bad_ones_are_listed():
    point = {"chunk_size": 64, "ema_decay": 0.5, "attention_sink_size": 8, "layer_value_bits": [4]}
    spec = parse_search_spec({**GOOD, "search": {"n_startup_trials": 4, "start": [
        {**point, "layer_key_bits": 2},                       # one value: every group
        {**point, "layer_key_bits": [2, 3, 8]}]}})             # one per group (a group per layer)
    assert spec.search.n_startup_trials == 4
    points = start_points(spec, ModelShape(3, 2))
    assert points[0] == {"chunk_size": 64, "ema_decay": 0.5, "attention_sink_size": 8, "layer_value_bits.g0": 4,
                         "layer_key_bits.g0": 2, "layer_key_bits.g1": 2, "layer_key_bits.g2": 2}
    assert [points[1][f"layer_key_bits.g{j}"] for j in range(3)] == [2, 3, 8]
    # a start point's parameters are a trial's: they make a config
    assert trial_config(spec, points[1], ModelShape(3, 2)).layer_key_bits == (2, 3, 8)

    found = problems_of({**GOOD, "search": {"n_startup_trials": -1, "start": [
        {"bogus": 1, "chunk_size": 48, "ema_decay": 1.5, "attention_sink_size": 2.5, "layer_key_bits": 2,
         "layer_value_bits": 2},
        {**point, "layer_key_bits": [2, 5], "layer_value_bits": [2, 4]},
        {"chunk_size": 32}]}})
    expected = ["search.n_startup_trials: -1 is out of range",
                "search.start[0].bogus: not a searched field",
                "search.start[0].chunk_size: 48 is out of range (allowed: one of [32, 64])",
                "search.start[0].ema_decay: 1.5 is out of range (allowed: uniform in [0.5, 0.99])",
                "search.start[0].attention_sink_size: 2.5 is out of range (allowed: int in [0, 8])",
                "search.start[1].layer_key_bits: [2, 5] is out of range",
                "search.start[1].layer_value_bits: 2 values for 1 groups",
                "search.start[2]: missing ema_decay, attention_sink_size, layer_key_bits, layer_value_bits"]
    assert_problems(found, expected)
    assert problems_of({**GOOD, "search": {"start": {"chunk_size": 32}}}) == [
        "search.start: {'chunk_size': 32} must be a list of mappings (field -> value)"]
    # a per-layer list without groups must have one value per layer: known once the model is read
    spec = parse_search_spec({**GOOD, "search": {"start": [{**point, "layer_key_bits": [2, 2, 2, 2, 2, 2, 2]}]}})
    n_layers = model_config("tiny-random-llama").num_hidden_layers
    assert n_layers != 7
    assert any(p.startswith(f"search.start[0].layer_key_bits: 7 values for the model's {n_layers} layers")
               for p in model_problems(spec, model_config("tiny-random-llama")))


def test_per_head_bits_are_one_parameter_per_layer_group_and_kv_head():
    space = {"head_key_bits": {"per_head": [2, 3], "groups": 2}, "ema_decay": {"uniform": [0.5, 0.99]}}
    spec = parse_search_spec({**GOOD, "space": space, "search": {"start": [
        {"ema_decay": 0.9, "head_key_bits": 2}, {"ema_decay": 0.9, "head_key_bits": [[2, 3], 3]}]}})
    shape = ModelShape(n_layers=3, n_kv_heads=2)
    names = group_params(spec.space[0], shape)
    assert names == ["head_key_bits.g0.h0", "head_key_bits.g0.h1", "head_key_bits.g1.h0", "head_key_bits.g1.h1"]
    params = {"ema_decay": 0.8, **dict(zip(names, (2, 3, 3, 2)))}
    config = trial_config(spec, params, shape)
    # layers 0 and 1 form group 0 (i * groups // n_layers), layer 2 group 1
    assert config.head_key_bits == ((2, 3), (2, 3), (3, 2)) and config.layer_key_bits is None
    first, second = start_points(spec, shape)
    assert [first[n] for n in names] == [2, 2, 2, 2] and [second[n] for n in names] == [2, 3, 3, 3]
    # the floor counts a per-head allocation's lowest bits like a per-layer one
    fixed = parse_search_spec({**GOOD, "space": space, "constraint": None})
    assert min_avg_bits(fixed.base, fixed.space, 128) == pytest.approx(((124 * 2 + 4 * 8) / 128 + (124 * 3 + 4 * 8) / 128) / 2)

    found = problems_of({**GOOD, "space": {"head_key_bits": {"per_head": [2, 5]}, "layer_key_bits": {"per_layer": [2]},
                                           "chunk_size": {"per_head": [2]}, "head_value_bits": {"per_layer": [2]}}})
    expected = ["space.head_key_bits.per_head: [5] are not bit widths",
                "space.chunk_size: per_head is for head_key_bits | head_value_bits, not chunk_size",
                "space.head_value_bits: per_layer is for layer_key_bits | layer_value_bits, not head_value_bits",
                "space.head_key_bits: searched with layer_key_bits also searched",
                "space.layer_key_bits: searched with head_key_bits also searched"]
    assert_problems(found, expected)
    wrong = parse_search_spec({**GOOD, "space": space, "search": {"start": [
        {"ema_decay": 0.9, "head_key_bits": [[2, 3, 2], 2]}]}})
    assert any(p.startswith("search.start[0].head_key_bits: group(s) [0] do not give one value per KV head")
               for p in model_problems(wrong, model_config("tiny-random-llama")))

"""Sweep specs: the shipped files parse; an invalid spec lists every problem with its path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from cluster.spec import SpecError, SweepSpec, apply_overrides, load_spec, parse_spec
from streamkv import preset
from streamkv.methods import Kivi
from tests.conftest import assert_problems

REPO = Path(__file__).resolve().parents[2]


def _spec(**data):
    base = {"models": ["tiny-random-llama"], "presets": ["none"],
            "datasets": [{"task": "wikitext2_ppl", "context_length": 4096}]}
    base.update(data)
    return parse_spec(base, base_dir=REPO)


@pytest.mark.parametrize("name", ["smoke", "ablation", "longbench_llama2", "tiny"])
def test_shipped_specs_parse(name):
    spec = load_spec(REPO / "sweeps" / f"{name}.yaml")
    assert spec.configs and spec.datasets and spec.models


def test_smoke_spec_contents():
    spec = load_spec(REPO / "sweeps" / "smoke.yaml")
    assert spec.models == ("smollm2-135m",)
    # 16-token chunks: the lm-eval prompts are short, and a chunk never sees its own tokens quantized.
    assert [c.config_id for c in spec.configs] == [
        preset(n, chunk_size=16, **({"residual_length": 16} if n == "kivi-4" else {})).config_id
        for n in ("none", "streamkv-4", "streamkv-3", "kivi-4")]
    assert {d.task for d in spec.datasets} == {"lm_eval:streamkv_facts_mc", "lm_eval:streamkv_copy_gen",
                                               "wikitext2_ppl"}


def test_longbench_spec_has_all_tasks_and_an_hf_preset():
    from workers.tasks import LONGBENCH_TASK_NAMES

    spec = load_spec(REPO / "sweeps" / "longbench_llama2.yaml")
    assert [d.task for d in spec.datasets] == list(LONGBENCH_TASK_NAMES)
    assert any(c.label == "preset hf-quanto-4" and c.config.name == "hf_quantized" for c in spec.configs)
    assert spec.resources.num_gpus_per_actor == 1 and spec.store.blobs.startswith("s3://")


def test_grid_is_a_cartesian_product_with_points_and_presets_deduplicated():
    spec = _spec(grid={"preset": "streamkv-4", "key_bits_normal": [4, 3], "chunk_size": [128, 256, 512]},
                 points=[{"preset": "kivi-4", "residual_length": 64}, {"ema_decay": 0.5},
                         {"method": "kivi", "key_bits": 2}],
                 presets=["none", "streamkv-4"])
    # 6 grid points + 3 points + none; streamkv-4 equals the grid point (4, 512).
    assert len(spec.configs) == 10
    assert {(c.config.key_bits_normal, c.config.chunk_size) for c in spec.configs[:6]} == \
        {(b, c) for b in (4, 3) for c in (128, 256, 512)}
    assert spec.configs[6].config == preset("kivi-4", residual_length=64)
    assert spec.configs[8].config == Kivi(key_bits=2)
    kivi_grid = _spec(grid={"method": "kivi", "key_bits": [2, 4], "residual_length": 0})
    assert [c.config for c in kivi_grid.configs[:2]] == [Kivi(key_bits=2, residual_length=0),
                                                         Kivi(key_bits=4, residual_length=0)]


def test_invalid_spec_lists_every_problem_with_its_path():
    data = {
        "modle": "x",
        "models": ["tiny-random-llama"],
        "grid": {"key_bits_normal": [4, 3, 5], "ema_decay": [0.9, 1.5], "chunk_sz": [1]},
        "points": [{"preset": "nope"}, {"value_bits_normal": 7}, {"method": "kivi", "key_bits": 3},
                   {"preset": "streamkv-3", "key_bits_sink_outlier": 2}],
        "presets": ["none", "int3"],
        "datasets": [{"task": "wikitext2_ppl", "context_length": 1},
                     {"task": "foo"},
                     {"task": "narrativeqa"},
                     {"task": "wikitext2_ppl", "limit": 0}],
        "shards": 0,
        "store": {"urll": "x"},
        "resources": {"num_actors": 0, "num_gpus_per_actor": -1},
        "dtype": "int8",
    }
    with pytest.raises(SpecError) as info:
        parse_spec(data, source="bad.yaml", base_dir=REPO)
    text = str(info.value)
    expected = [
        "modle: unknown key",
        "grid.key_bits_normal[2]: 5 is out of range (allowed: 2 | 3 | 4 | 8 | 16)",
        "grid.ema_decay[1]: 1.5 is out of range (allowed: 0 < x < 1)",
        "grid.chunk_sz[0]: unknown setting of method 'streamkv'; allowed: chunk_size, ",
        "points[0].preset: unknown preset 'nope'",
        "points[1].value_bits_normal: 7 is out of range",
        "points[2].key_bits: 3 is out of range (allowed: 2 | 4)",
        "points[3].key_bits_sink_outlier: 2 must be >= key_bits_normal=3",
        "presets[1]: unknown preset 'int3'",
        "datasets[0].context_length: 1 is out of range",
        "datasets[1].task: unknown task 'foo'; allowed: ",
        "datasets[2].source: required for LongBench task 'narrativeqa'",
        "datasets[3].limit: 0 is out of range",
        "datasets[3].task: task 'wikitext2_ppl' already appears in datasets[0].task",
        "shards: 0 is out of range",
        "store.urll: unknown key",
        "resources.num_actors: 0 is out of range",
        "resources.num_gpus_per_actor: -1 is out of range",
        "dtype: 'int8' is out of range",
    ]
    missing = [e for e in expected if e not in text]
    assert not missing, f"missing {missing} in:\n{text}"
    assert len(info.value.problems) == len(set(info.value.problems))
    with pytest.raises(SpecError, match="grid.method: \\['kivi'\\] must be one method name"):
        _spec(grid={"method": ["kivi"], "key_bits": [2]})


def test_combination_problem_names_the_grid_axis():
    with pytest.raises(SpecError) as info:
        _spec(grid={"key_bits_normal": [16]})
    assert "grid.key_bits_normal[0]: key_bits_sink_outlier: 8 must be >= key_bits_normal=16" in str(info.value)


def test_missing_sections_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError) as info:
        parse_spec({"models": []})
    assert "datasets: required" in str(info.value) and "models: at least one model" in str(info.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_spec(tmp_path / "absent.yaml")


def test_defaults_come_from_the_dataclass_and_overrides_win():
    spec = _spec()
    defaults = SweepSpec()
    assert (spec.shards, spec.limit, spec.max_length, spec.seed, spec.max_attempts) == \
        (defaults.shards, defaults.limit, defaults.max_length, defaults.seed, defaults.max_attempts)
    spec2 = _spec(shards=3, store={"url": "sqlite:///a.db"})
    over = apply_overrides(spec2, db="sqlite:///b.db", blobs="/tmp/b", num_actors=4)
    assert over.store.url == "sqlite:///b.db" and over.store.blobs == "/tmp/b"
    assert over.resources.num_actors == 4 and over.shards == 3
    with pytest.raises(SpecError, match="--num-actors"):
        apply_overrides(spec2, num_actors=0)


def test_sweep_id_is_a_content_hash():
    a, b = _spec(), _spec()
    assert a.resolved_sweep_id == b.resolved_sweep_id and a.resolved_sweep_id.startswith("sweep-")
    # Where results go and how they are scheduled do not change the sweep...
    moved = apply_overrides(a, db="sqlite:///elsewhere.db", num_actors=3)
    assert moved.resolved_sweep_id == a.resolved_sweep_id
    # ...what they are does.
    assert _spec(seed=1).resolved_sweep_id != a.resolved_sweep_id
    assert _spec(sweep_id="mine").resolved_sweep_id == "mine"


def test_spec_is_frozen_and_round_trips_to_json():
    import json

    spec = load_spec(REPO / "sweeps" / "tiny.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.shards = 3  # type: ignore[misc]
    json.dumps(spec.to_dict())
    yaml.safe_dump(spec.content())


def test_perplexity_windows_inside_one_chunk_are_rejected():
    """Under the streaming protocol such a window never sees a quantized token."""
    with pytest.raises(SpecError) as err:
        _spec(presets=["none", "streamkv-4"], datasets=[{"task": "wikitext2_ppl", "context_length": 512}])
    assert "datasets[0].context_length: 512 <= chunk_size=512" in str(err.value)
    # The uncompressed baseline, the strict protocol and longer windows are fine.
    _spec(presets=["none"], datasets=[{"task": "wikitext2_ppl", "context_length": 512}])
    _spec(points=[{"quantize_current_chunk": True}], datasets=[{"task": "wikitext2_ppl", "context_length": 512}])
    _spec(presets=["streamkv-4"], datasets=[{"task": "wikitext2_ppl", "context_length": 1024}])


def test_longbench_v2_splits_are_dataset_keys_with_every_problem_listed():
    from cluster.plan import plan

    v2 = "tests/data/longbench-v2-synthetic"
    spec = _spec(datasets=[{"task": "longbench_v2", "source": v2, "length": "long"},
                           {"task": "longbench_v2", "source": v2, "difficulty": "hard", "length": "long"},
                           {"task": "longbench_v2", "source": v2}])
    assert [d.stored_task for d in spec.datasets] == ["longbench_v2@long", "longbench_v2@hard@long", "longbench_v2"]
    units = plan(spec)
    assert sorted({u.key.task for u in units}) == ["longbench_v2", "longbench_v2@hard@long", "longbench_v2@long"]
    assert {(u.difficulty, u.length_class) for u in units} == {(None, "long"), ("hard", "long"), (None, None)}
    # a spec without splits keeps its sweep id (the keys are left out of the content when unset)
    assert "difficulty" not in spec.datasets[2].content() and spec.datasets[0].content()["length"] == "long"

    with pytest.raises(SpecError) as err:
        _spec(datasets=[{"task": "longbench_v2", "source": v2, "difficulty": "medium"},
                        {"task": "longbench_v2", "source": v2, "length": "8k+"},
                        {"task": "trec", "source": "tests/data/longbench-sample", "length": "short"},
                        {"task": "longbench_v2", "source": v2, "length": "long"},
                        {"task": "longbench_v2", "source": v2, "length": "long"}])
    found = err.value.problems
    expected = ["datasets[0].difficulty: 'medium' is out of range (allowed: easy | hard)",
                "datasets[1].length: '8k+' is out of range (allowed: short | medium | long)",
                "datasets[2]: difficulty: / length: select LongBench v2 samples; not for 'trec'",
                "datasets[4].task: task 'longbench_v2@long' already appears in datasets[3].task"]
    assert_problems(found, expected)

"""Adding a method is one file: the out-of-package ToyRound (tests/toy_method.py) runs through
the all-methods test matrix, a sweep spec on local Ray, the results store and the dashboard
with no other edit."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from tests import toy_method
from tests.streamkv.test_methods import check_method

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_registered_by_name():
    from streamkv import method_class, method_names, preset
    from streamkv.methods import method_from_mapping

    assert "toy_round" in method_names() and method_class("toy_round") is toy_method.ToyRound
    assert preset("toy-8") == toy_method.ToyRound(toy_bits=8)
    assert method_from_mapping({"method": "toy_round", "toy_bits": 8}) == preset("toy-8")
    with pytest.raises(ValueError, match=r"toy_bits: 3 is out of range \(allowed: 4 \| 8\)"):
        toy_method.ToyRound(toy_bits=3)


@pytest.mark.parametrize("settings", [dict(toy_bits=4), dict(toy_bits=8, toy_groups=4)])
@torch.no_grad()
def test_toy_method_passes_the_all_methods_matrix(settings, tiny_reference):
    prompt = torch.randint(0, 256, (2, 150), generator=torch.Generator().manual_seed(1))
    check_method(toy_method.ToyRound(chunk_size=32, **settings), tiny_reference, prompt)


def test_sweep_spec_refuses_bad_toy_settings_with_their_paths():
    from cluster.spec import SpecError, parse_spec

    with pytest.raises(SpecError) as err:
        parse_spec({"models": ["tiny-random-llama"], "points": [{"method": "toy_round", "toy_bits": 5}],
                    "grid": {"method": "toy_round", "toy_groups": [0, 2], "chunk_size": 32},
                    "datasets": [{"task": "wikitext2_ppl", "context_length": 128}]})
    assert err.value.problems == [
        "grid.toy_groups[0]: 0 is out of range (allowed: an integer >= 1)",
        "points[0].toy_bits: 5 is out of range (allowed: 4 | 8)",
    ]


@pytest.mark.slow
def test_toy_method_through_sweep_store_and_dashboard(tmp_path, monkeypatch):
    import ray
    from ray import cloudpickle

    from cluster.driver import run_sweep
    from cluster.spec import parse_spec
    from store import create_store_engine, queries

    # The actors import streamkv, workers... from the installed project; this test module is
    # not installed, so its method travels by value, as a user's notebook-defined method would.
    cloudpickle.register_pickle_by_value(toy_method)
    url, blobs = f"sqlite:///{tmp_path / 'toy.db'}", str(tmp_path / "blobs")
    spec = parse_spec({
        "name": "toy", "models": ["tiny-random-llama"], "presets": ["none"],
        "grid": {"method": "toy_round", "chunk_size": 32, "toy_bits": [4, 8]},
        "datasets": [{"task": "wikitext2_ppl", "context_length": 128, "limit": 1}],
        "store": {"url": url, "blobs": blobs}, "resources": {"num_actors": 1}}, source="toy")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING",
             log_to_driver=False)
    try:
        summary = run_sweep(spec, progress=False)
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(toy_method)
    assert (summary.succeeded, summary.failed, summary.total) == (3, 0, 3), summary.failures

    engine = create_store_engine(url)
    results = queries.result_frame(engine, spec.resolved_sweep_id)
    toy = results[results["method"] == "toy_round"]
    assert len(toy) == 2 and (toy["kl"] > 0).all() and (toy["compression_ratio"] > 1).all()
    # 8 bits are closer to the uncompressed model than 4: the setting reached the layers.
    kl = {int(b): k for b, k in zip(toy["toy_bits"], toy["kl"])}
    assert kl[8] < kl[4]
    engine.dispose()

    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("STREAMKV_DB", url)
    monkeypatch.setenv("STREAMKV_BLOBS", blobs)
    at = AppTest.from_file(os.path.join(REPO, "dashboard", "app.py"), default_timeout=120).run()
    assert not at.exception
    # The method filter offers it, and its setting that varies in the sweep is a filter of its own.
    method_filter = next(s for s in at.multiselect if s.label == "Method")
    assert "toy_round" in [str(o) for o in method_filter.options]
    toy_bits = next(s for s in at.multiselect if s.label == "Toy bits")
    assert sorted(str(o) for o in toy_bits.options) == ["4", "8", "—"]  # —: the none config has no toy_bits
    assert sys.modules["tests.toy_method"] is toy_method

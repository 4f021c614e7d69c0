"""Work units on the real SmolLM2-135M (slow: loads the model; about a minute on 2 CPU cores)."""

import math

import pytest

from streamkv import preset
from workers.runner import run_unit
from workers.units import WorkUnit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _one_thread(smollm2, one_thread_module):
    """One thread after the model fixture set two: see tests/conftest.py."""


@pytest.fixture(scope="module")
def ppl_results(smollm2):
    # 128-token chunks: each 512-token window is 4 chunks, the later ones reading the quantized
    # history (with one 512-token chunk nothing would ever be read back from the cache).
    out = {}
    for name in ("none", "streamkv-4"):
        unit = WorkUnit("smollm2-135m", preset(name, chunk_size=128), "wikitext2_ppl", "0/1", limit=2,
                        context_length=512)
        out[name] = run_unit(smollm2, unit)
    return out


def test_perplexity_none_vs_streamkv4(ppl_results):
    none, ours = ppl_results["none"], ppl_results["streamkv-4"]
    for result in (none, ours):
        assert result.n_samples == 2 and [s.prompt_tokens for s in result.samples] == [512, 512]
        assert math.isfinite(result.metrics["perplexity"]) and 1 < result.metrics["perplexity"] < 200
        assert result.metrics["n_tokens"] == 2 * 512
        assert result.environment["model_id"] == "SmolLM2-135M-Instruct-Q4_1"
        assert len(result.environment["weights_sha256"]) == 64
    assert ours.metrics["perplexity"] == pytest.approx(none.metrics["perplexity"], rel=0.05)
    assert none.metrics["kl"] == 0.0 and none.metrics["top1_agreement"] == 1.0
    assert none.compression_ratio == pytest.approx(1.0)
    assert 0 < ours.metrics["kl"] < 0.05 and ours.metrics["top1_agreement"] > 0.9
    assert ours.compression_ratio > 3
    assert ours.avg_key_bits < 5 and ours.avg_value_bits < 5
    assert ours.traces["layer_summary"].num_rows == 2 * 30 * 2  # windows x layers x (key, value)
    assert ours.traces["outlier_channels"].num_rows > 0  # SmolLM2 has outlier channels


def test_synthetic_retrieval_unit(smollm2):
    unit = WorkUnit("smollm2-135m", preset("streamkv-4", chunk_size=128), "passage_retrieval_synth", "0/1",
                    limit=2, context_length=380, max_length=1000)
    result = run_unit(smollm2, unit)
    assert result.n_samples == 2
    assert all(400 <= s.prompt_tokens <= 700 for s in result.samples)
    scores = [s.score for s in result.samples]
    assert all(0 <= s <= 1 for s in scores)
    assert result.metrics["score"] == pytest.approx(100 * sum(scores) / 2)
    assert 0 < result.metrics["kl"] < 0.5 and result.metrics["top1_agreement"] > 0.5
    assert result.compression_ratio > 3
    assert result.prefill_tokens_per_s > 0 and result.decode_tokens_per_s > 0

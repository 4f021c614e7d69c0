"""transformers' QuantizedCache backends as a registered method (HFQuantized): availability,
accuracy, runner, bytes."""

import pytest
import torch

from streamkv import CompressedLlamaForCausalLM, method_from_dict, preset
from streamkv.methods import MethodUnavailable
from workers.hf_baselines import (
    HF_PRESETS,
    HFBaselineUnavailable,
    HFQuantized,
    available_hf_baselines,
    cache_stats,
    make_cache,
)

# The tiny model has 2 KV heads x head_dim 16: quanto groups q_group_size elements of a
# [B, H, T, D] tensor along the flattened H*T*D axis, so a group of 32 fits any length.
TINY = dict(q_group_size=32, residual_length=32)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread_module):
    """Module-wide: see tests/conftest.py."""


def test_availability_is_reported_with_reasons():
    status = available_hf_baselines()
    assert set(status) == set(HF_PRESETS)
    assert status["hf-quanto-4"].available and status["hf-quanto-2"].available
    fp8 = status["hf-fp8"]
    assert not fp8.available and "no 'fp8' backend" in fp8.reason and "transformers" in fp8.reason
    hqq = status["hf-hqq-4"]
    assert hqq.available or "hqq" in hqq.reason.lower()


def test_hf_presets_are_a_method_of_the_registry():
    ids = {preset(n).config_id for n in HF_PRESETS}
    assert len(ids) == len(HF_PRESETS)
    ours = {preset(n).config_id for n in ("none", "int8", "int4_token", "kivi-4", "kivi-2", "streamkv-4")}
    assert not ids & ours
    quanto2 = preset("hf-quanto-2")
    assert isinstance(quanto2, HFQuantized) and quanto2.nbits == 2 and quanto2.chunk_size is None
    assert method_from_dict(quanto2.to_dict()) == quanto2 and not quanto2.is_lossless
    assert issubclass(HFBaselineUnavailable, MethodUnavailable)
    with pytest.raises(ValueError, match="unknown setting of method 'hf_quantized'"):
        preset("hf-quanto-4", bits=3)


@pytest.fixture(scope="module")
def model(tiny_reference):
    m = CompressedLlamaForCausalLM(tiny_reference.config, preset("none", chunk_size=1 << 30)).eval()
    m.load_state_dict(tiny_reference.state_dict())
    return m


@torch.no_grad()
def test_quanto_decode_logits_close_to_uncompressed(tiny_reference):
    """Plain transformers model + QuantizedCache: prefill (full precision as shipped), then decode
    steps that attend to the int4 history: close to the uncompressed logits, not equal."""
    prompt = torch.randint(0, 256, (1, 100), generator=torch.Generator().manual_seed(5))
    cache = make_cache(preset("hf-quanto-4", **TINY), tiny_reference.config)
    tiny_reference(prompt[:, :60], past_key_values=cache)
    logits = torch.cat([tiny_reference(prompt[:, t:t + 1], past_key_values=cache).logits[0]
                        for t in range(60, 100)])
    reference = tiny_reference(prompt).logits[0, 60:]
    err = (logits - reference).abs().max().item()
    assert 0 < err < 0.2
    stats = cache_stats(cache, tiny_reference.config)
    assert stats["tokens"] == 100 and stats["fp16_kv_bytes"] == 2 * 2 * 2 * 100 * 32
    assert stats["kv_bytes"] > 0 and stats["kv_bytes_note"] == "" and stats.batch_size == 1


@torch.no_grad()
def test_quanto_chunked_prefill_through_our_forward(model, tiny_reference):
    prompt = torch.randint(0, 256, (1, 128), generator=torch.Generator().manual_seed(6))
    quanto4 = preset("hf-quanto-4", chunk_size=32, **TINY)
    cache = model.new_cache(quanto4)  # the method builds transformers' cache, not ours
    logits = model(prompt, past_key_values=cache, compression_config=quanto4).logits
    err = (logits - tiny_reference(prompt).logits).abs().max().item()
    assert 0 < err < 0.3
    quanto2 = preset("hf-quanto-2", chunk_size=32, **TINY)
    err2 = (model(prompt, compression_config=quanto2).logits - tiny_reference(prompt).logits).abs().max().item()
    assert err2 > err


def test_unavailable_backend_raises_the_reason(model):
    with pytest.raises(HFBaselineUnavailable, match="no 'fp8' backend"):
        make_cache(preset("hf-fp8"), model.config)


def test_runner_with_hf_baselines(tiny_loaded_hf):
    from workers.runner import run_unit
    from workers.units import WorkUnit

    quanto = preset("hf-quanto-4", chunk_size=32, **TINY)
    u = WorkUnit("tiny-llama", quanto, "wikitext2_ppl", "0/1", limit=2, context_length=96)
    result = run_unit(tiny_loaded_hf, u)
    assert result.method == "hf_quantized" and result.key.config_id == quanto.config_id
    assert method_from_dict(result.config).config_id == result.key.config_id
    assert result.n_samples == 2 and result.metrics["perplexity"] > 1
    assert 0 < result.metrics["kl"] < 0.1 and result.kv_bytes > 0
    assert result.fp16_kv_bytes == 2 * 2 * 2 * 96 * 32 and result.outlier_ratio is None
    assert result.config["backend"] == "quanto"
    assert result.traces["outlier_channels"].num_rows == 0
    # generation, prefill in one forward (as shipped)
    g = WorkUnit("tiny-llama", preset("hf-quanto-2", **TINY), "passage_count_synth", "0/1", limit=1,
                 context_length=60)
    gen = run_unit(tiny_loaded_hf, g)
    assert gen.n_samples == 1 and 0 <= gen.samples[0].score <= 1 and gen.kv_bytes > 0
    assert gen.metrics["n_tokens"] == gen.samples[0].extra["new_tokens"]
    with pytest.raises(HFBaselineUnavailable, match="fp8"):
        run_unit(tiny_loaded_hf, u.replace(config=preset("hf-fp8")))
    assert tiny_loaded_hf.model.compression_config == preset("none")


@pytest.fixture(scope="module")
def tiny_loaded_hf():
    from streamkv.loading import LoadedModel
    from tests.conftest import tiny_llama_config

    try:
        from test_runner import smollm2_tokenizer
    except ImportError:  # run from another rootdir layout
        from tests.workers.test_runner import smollm2_tokenizer
    tokenizer = smollm2_tokenizer()
    torch.manual_seed(0)
    m = CompressedLlamaForCausalLM(tiny_llama_config(vocab_size=len(tokenizer)), preset("none")).eval()
    return LoadedModel(m, tokenizer, "tiny", "", 0.0)


@torch.no_grad()
def test_hqq_runs_as_a_peer_and_is_measured(model, tiny_reference):
    """`hqq` is a pinned dependency: the HQQ backend runs (decode after a prefill, and our
    chunked prefill), its error is that of 4-bit codes (non-zero, small), its bytes are real."""
    assert available_hf_baselines()["hf-hqq-4"].available
    prompt = torch.randint(0, 256, (1, 100), generator=torch.Generator().manual_seed(7))
    cache = make_cache(preset("hf-hqq-4", **TINY), tiny_reference.config)
    tiny_reference(prompt[:, :60], past_key_values=cache)
    logits = torch.cat([tiny_reference(prompt[:, t:t + 1], past_key_values=cache).logits[0]
                        for t in range(60, 100)])
    err = (logits - tiny_reference(prompt).logits[0, 60:]).abs().max().item()
    assert 0 < err < 0.3
    stats = cache_stats(cache, tiny_reference.config)
    assert stats["tokens"] == 100 and 0 < stats["kv_bytes"] < stats["fp16_kv_bytes"]
    hqq = preset("hf-hqq-4", chunk_size=32, **TINY)
    chunked = model(prompt, past_key_values=model.new_cache(hqq), compression_config=hqq).logits
    assert 0 < (chunked - tiny_reference(prompt).logits).abs().max().item() < 0.3

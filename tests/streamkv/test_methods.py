"""Every registered method on the tiny GQA Llama: one matrix of checks (kvpress-style).

The matrix reads the registry, so every registered method is checked with no list to update
here: streamkv's own, transformers' QuantizedCache (registered from workers/hf_baselines.py,
imported below so the matrix does not depend on test order), and a method from outside the
package (tests/toy_method.py, through `check_method` in tests/test_toy_method.py). The logit
tolerance comes from the bits each method measured, not from a table of method names: a
uniform quantizer's error roughly doubles with every bit it loses.
"""

from __future__ import annotations

import pytest
import torch

from streamkv import CompressedCache, CompressedLlamaForCausalLM, CompressionConfig, method_class, method_names
from streamkv.layers import from_flat, to_flat
from streamkv.methods import preset
from workers import hf_baselines  # noqa: F401  (registers transformers' QuantizedCache: in the matrix too)


def compressed(tiny_reference, config=None) -> CompressedLlamaForCausalLM:
    model = CompressedLlamaForCausalLM(tiny_reference.config, config).eval()
    model.load_state_dict(tiny_reference.state_dict())
    return model


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(0, 256, (2, 150), generator=torch.Generator().manual_seed(1))


def logit_tolerance(method, stats) -> float:
    if method.is_lossless:
        return 1e-3  # fp16 storage of an fp32 model's K/V: ~5e-4 relative
    # Measured bits above 8 come from metadata or full-precision residuals, not from finer codes.
    bits = min(stats.avg_key_bits, stats.avg_value_bits, 8.0)
    return 0.05 * 2.0 ** (8 - bits)  # int8 < 0.05; 4-bit (~5 bits with its scales) < 0.4


def check_method(method, tiny_reference, prompt) -> None:
    """The checks every method passes (also run on the out-of-package toy method)."""
    model = compressed(tiny_reference)
    reference = tiny_reference(prompt).logits
    out = model(prompt, compression_config=method)
    assert out.logits.shape == reference.shape  # logits for every position (perplexity needs them)
    stats = model.get_compression_stats(out.past_key_values, method)
    err = (out.logits - reference).abs().max().item()
    assert err < logit_tolerance(method, stats), (method.name, err, stats.avg_key_bits)
    assert stats.tokens == 150 and stats.batch_size == 2
    assert stats.kv_bytes > 0 and stats.fp16_kv_bytes == 2 * 2 * 2 * 150 * 32 * 2
    assert stats.compression_ratio == pytest.approx(stats.fp16_kv_bytes / stats.kv_bytes)
    assert stats["avg_key_bits"] == stats.avg_key_bits and "outlier_ratio" in stats
    if not method.is_lossless:
        assert stats.compression_ratio > 1.0
    # The model was not changed by the call: its own method is still the default.
    assert model.compression_config == CompressionConfig()
    # generate: greedy continues the prompt; the cache is the method's and grows by the new tokens.
    cache = model.new_cache(method)
    gen = model.generate(prompt[:, :40], attention_mask=torch.ones(2, 40, dtype=torch.long), max_new_tokens=6,
                         do_sample=False, pad_token_id=0, past_key_values=cache, compression_config=method)
    assert gen.shape == (2, 46) and torch.equal(gen[:, :40], prompt[:, :40])
    assert model.get_compression_stats(cache, method).tokens == 45
    # A reset streamkv cache is a fresh one: no statistics or open block carried over.
    # (transformers' QuantizedCache keeps its quantized tokens through reset(), so the runner
    # builds a fresh cache per sample for every method.)
    if isinstance(cache, CompressedCache):
        cache.reset()
        again = model(prompt, past_key_values=cache).logits
        torch.testing.assert_close(again, out.logits, rtol=0, atol=0)


@pytest.mark.parametrize("name", method_names())
@torch.no_grad()
def test_method_matrix(name, tiny_reference, prompt, tmp_path):
    method = method_class(name).example(tiny_reference, tmp_path).replace(chunk_size=32)
    check_method(method, tiny_reference, prompt)


@pytest.mark.parametrize("name", ["none", "streamkv-4", "kivi-4"])
@torch.no_grad()
def test_sampling_generate(name, tiny_reference, prompt):
    model = compressed(tiny_reference)
    torch.manual_seed(0)
    out = model.generate(prompt[:1, :20], max_new_tokens=5, do_sample=True, top_k=20, pad_token_id=0,
                         compression_config=preset(name, chunk_size=16))
    assert out.shape == (1, 25)


def test_sixteen_bit_mode_matches_transformers(tiny_reference, prompt):
    """bits=16 stores K/V in float16 for this fp32 model: logits agree with transformers' own
    LlamaForCausalLM to 1e-3 (fp16 rounding of K/V is ~5e-4 relative), at any chunk size."""
    with torch.no_grad():
        reference = tiny_reference(prompt).logits
        model = compressed(tiny_reference)
        for chunk in (7, 64, 1000):
            logits = model(prompt, compression_config=preset("none", chunk_size=chunk)).logits
            assert (logits - reference).abs().max().item() < 1e-3


@torch.no_grad()
def test_batch_with_left_padding_matches_single_rows(tiny_reference):
    """Each row of a left-padded batch gives the same greedy tokens as that row alone."""
    model = compressed(tiny_reference, CompressionConfig(chunk_size=8, key_bits_normal=8, value_bits_normal=8))
    g = torch.Generator().manual_seed(3)
    long, short = torch.randint(1, 256, (1, 30), generator=g), torch.randint(1, 256, (1, 21), generator=g)
    batch = torch.cat([long, torch.cat([torch.zeros(1, 9, dtype=torch.long), short], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :9] = 0
    out = model.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    alone_long = model.generate(long, max_new_tokens=8, do_sample=False, pad_token_id=0)
    alone_short = model.generate(short, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(out[0, 30:], alone_long[0, 30:])
    assert torch.equal(out[1, 30:], alone_short[0, 21:])


def test_cache_works_with_plain_transformers_model_for_post_rope_methods(tiny_reference, prompt):
    """Post-RoPE methods' CompressedCache plugs into a stock model too."""
    cache = CompressedCache(preset("int8"), tiny_reference.config)
    with torch.no_grad():
        logits = tiny_reference(prompt, past_key_values=cache).logits
        reference = tiny_reference(prompt).logits
    assert (logits - reference).abs().max().item() < 0.05
    # Pre-RoPE storage cannot work without positions, and says what to do.
    ours = CompressedCache(CompressionConfig(), tiny_reference.config)
    with pytest.raises(RuntimeError, match="AutoCompressedModelForCausalLM"):
        tiny_reference(prompt, past_key_values=ours)


def test_flat_layout_roundtrip():
    x = torch.randn(2, 3, 5, 4)
    assert torch.equal(from_flat(to_flat(x), 3), x)


def test_beam_search_is_refused_clearly(tiny_reference, prompt):
    model = compressed(tiny_reference, CompressionConfig(chunk_size=16))
    with pytest.raises(NotImplementedError, match="beam search"):
        model.generate(prompt[:1, :10], max_new_tokens=3, num_beams=2, do_sample=False, pad_token_id=0)

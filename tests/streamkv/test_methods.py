"""Every method on the tiny GQA Llama: the same matrix of checks (kvpress-style)."""

import pytest
import torch

from streamkv import BASELINES, CompressedCache, CompressedLlamaForCausalLM, CompressionConfig, baseline
from streamkv.methods.base import from_flat, to_flat

# Max |logit error| vs the plain model, per method, on the tiny model (logits ~ N(0, 0.5)).
TOLERANCE = {"none": 1e-3, "int8": 0.02, "int4_token": 0.2, "kivi-4": 0.2, "kivi-2": 0.8,
             "streamkv-4": 0.2, "streamkv-3": 0.4, "streamkv-2": 0.8}


def compressed(tiny_reference, config: CompressionConfig) -> CompressedLlamaForCausalLM:
    model = CompressedLlamaForCausalLM(tiny_reference.config, config).eval()
    model.load_state_dict(tiny_reference.state_dict())
    return model


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(0, 256, (2, 150), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", BASELINES)
@torch.no_grad()
def test_method_matrix(name, tiny_reference, prompt):
    extra = {"residual_length": 32} if name.startswith("kivi") else {}
    model = compressed(tiny_reference, baseline(name, chunk_size=32, **extra))
    reference = tiny_reference(prompt).logits
    logits = model(prompt).logits
    assert logits.shape == reference.shape  # logits for every position (perplexity needs them)
    err = (logits - reference).abs().max().item()
    assert err < TOLERANCE[name]
    stats = model.get_compression_stats()
    assert stats.tokens == 150 and stats.batch_size == 2
    assert stats.kv_bytes > 0 and stats.fp16_kv_bytes == 2 * 2 * 2 * 150 * 32 * 2
    assert stats.compression_ratio == pytest.approx(stats.fp16_kv_bytes / stats.kv_bytes)
    if name != "none":
        assert stats.compression_ratio > 1.0
    # generate: greedy continues the prompt; the cache is ours and grows by the new tokens.
    out = model.generate(prompt[:, :40], attention_mask=torch.ones(2, 40, dtype=torch.long),
                         max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 46) and torch.equal(out[:, :40], prompt[:, :40])
    assert model.get_compression_stats().tokens == 45
    # A reset cache is a fresh one: no statistics or open block carried over.
    cache = model.last_cache
    cache.reset()
    torch.testing.assert_close(model(prompt, past_key_values=cache).logits, logits, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["none", "streamkv-4", "kivi-4"])
@torch.no_grad()
def test_sampling_generate(name, tiny_reference, prompt):
    model = compressed(tiny_reference, baseline(name, chunk_size=16))
    torch.manual_seed(0)
    out = model.generate(prompt[:1, :20], max_new_tokens=5, do_sample=True, top_k=20, pad_token_id=0)
    assert out.shape == (1, 25)


def test_sixteen_bit_mode_matches_transformers(tiny_reference, prompt):
    """bits=16 stores K/V in float16 for this fp32 model: logits agree with transformers' own
    LlamaForCausalLM to 1e-3 (fp16 rounding of K/V is ~5e-4 relative), at any chunk size."""
    with torch.no_grad():
        reference = tiny_reference(prompt).logits
        for chunk in (7, 64, 1000):
            logits = compressed(tiny_reference, baseline("none", chunk_size=chunk))(prompt).logits
            assert (logits - reference).abs().max().item() < 1e-3


@torch.no_grad()
def test_batch_with_left_padding_matches_single_rows(tiny_reference):
    """Each row of a left-padded batch gives the same greedy tokens as that row alone."""
    model = compressed(tiny_reference, CompressionConfig(chunk_size=8, key_bits_normal=8,
                                                         value_bits_normal=8))
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
    """Baselines store post-RoPE keys, so CompressedCache plugs into a stock model too."""
    cache = CompressedCache(baseline("int8"), tiny_reference.config)
    with torch.no_grad():
        logits = tiny_reference(prompt, past_key_values=cache).logits
        reference = tiny_reference(prompt).logits
    assert (logits - reference).abs().max().item() < TOLERANCE["int8"]
    # Pre-RoPE storage cannot work without positions, and says what to do.
    ours = CompressedCache(CompressionConfig(), tiny_reference.config)
    with pytest.raises(RuntimeError, match="CompressedLlamaForCausalLM"):
        tiny_reference(prompt, past_key_values=ours)


def test_flat_layout_roundtrip():
    x = torch.randn(2, 3, 5, 4)
    assert torch.equal(from_flat(to_flat(x), 3), x)


def test_beam_search_is_refused_clearly(tiny_reference, prompt):
    model = compressed(tiny_reference, CompressionConfig(chunk_size=16))
    with pytest.raises(NotImplementedError, match="beam search"):
        model.generate(prompt[:1, :10], max_new_tokens=3, num_beams=2, do_sample=False, pad_token_id=0)

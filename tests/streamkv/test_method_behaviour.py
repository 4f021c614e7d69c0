"""What the method promises: pre-RoPE keys, sink/outlier protection, chunk independence,
and a cache that holds only packed bytes."""

import math

import pytest
import torch

from streamkv import CompressedCache, CompressedLlamaForCausalLM, CompressionConfig, preset
from streamkv.layers import Step, from_flat


def compressed(tiny_reference, config):
    model = CompressedLlamaForCausalLM(tiny_reference.config, config).eval()
    model.load_state_dict(tiny_reference.state_dict())
    return model


def prompt(n=160, seed=5):
    return torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(seed))


EIGHT_BITS = dict(key_bits_normal=8, value_bits_normal=8)


@torch.no_grad()
def test_pre_rope_keys_rotate_back_to_model_keys(tiny_reference):
    ids = prompt()
    reference = tiny_reference(ids, use_cache=True).past_key_values
    model = compressed(tiny_reference, CompressionConfig(chunk_size=32, **EIGHT_BITS))
    cache = model(ids).past_key_values
    for i, layer in enumerate(cache.layers):
        # dequantized pre-RoPE keys, rotated at their positions
        keys, values = (from_flat(t, layer.n_heads) for t in layer.read(cache.step))
        ref_k, ref_v = reference.layers[i].keys, reference.layers[i].values
        # 8-bit symmetric per channel: |error| <= step/2 = absmax/255 per pre-RoPE channel; the
        # rotation mixes channel pairs, so the rotated error is at most sqrt(2) times that.
        pre_rope_absmax = ref_k.abs().amax()  # rotation preserves pair norms: a safe bound
        bound = math.sqrt(2) * float(pre_rope_absmax) * math.sqrt(2) / 255
        assert (keys - ref_k).abs().max().item() <= bound
        # Values: per token, their 8-bit scale rounded up on a log grid by at most 2**(1/16).
        assert (values - ref_v).abs().max().item() <= float(ref_v.abs().amax()) / 255 * 2 ** (1 / 16)


@torch.no_grad()
def test_eight_bits_everything_is_close_to_the_baseline(tiny_reference):
    """8-bit codes move K/V by <= 0.4% of their range; on this model (logits of magnitude ~1)
    that moves logits by well under 0.02, 20x less than the 4-bit setting does."""
    ids = prompt()
    reference = tiny_reference(ids).logits
    err8 = (compressed(tiny_reference, CompressionConfig(chunk_size=32, **EIGHT_BITS))(ids).logits
            - reference).abs().max().item()
    err4 = (compressed(tiny_reference, CompressionConfig(chunk_size=32))(ids).logits
            - reference).abs().max().item()
    assert err8 < 0.02
    assert err8 < err4 / 5


@torch.no_grad()
def test_result_depends_on_chunk_boundaries_only_through_quantization(tiny_reference):
    ids = prompt()
    reference = tiny_reference(ids).logits
    outs = {c: compressed(tiny_reference, CompressionConfig(chunk_size=c))(ids).logits for c in (16, 37, 64)}
    quant_err = max((o - reference).abs().max().item() for o in outs.values())
    for a, b in ((16, 37), (16, 64), (37, 64)):
        assert (outs[a] - outs[b]).abs().max().item() <= 2 * quant_err
    # Without quantization the chunking changes nothing beyond fp16 storage rounding.
    lossless = [compressed(tiny_reference, preset("none", chunk_size=c))(ids).logits for c in (16, 37)]
    assert (lossless[0] - lossless[1]).abs().max().item() < 1e-3


@torch.no_grad()
def test_peak_cache_bytes_are_compressed_bytes_plus_at_most_one_chunk(tiny_reference):
    """Measured after every layer update of a long chunked prefill: the cache never holds the
    full-precision prompt, only packed blocks (plus, at most, one chunk)."""
    ids = prompt(600)
    chunk = 64
    model = compressed(tiny_reference, CompressionConfig(chunk_size=chunk))
    cache = model.new_cache()
    seen = []
    original = cache.update

    def measured_update(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(cache.nbytes())
        return out

    cache.update = measured_update
    model(ids, past_key_values=cache)
    final = cache.nbytes()
    cfg = model.config
    one_chunk_fp16 = 2 * 2 * chunk * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) \
        * cfg.num_hidden_layers
    full_fp16 = one_chunk_fp16 * 600 // chunk
    assert max(seen) <= final + one_chunk_fp16
    assert final < 0.5 * full_fp16  # 4-bit codes + metadata on a head_dim-16 model


@pytest.fixture(scope="module")
def wide_model():
    """A tiny Llama with realistic heads (head_dim 64, 2 KV heads) so metadata is realistic."""
    from tests.conftest import tiny_llama_config
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(hidden_size=256, num_attention_heads=4)).eval()


@torch.no_grad()
def _planted_kv(model, n=512):
    """Real K/V of a tiny model with two planted outlier channels and a 30x first token."""
    ids = prompt(n, seed=11)
    cache = model(ids, use_cache=True).past_key_values
    k, v = cache.layers[0].keys.clone(), cache.layers[0].values.clone()  # [1, 2, n, 64]
    for t in (k, v):
        t[:, 0, :, 3] *= 12.0
        t[:, 1, :, 9] *= 12.0
        t[:, :, 0, :] *= 30.0
    return k, v


@torch.no_grad()
def _reconstruction_error(model, config, k, v):
    cache = CompressedCache(config.replace(pre_rope_keys=False), model.config)  # planted tensors as they are
    layer = cache.layers[0]
    for start in range(0, k.shape[2], config.chunk_size):
        sl = slice(start, start + config.chunk_size)
        layer.update(k[:, :, sl], v[:, :, sl], Step())
    keys, values = (from_flat(t, layer.n_heads) for t in layer.read(Step()))
    # Attention output error for random queries: what the model would see.
    q = torch.randn(1, 2, 32, k.shape[-1], generator=torch.Generator().manual_seed(0))
    att = torch.nn.functional.scaled_dot_product_attention
    err = (att(q, keys, values) - att(q, k, v)).norm() / att(q, k, v).norm()
    bits = 8 * (layer.nbytes("keys") + layer.nbytes("values")) / (2 * k.numel())
    return err.item(), bits


def test_sink_and_outlier_protection_beats_uniform_4bit(wide_model):
    k, v = _planted_kv(wide_model)
    common = dict(chunk_size=128, value_quant_groups=1, outlier_threshold_relative=4.0)
    protected, bits_p = _reconstruction_error(wide_model, CompressionConfig(**common), k, v)
    plain, bits_u = _reconstruction_error(
        wide_model, CompressionConfig(sink_protection=False, outlier_detection=False, **common), k, v)
    assert protected < 0.5 * plain
    # Two of 128 channels and 4 of 512 tokens at 8 bits: a few percent more bits.
    assert bits_p <= bits_u * 1.06


def test_outliers_are_detected_and_traced(wide_model):
    k, v = _planted_kv(wide_model)
    cfg = CompressionConfig(chunk_size=128, outlier_threshold_relative=4.0)
    cache = CompressedCache(cfg, wide_model.config)
    layer = cache.layers[0]
    layer.pre_rope = False
    layer.update(k, v, Step())
    rows = {(r["kind"], r["head"]): r["outlier_channels"] for r in layer.trace_rows()}
    assert 3 in rows[("key", 0)] and 9 in rows[("key", 1)]
    assert 3 in rows[("value", 0)] and 9 in rows[("value", 1)]
    key_out, value_out = layer.outlier_elements()
    assert key_out >= 2 * (512 - cfg.attention_sink_size)

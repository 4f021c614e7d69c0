"""streamkv's `full_precision_tail` switch: new tokens wait in 16 bits and are quantized one
whole chunk at a time, once more than R tokens follow them; counted, read and attended like
any stored token."""

from __future__ import annotations

import pytest
import torch

from streamkv import CompressedCache, CompressedLlamaForCausalLM, InvalidSettings, preset


def compressed(tiny_reference) -> CompressedLlamaForCausalLM:
    model = CompressedLlamaForCausalLM(tiny_reference.config).eval()
    model.load_state_dict(tiny_reference.state_dict())
    return model


def ids(n, seed=1):
    return torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_chunks_are_quantized_once_r_tokens_follow_them(tiny_reference):
    model = compressed(tiny_reference)
    cache = model.new_cache(preset("streamkv-4", chunk_size=32, full_precision_tail=20))
    out = model(ids(150), past_key_values=cache)
    layer = cache.layers[0]
    # Blocks end where chunks end (the 4 sink tokens start the first); [128, 150) has fewer than
    # 20 tokens after it: the last 22 tokens wait in 16 bits.
    assert [b.length for b in layer.blocks] == [4, 28, 32, 32, 32] and layer.residual_k.shape[1] == 22
    assert layer.residual_k.dtype == torch.float16
    token = out.logits[:, -1:].argmax(-1)
    seen = []
    for _ in range(31):  # [128, 160) is quantized once 20 tokens follow it: at 180 tokens
        token = model(token, past_key_values=cache).logits[:, -1:].argmax(-1)
        seen.append((len(layer.blocks), layer.residual_k.shape[1]))
    assert seen[28] == (5, 51) and seen[29] == (6, 20) and seen[30] == (6, 21)
    assert layer.get_seq_length() == 181 and layer.blocks[-1].length == 32


@torch.no_grad()
def test_zero_stores_a_prefill_of_whole_chunks_as_without_a_tail(tiny_reference):
    """R = 0: every whole chunk is quantized as it arrives, into the same blocks as without a
    tail (the same logits), and only the last, partial chunk waits in 16 bits."""
    model = compressed(tiny_reference)
    method = preset("streamkv-4", chunk_size=32)
    plain = model(ids(128), compression_config=method)
    tail = model(ids(128), compression_config=method.replace(full_precision_tail=0))
    torch.testing.assert_close(tail.logits, plain.logits, rtol=0, atol=0)
    assert tail.past_key_values.layers[0].residual_k.shape[1] == 0
    cache = model.new_cache(method.replace(full_precision_tail=0))
    model(ids(150), past_key_values=cache)
    layer = cache.layers[0]
    assert [b.length for b in layer.blocks] == [4, 28, 32, 32, 32] and layer.residual_k.shape[1] == 22


@torch.no_grad()
def test_a_tail_longer_than_the_prompt_is_16_bit_storage(tiny_reference):
    """With no sink and R beyond the prompt nothing is quantized: logits are transformers' own to
    fp16 rounding (as method none's), and the bytes are those of 16-bit K/V, counted."""
    model = compressed(tiny_reference)
    method = preset("streamkv-4", chunk_size=32, full_precision_tail=1000, sink_protection=False)
    prompt = ids(150)
    out = model(prompt, compression_config=method)
    reference = tiny_reference(prompt).logits
    assert (out.logits - reference).abs().max().item() < 1e-3
    stats = model.get_compression_stats(out.past_key_values, method)
    assert stats.kv_bytes >= stats.fp16_kv_bytes  # the tail's 16-bit tokens (+ positions)
    quantized = model(prompt, compression_config=method.replace(full_precision_tail=None))
    assert (quantized.logits - reference).abs().max().item() > 10 * (out.logits - reference).abs().max().item()


@pytest.mark.parametrize("strict", [False, True])
@torch.no_grad()
def test_blockwise_attention_equals_the_dense_path_with_a_tail(tiny_reference, strict):
    model = compressed(tiny_reference)
    method = preset("streamkv-4", chunk_size=32, full_precision_tail=8, quantize_current_chunk=strict)
    runs = []
    for window in (0, 1):
        cache = CompressedCache(method, model.config, model.model.rotary_emb, attention_window=window,
                                blockwise_queries=10**6)
        logits = [model(ids(100), past_key_values=cache).logits]
        for _ in range(40):  # across several cuts
            logits.append(model(logits[-1][:, -1:].argmax(-1), past_key_values=cache).logits)
        runs.append(torch.cat(logits, dim=1))
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-4, atol=1e-5)


def test_the_setting_is_validated_and_absent_from_default_ids():
    assert "full_precision_tail" not in preset("streamkv-4").to_dict()  # old config ids unchanged
    assert preset("streamkv-4", full_precision_tail=0).to_dict()["full_precision_tail"] == 0
    assert preset("streamkv-4", full_precision_tail=0).config_id != preset("streamkv-4").config_id
    with pytest.raises(InvalidSettings, match="full_precision_tail"):
        preset("streamkv-4", full_precision_tail=-1)

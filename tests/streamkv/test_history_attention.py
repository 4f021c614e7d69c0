"""Blockwise attention over the packed history (streamkv.history_attention, PackedLayer.attend):
the online-softmax merge equals one softmax over everything, and every packed method gives the
dense path's logits and greedy tokens, strict or not, padded or not, at every window size."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import repeat_kv

from streamkv import CompressedCache, CompressedLlamaForCausalLM, Method, method_class, method_names
from streamkv import history_attention as ha
from streamkv.layers import PackedLayer


def compressed(tiny_reference) -> CompressedLlamaForCausalLM:
    model = CompressedLlamaForCausalLM(tiny_reference.config).eval()
    model.load_state_dict(tiny_reference.state_dict())
    return model


def reference_attention(query, keys, values, mask):
    """query [B, Hq, q, D], keys/values [B, Hkv, T, D], bool mask [B, 1, q, T]: plain SDPA."""
    groups = query.shape[1] // keys.shape[1]
    return torch.nn.functional.scaled_dot_product_attention(
        query, repeat_kv(keys, groups), repeat_kv(values, groups), attn_mask=mask).transpose(1, 2)


@pytest.mark.parametrize("cuts", [[37], [5, 20, 37], [1] * 37])
def test_windows_merged_online_equal_one_softmax(cuts):
    g = torch.Generator().manual_seed(0)
    b, hq, hkv, q, d = 2, 6, 3, 4, 8
    t = sum(cuts)
    query = torch.randn(b, hq, q, d, generator=g)
    keys, values = torch.randn(b, hkv, t, d, generator=g), torch.randn(b, hkv, t, d, generator=g)
    mask = torch.rand(b, 1, q, t, generator=g) > 0.3
    mask[0, 0, 1] = False  # a row that attends to nothing (a left-padded query)
    mask[1, 0, 2, :5] = False  # a row whose first windows are all masked
    mask[1, 0, 2, 30] = True
    acc, start = ha.OnlineSoftmax(), 0
    stacked = ha.stack_queries(query, hkv)
    for n in cuts:
        m = ha.window_mask(mask, start, start + n, q, hq // hkv, None)
        ha.add_window(acc, stacked, keys[:, :, start:start + n], values[:, :, start:start + n], d ** -0.5, m)
        start += n
    got = ha.unstack_output(acc.result(), hq, q)
    expected = reference_attention(query, keys, values, mask)
    live = mask.any(-1).squeeze(1)  # [B, q]; SDPA gives NaN for empty rows, the merge gives 0
    torch.testing.assert_close(got[live], expected[live], rtol=1e-5, atol=1e-6)
    assert torch.equal(got[~live], torch.zeros_like(got[~live]))


def test_causal_window_mask_is_lower_right():
    q, groups, first = 3, 2, 10  # queries at key positions 10, 11, 12
    assert ha.window_mask(None, 0, 10, q, groups, first) is None  # all keys precede all queries
    assert ha.window_mask(None, 0, 11, q, groups, first) is None  # key 10 is seen by every query
    m = ha.window_mask(None, 8, 13, q, groups, first)[0, 0]
    one = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(m, torch.cat([one, one]))  # rows g*q + i: the same per query head


def run(model, method, ids, mask, window, steps=4, queries=10**6):
    """Prefill + greedy steps through one cache: logits of every position, concatenated."""
    cache = CompressedCache(method, model.config, model.model.rotary_emb, attention_window=window,
                            blockwise_queries=queries)
    return prefill_and_decode(model, cache, ids, mask, steps)


def prefill_and_decode(model, cache, ids, mask, steps):
    """Logits of the prompt and of `steps` greedy tokens through `cache`, concatenated."""
    logits = [model(ids, attention_mask=mask, past_key_values=cache).logits]
    for _ in range(steps):
        token = logits[-1][:, -1:].argmax(-1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits.append(model(token, attention_mask=mask, past_key_values=cache).logits)
    return torch.cat(logits, dim=1)


@pytest.mark.parametrize("name", method_names())
@pytest.mark.parametrize("strict", [False, True])
@torch.no_grad()
def test_every_packed_method_equals_the_dense_path(name, strict, tiny_reference, tmp_path, one_thread_module):
    if method_class(name).make_layer is Method.make_layer:
        pytest.skip(f"method {name!r} builds a cache of its own, not streamkv's packed layers")
    model = compressed(tiny_reference)
    method = method_class(name).example(tiny_reference, tmp_path).replace(chunk_size=32,
                                                                          quantize_current_chunk=strict)
    ids = torch.randint(0, 256, (2, 100), generator=torch.Generator().manual_seed(1))
    dense = run(model, method, ids, None, window=0)
    for window in (1, 40, 10**6):  # every block its own window, a few blocks, one window
        torch.testing.assert_close(run(model, method, ids, None, window), dense, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["streamkv-4", "kivi-4", "turboquant-3"])
@torch.no_grad()
def test_left_padded_batch_equals_the_dense_path(name, tiny_reference):
    from streamkv import preset

    model = compressed(tiny_reference)
    method = preset(name, chunk_size=16).replace(**({"residual_length": 32} if name == "kivi-4" else {}))
    ids = torch.randint(1, 256, (2, 70), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :23] = 0
    ids[1, :23] = 0
    dense, blockwise = run(model, method, ids, mask, 0), run(model, method, ids, mask, 16)
    torch.testing.assert_close(blockwise[0], dense[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(blockwise[1, 23:], dense[1, 23:], rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_generate_decodes_blockwise_with_the_dense_paths_tokens(tiny_reference, monkeypatch):
    """model.generate uses the default cache (blockwise decode, dense prefill chunks); its greedy
    tokens are the dense path's, and the decode steps really went through `attend`."""
    from streamkv import preset

    model = compressed(tiny_reference)
    method = preset("streamkv-4", chunk_size=32)
    ids = torch.randint(0, 256, (1, 90), generator=torch.Generator().manual_seed(4))
    calls = []
    original = PackedLayer.attend
    monkeypatch.setattr(PackedLayer, "attend", lambda self, q, *a: calls.append(q.shape[2]) or original(self, q, *a))
    got = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0, compression_config=method)
    dense_cache = CompressedCache(method, model.config, model.model.rotary_emb, attention_window=0)
    want = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0, past_key_values=dense_cache,
                          compression_config=method)
    assert torch.equal(got, want)
    layers = model.config.num_hidden_layers
    assert calls == [1] * (7 * layers)  # the 7 decode steps after the prompt, every layer; prefill dense


@torch.no_grad()
def test_windows_cover_the_history_once_and_stay_small(tiny_reference):
    """Windows are whole pieces in order; none is longer than attention_window + one block, so
    a decode step holds the codes plus one window in full precision, never the whole history."""
    from streamkv import preset

    model = compressed(tiny_reference)
    for window in (1, 50, 200):
        cache = CompressedCache(preset("streamkv-4", chunk_size=32), model.config, model.model.rotary_emb,
                                attention_window=window)
        model(torch.randint(0, 256, (1, 150), generator=torch.Generator().manual_seed(5)), past_key_values=cache)
        layer = cache.layers[0]
        spans = [(start, keys.shape[1]) for start, keys, _ in layer.history_windows(cache.step, layer.length)]
        assert [s for s, _ in spans] == [0, *[s + n for s, n in spans[:-1]]]
        assert sum(n for _, n in spans) == 150
        assert max(n for _, n in spans) <= window + 32
        if window == 1:
            assert len(spans) == len(layer.blocks)


def test_non_causal_attention_is_refused_clearly(tiny_reference):
    from streamkv import attention, preset

    model = compressed(tiny_reference)
    cache = model.new_cache(preset("streamkv-4"))
    module = model.model.layers[0].self_attn
    q = torch.zeros(1, 4, 1, 16)
    with pytest.raises(ValueError, match="attention_window=0"):
        attention.chunked_sdpa_forward(module, q, q[:, :2], q[:, :2], None, is_causal=False, streamkv_cache=cache)


@torch.no_grad()
def test_peak_bytes_are_the_dense_paths(tiny_reference):
    """Stored bytes and their peak do not depend on the read path (the blockwise write of the
    last layer happens in `attend`; the peak is taken after it)."""
    from streamkv import preset

    model = compressed(tiny_reference)
    method = preset("streamkv-4", chunk_size=32)
    peaks = []
    for window in (0, 16):
        cache = CompressedCache(method, model.config, model.model.rotary_emb, attention_window=window)
        out = model(torch.randint(0, 256, (1, 70), generator=torch.Generator().manual_seed(6)), past_key_values=cache)
        for _ in range(3):
            out = model(out.logits[:, -1:].argmax(-1), past_key_values=cache)
        peaks.append((cache.peak_bytes, cache.nbytes()))
    assert peaks[0] == peaks[1] and peaks[0][0] >= peaks[0][1] > 0


@torch.no_grad()
def test_decode_tokens_fill_blocks_instead_of_one_block_each(tiny_reference):
    """Every packed method keeps a long generation's pieces few: the blocks a decode step reads
    grow with the tokens / chunk_size, not with the tokens generated."""
    from streamkv import preset

    model = compressed(tiny_reference)
    for name in ("none", "streamkv-4", "kivi-4", "int8", "quarot-4", "turboquant-4"):
        cache = model.new_cache(preset(name, chunk_size=16))
        out = model(torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(7)), past_key_values=cache)
        for _ in range(40):
            out = model(out.logits[:, -1:].argmax(-1), past_key_values=cache)
        pieces = len(cache.layers[0]._pieces(cache.layers[0].length))
        assert pieces <= 72 // 16 + 3, (name, pieces)


@torch.no_grad()
def test_the_stats_say_which_read_path_each_step_took(tiny_reference):
    from streamkv import preset

    model = compressed(tiny_reference)
    method = preset("streamkv-4", chunk_size=32)
    model.generate(torch.randint(0, 256, (1, 70), generator=torch.Generator().manual_seed(8)), max_new_tokens=4,
                   do_sample=False, pad_token_id=0, compression_config=method)
    # chunks of 32, 32 and 6 tokens (6 <= blockwise_queries: read blockwise), then 3 decode steps
    stats = model.get_compression_stats()
    assert stats.history_reads == "dense x2, blockwise x4" and stats.history_read_counts == {"dense": 2, "blockwise": 4}
    dense = CompressedCache(method, model.config, model.model.rotary_emb, attention_window=0)
    model(torch.zeros(1, 40, dtype=torch.long), past_key_values=dense)
    assert model.get_compression_stats(dense).history_reads == "dense x2"

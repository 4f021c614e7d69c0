"""Attention straight from the packed codes (`streamkv.code_attention`), run by Triton's
interpreter on CPU, against the reference: the part decoded (zeros on the other channels),
RoPE applied at the tokens' positions, then plain matmuls. The sums run in another order, so
fp32 results agree to rounding (rtol 1e-5), not bit for bit."""

import pytest
import torch

pytest.importorskip("triton")  # interpreted on CPU: tests/conftest.py sets TRITON_INTERPRET=1

from streamkv import code_attention, quant  # noqa: E402
from streamkv.history_attention import heads_of  # noqa: E402
from streamkv.storage import INDEX_DTYPE, ScaleLayout, encode  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread_module")

B, H, D, T = 2, 3, 16, 24  # T: whole token groups of 8 (KIVI keys)
C = H * D


def rope_tables(t: int, seed: int = 1):
    """cos/sin [B, t, D] with both halves equal (a rotary embedding's layout), positions per row."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.randint(0, 500, (B, t), generator=g).float()
    freq = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
    angles = pos[..., None] * freq  # [B, t, D/2]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def layout_of(name: str, channels: torch.Tensor):
    c = channels.numel()
    if name == "per_channel":  # streamkv / KIVI keys
        return ScaleLayout(symmetric=False)
    if name == "per_token_groups_log":  # streamkv values: groups of 4 channels, log-grid scales
        seg = torch.unique(channels // 4, return_inverse=True)[1].to(INDEX_DTYPE)
        return ScaleLayout(token_group=1, segment_of=seg, n_segments=int(seg.max()) + 1, log_scale=True)
    if name == "token_groups":  # KIVI's grouped per-channel keys
        return ScaleLayout(token_group=8, symmetric=False)
    assert c
    return ScaleLayout()


def channel_sets():
    some_heads = torch.cat([torch.arange(0, D), torch.arange(2 * D, 3 * D)])  # heads 0 and 2 only
    scattered = torch.tensor([1, 3, 4, 9, 15, 16, 17, 30, 40, 47])  # outlier-like, partners apart
    return {"all": None, "heads_0_2": some_heads, "scattered": scattered}


def part_of(bits: int, layout_name: str, channels, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    chans = torch.arange(C) if channels is None else channels
    x = torch.randn(B, T, chans.numel(), generator=g) * torch.linspace(0.3, 2.0, chans.numel())
    return encode(x, bits, layout_of(layout_name, chans),
                  channels=None if channels is None else channels.to(INDEX_DTYPE))


def full_of(part) -> torch.Tensor:
    """The part decoded into [B, T, C] fp32, zeros on the channels it does not hold."""
    out = torch.zeros(B, part.length, C)
    part.decode_into(out, 0)
    return out


def queries_of(rows: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(B, H, rows, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("layout_name", ["per_channel", "per_token_groups_log", "token_groups", "whole"])
@pytest.mark.parametrize("channels", list(channel_sets()))
@pytest.mark.parametrize("pre_rope", [True, False])
def test_scores_from_codes_equal_decoded_keys_times_queries(bits, layout_name, channels, pre_rope):
    part = part_of(bits, layout_name, channel_sets()[channels])
    # GQA rows that are not a power of two, more than one program's 16; a window shorter than the part
    rows, t = 21, T - 3
    q = queries_of(rows)
    keys = full_of(part)[:, :t]
    cos = sin = None
    if pre_rope:
        cos, sin = rope_tables(t)
        keys = quant.apply_rope(heads_of(keys, H), cos, sin)  # [B, H, t, D]
    else:
        keys = heads_of(keys, H)
    expected = q @ keys.transpose(-1, -2)
    scores = torch.full((B, H, rows, t), 0.25)  # accumulates onto what is there
    code_attention.part_scores_(scores, part, q, cos, sin, H, D)
    torch.testing.assert_close(scores, expected + 0.25, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("layout_name", ["per_token_groups_log", "per_channel"])
@pytest.mark.parametrize("channels", list(channel_sets()))
def test_weighted_values_from_codes_equal_probs_times_decoded_values(bits, layout_name, channels):
    part = part_of(bits, layout_name, channel_sets()[channels], seed=3)
    rows, t = 19, T - 1
    probs = torch.softmax(torch.randn(B, H, rows, t, generator=torch.Generator().manual_seed(4)), -1)
    values = heads_of(full_of(part)[:, :t], H)
    out = torch.full((B, H, rows, D), -1.0)
    code_attention.part_values_(out, part, probs, H, D)
    torch.testing.assert_close(out, probs @ values - 1.0, rtol=1e-5, atol=1e-5)


def test_head_ranges_split_sorted_channels_by_head():
    chans = torch.tensor([1, 3, 17, 40, 47], dtype=INDEX_DTYPE)
    assert code_attention.head_ranges(chans, H, D, "cpu").tolist() == [0, 2, 3, 5]
    assert code_attention.head_ranges(None, H, D, "cpu").tolist() == [0, 16, 32, 48]


# --- the whole model: PackedLayer.attend on the code path ---------------------------------------
def run_model(model, method, ids, *, fused: bool, window: int, mask=None, steps: int = 3, codes: bool = True):
    """Prefill (every chunk through `attend`) + greedy steps; logits of every position and the cache."""
    from streamkv import CompressedCache

    from tests.streamkv.test_history_attention import prefill_and_decode

    cache = CompressedCache(method, model.config, model.model.rotary_emb, fused=fused, attention_window=window,
                            blockwise_queries=10**6, code_attention=codes)
    return prefill_and_decode(model, cache, ids, mask, steps), cache


def packed_methods():
    from streamkv import Method, method_class, method_names

    return [n for n in method_names() if method_class(n).make_layer is not Method.make_layer]


# every packed method streaming; strict for one method per storage kind (the strict protocol only
# changes which tokens are read back, which the streamkv and KIVI cases cover): CI time
CASES = [(name, False) for name in packed_methods()] + [("streamkv", True), ("kivi", True), ("int8", True)]


@pytest.mark.parametrize("name, strict", CASES)
@torch.no_grad()
def test_every_packed_method_reads_its_codes_or_falls_back_with_the_dense_paths_logits(
        name, strict, tiny_reference, tmp_path):
    from streamkv import CompressedLlamaForCausalLM, method_class

    model = CompressedLlamaForCausalLM(tiny_reference.config).eval()
    model.load_state_dict(tiny_reference.state_dict())
    method = method_class(name).example(tiny_reference, tmp_path).replace(chunk_size=16, quantize_current_chunk=strict)
    if name == "kivi":  # packed blocks once 16 + 8 tokens have arrived
        method = method.replace(residual_length=16, group_size=8)
    ids = torch.randint(0, 256, (2, 45), generator=torch.Generator().manual_seed(1))
    dense, _ = run_model(model, method, ids, fused=False, window=0)
    codes, cache = run_model(model, method, ids, fused=True, window=20)
    torch.testing.assert_close(codes, dense, rtol=1e-4, atol=1e-4)
    # a step whose history holds no packed block yet is reported blockwise; later steps read codes
    # where all parts are affine below 16 bits (at least the 3 decode steps), else decode each window
    if name in ("streamkv", "calibrated", "int8", "int4_token", "kivi"):
        assert cache.history_reads.get("codes", 0) >= 3 and sum(cache.history_reads.values()) == 6, \
            cache.history_reads
    else:
        assert cache.history_reads == {"blockwise": 6}, cache.history_reads


@torch.no_grad()
def test_a_left_padded_batch_with_a_16_bit_tail_reads_its_codes(tiny_reference):
    from streamkv import CompressedLlamaForCausalLM, preset

    model = CompressedLlamaForCausalLM(tiny_reference.config).eval()
    model.load_state_dict(tiny_reference.state_dict())
    method = preset("streamkv-3", chunk_size=16).replace(full_precision_tail=1,
                                                          head_key_bits=((2, 4), (3, 3)))  # per-head parts too
    ids = torch.randint(1, 256, (2, 50), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :13] = 0
    ids[1, :13] = 0
    dense, _ = run_model(model, method, ids, fused=False, window=0, mask=mask, steps=4)
    codes, cache = run_model(model, method, ids, fused=True, window=16, mask=mask, steps=4)
    assert cache.history_reads.get("codes", 0) >= 4 and cache.layers[0].residual_k is not None  # decode steps
    torch.testing.assert_close(codes[0], dense[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(codes[1, 13:], dense[1, 13:], rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_code_attention_is_asked_for_and_needs_the_triton_path(tiny_reference):
    from streamkv import CompressedLlamaForCausalLM, preset

    model = CompressedLlamaForCausalLM(tiny_reference.config).eval()
    model.load_state_dict(tiny_reference.state_dict())
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(3))
    method = preset("streamkv-4", chunk_size=16)
    for fused, codes in ((True, False), (False, True)):  # not asked for; no Triton path
        _, cache = run_model(model, method, ids, fused=fused, window=16, codes=codes, steps=2)
        assert "codes" not in cache.history_reads and cache.history_reads.get("blockwise", 0) >= 2


@pytest.mark.parametrize("strict", [False, True])
@torch.no_grad()
def test_with_code_attention_prefill_chunks_read_their_history_from_the_codes(tiny_reference, strict):
    """Chunks longer than blockwise_queries: dense without code attention, from the codes with it
    (history in codes, the chunk itself in full precision or, strict, from its own codes)."""
    from streamkv import CompressedCache, CompressedLlamaForCausalLM, preset

    model = CompressedLlamaForCausalLM(tiny_reference.config).eval()
    model.load_state_dict(tiny_reference.state_dict())
    method = preset("streamkv-3", chunk_size=16, quantize_current_chunk=strict)
    ids = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(6))
    runs = {}
    for codes in (False, True):
        # without code attention the plain-torch path (the same codes, bit for bit; no interpreter)
        cache = CompressedCache(method, model.config, model.model.rotary_emb, fused=codes, attention_window=16,
                                code_attention=codes)  # blockwise_queries: the default 16
        runs[codes] = (model(ids, past_key_values=cache).logits, cache)
    torch.testing.assert_close(runs[True][0], runs[False][0], rtol=1e-4, atol=1e-4)
    assert runs[False][1].history_reads == {"blockwise": 4}  # 16-token chunks: at most blockwise_queries
    assert runs[True][1].history_reads == {"blockwise": 1, "codes": 3}  # the first chunk has no codes yet
    big = {}
    for codes in (False, True):  # 32-token chunks, above blockwise_queries=16
        cache = CompressedCache(method.replace(chunk_size=32), model.config, model.model.rotary_emb, fused=codes,
                                attention_window=16, code_attention=codes)
        big[codes] = (model(ids, past_key_values=cache).logits, cache)
    torch.testing.assert_close(big[True][0], big[False][0], rtol=1e-4, atol=1e-4)
    assert big[False][1].history_reads == {"dense": 2}
    assert big[True][1].history_reads == {"dense": 1, "codes": 1}

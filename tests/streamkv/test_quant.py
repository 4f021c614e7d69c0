"""Pure quantization math: round-trip bounds, exact packing, RoPE inversion."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamkv import quant

BITS = [2, 3, 4, 8]


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from(BITS), rows=st.integers(1, 5), cols=st.integers(1, 40),
       scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**31 - 1))
def test_symmetric_roundtrip_within_half_step(bits, rows, cols, scale, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(rows, cols, generator=g) * 2 - 1) * scale
    absmax = x.abs().amax(dim=0)  # per channel
    lo, step = quant.symmetric_range(absmax, bits)
    codes = quant.quantize(x, lo, step, bits)
    assert int(codes.max()) <= quant.max_code(bits)
    err = (quant.dequantize(codes, lo, step, torch.float32) - x).abs()
    assert bool((err <= step / 2 * (1 + 1e-5) + 1e-6 * scale).all())


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from(BITS), cols=st.integers(1, 40), offset=st.floats(-100, 100),
       seed=st.integers(0, 2**31 - 1))
def test_minmax_roundtrip_within_half_step(bits, cols, offset, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, cols, generator=g) + offset
    lo, step = quant.minmax_range(x.amin(-1, keepdim=True), x.amax(-1, keepdim=True), bits)
    codes = quant.quantize(x, lo, step, bits)
    err = (quant.dequantize(codes, lo, step, torch.float32) - x).abs()
    assert bool((err <= step / 2 + 1e-4 * (1 + abs(offset))).all())


def test_out_of_range_values_saturate():
    lo, step = quant.symmetric_range(torch.tensor([1.0]), 4)
    codes = quant.quantize(torch.tensor([5.0, -5.0]), lo, step, 4)
    assert codes.tolist() == [15, 0]


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("n", [1, 7, 8, 13, 64, 191])
def test_pack_unpack_exact(bits, n):
    g = torch.Generator().manual_seed(bits * 1000 + n)
    codes = torch.randint(0, 1 << bits, (2, 3, n), generator=g, dtype=torch.uint8)
    packed = quant.pack_bits(codes, bits)
    assert packed.dtype == torch.uint8
    expected = -(-n * bits // 8) if 8 % bits == 0 else -(-n // 8) * bits
    assert packed.shape[-1] == quant.packed_size(n, bits) == expected
    assert torch.equal(quant.unpack_bits(packed, bits, n), codes)


def test_pack_is_dense_for_three_bits():
    # 8 codes of 3 bits fill exactly 3 bytes: the bits are really packed, not padded to 4.
    codes = torch.tensor([[7, 0, 7, 0, 7, 0, 7, 0]], dtype=torch.uint8)
    packed = quant.pack_bits(codes, 3)
    assert packed.shape[-1] == 3
    assert int(sum(bin(b).count("1") for b in packed.flatten().tolist())) == 12


def test_invert_rope_recovers_pre_rope():
    torch.manual_seed(0)
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rope = LlamaRotaryEmbedding(LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=10000.0))
    x = torch.randn(2, 3, 10, 16)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]])
    cos, sin = rope(x, pos)
    rotated = quant.apply_rope(x, cos, sin)
    assert not torch.allclose(rotated, x)
    assert torch.allclose(quant.invert_rope(rotated, cos, sin), x, atol=1e-5)


def test_segment_reductions():
    x = torch.tensor([[1.0, -5.0, 3.0, 2.0]])
    seg = torch.tensor([0, 0, 1, 1])
    assert quant.segment_amax(x, seg, 2).tolist() == [[1.0, 3.0]]
    assert quant.segment_amin(x, seg, 2).tolist() == [[-5.0, 2.0]]

"""The Triton kernels against the plain-torch reference, run by Triton's interpreter on CPU.

Codes must be bit-identical (the interpreter computes in numpy with IEEE division, like the
reference) and fp32 values identical. bf16 results may differ by one bf16 ulp: the interpreter
truncates when it converts fp32 to bf16, torch (and the GPU) round to nearest. The GPU
compiles the same kernels; there a multiply-add may also fuse (1 ulp in fp32).
"""

import pytest
import torch

pytest.importorskip("triton")  # interpreted on CPU: tests/conftest.py sets TRITON_INTERPRET=1

from streamkv import CompressedCache, CompressedLlamaForCausalLM, CompressionConfig, preset, quant  # noqa: E402
from streamkv import kernels  # noqa: E402
from streamkv.storage import INDEX_DTYPE, PackedTensor, ScaleLayout, encode  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread_module")

BF16_ULP = 2.0 ** -7  # relative spacing of bf16 values (8 significant bits)


def assert_equal_or_one_bf16_ulp(actual: torch.Tensor, expected: torch.Tensor) -> None:
    if actual.dtype == torch.bfloat16:
        torch.testing.assert_close(actual.float(), expected.float(), rtol=BF16_ULP, atol=1e-30)
    else:
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def layouts(c: int):
    """The layouts the methods use: per channel (given range), per channel in token groups
    (KIVI keys), per token in segments with log scales (our values), one scale per part."""
    seg = (torch.arange(c) // 4).to(INDEX_DTYPE)
    n_seg = int(seg.max()) + 1
    return {
        "per_channel_given": (ScaleLayout(symmetric=False), True),
        "token_groups": (ScaleLayout(token_group=8, symmetric=False), False),
        "per_token_log": (ScaleLayout(token_group=1, segment_of=seg, n_segments=n_seg, log_scale=True), False),
        "per_token_asym": (ScaleLayout(token_group=1, segment_of=seg, n_segments=n_seg, symmetric=False), False),
        "whole_part": (ScaleLayout(), False),
    }


def sample(b=2, t=24, c=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, c, generator=g) * torch.linspace(0.2, 3.0, c)
    # Exact ties on a power-of-two grid, so round-half-to-even is exercised.
    x[:, 0] = (torch.arange(c) % 8 + 0.5) * 0.125 - 1.0
    return x


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("name", list(layouts(37)))
def test_quantize_pack_and_dequantize_match_reference(bits, name):
    x = sample()
    layout, given = layouts(x.shape[-1])[name]
    rng = (torch.full((x.shape[-1],), -1.0), torch.full((x.shape[-1],), -1.0 + 0.125 * quant.max_code(bits)))
    kwargs = dict(given_range=rng if given else None)
    ref = encode(x, bits, layout, **kwargs)
    fused = encode(x, bits, layout, fused=True, **kwargs)
    assert torch.equal(fused.data, ref.data)
    for dtype in (torch.float32, torch.bfloat16):
        out = torch.full((2, 30, x.shape[-1]), float("nan"), dtype=dtype)
        ref.decode_into(out, 3, fused=True)
        assert_equal_or_one_bf16_ulp(out[:, 3:27], ref.decode(dtype))
        assert out[:, :3].isnan().all() and out[:, 27:].isnan().all()


def test_channel_subsets_land_at_their_channels():
    """A block split into normal and outlier parts decodes into one buffer, every channel once."""
    x = sample(c=40)
    outliers = torch.zeros(40, dtype=torch.bool)
    outliers[[3, 17, 18, 39]] = True
    parts = []
    for mask, bits in ((~outliers, 3), (outliers, 8)):
        idx = mask.nonzero().squeeze(-1).to(INDEX_DTYPE)
        layout = ScaleLayout(token_group=1, segment_of=torch.zeros_like(idx), n_segments=1, log_scale=True)
        parts.append(encode(x.index_select(-1, idx.long()), bits, layout, channels=idx, fused=True))
    packed = PackedTensor(parts, 40)
    out = torch.full((2, 24, 40), float("nan"))
    packed.decode_into(out, 0, fused=True)
    assert not out.isnan().any()
    torch.testing.assert_close(out, packed.decode(torch.float32), rtol=0, atol=0)


def test_rope_in_place_matches_reference():
    b, t, h, d = 2, 19, 3, 16
    x = torch.randn(b, t, h * d, dtype=torch.bfloat16)
    angles = torch.rand(b, t, d // 2) * 6
    cos = torch.cat([angles.cos()] * 2, -1)
    sin = torch.cat([angles.sin()] * 2, -1)
    ref = quant.apply_rope(x.view(b, t, h, d).transpose(1, 2).float(), cos, sin)
    buf = torch.cat([x, torch.zeros(b, 5, h * d, dtype=x.dtype)], 1)
    kernels.rope_(buf[:, :t], cos, sin, d)
    assert_equal_or_one_bf16_ulp(buf[:, :t].view(b, t, h, d).transpose(1, 2), ref.to(torch.bfloat16))
    assert (buf[:, t:] == 0).all()


@pytest.mark.parametrize("name, overrides", [
    ("streamkv-4", dict(attention_sink_size=4)), ("streamkv-3", dict(attention_sink_size=4)),
    ("kivi-2", dict(residual_length=16, group_size=8)), ("int4_token", {}), ("int8", {})])
@torch.no_grad()
def test_model_logits_same_with_kernels(tiny_reference, name, overrides):
    """The whole chunked prefill (sinks, outlier parts, pre-RoPE keys) through the kernels."""
    config = preset(name, chunk_size=16, **overrides)
    model = CompressedLlamaForCausalLM(tiny_reference.config, config).eval()
    model.load_state_dict(tiny_reference.state_dict())
    ids = torch.randint(0, 256, (2, 70), generator=torch.Generator().manual_seed(1))
    logits = {}
    for fused in (False, True):
        cache = CompressedCache(config, model.config, model.model.rotary_emb, fused=fused)
        logits[fused] = model(ids, past_key_values=cache).logits
        assert all(layer.fused is fused for layer in cache.layers)
    torch.testing.assert_close(logits[True], logits[False], rtol=1e-5, atol=1e-5)


def test_default_is_torch_on_cpu(tiny_reference):
    cache = CompressedCache(CompressionConfig(chunk_size=16), tiny_reference.config,
                            tiny_reference.model.rotary_emb)
    model = CompressedLlamaForCausalLM(tiny_reference.config, CompressionConfig(chunk_size=16)).eval()
    with torch.no_grad():
        model(torch.randint(0, 256, (1, 20)), past_key_values=cache)
    assert all(layer.fused is False for layer in cache.layers)

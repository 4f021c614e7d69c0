"""QuaRot-style peer: Hadamard rotation, clipped asymmetric per-token RTN in groups, measured
bytes against the formula, and logits."""

from __future__ import annotations

import pytest
import torch

from streamkv import CompressedLlamaForCausalLM, rotation
from streamkv.methods import preset
from streamkv.methods.quarot import QuaRot, clip_to_ratio
from streamkv.quant import packed_size
from streamkv.settings import InvalidSettings
from streamkv.storage import INDEX_DTYPE, ScaleLayout, encode
from tests.conftest import tiny_llama_config


def test_clip_to_ratio_scales_each_groups_range():
    y = torch.tensor([[[-4.0, 1.0, 2.0, 8.0, -1.0, 0.5, -0.5, 1.0]]])
    seg = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    out = clip_to_ratio(y, seg, 2, 0.5)
    assert out.tolist() == [[[-2.0, 1.0, 2.0, 4.0, -0.5, 0.5, -0.5, 0.5]]]
    assert torch.equal(clip_to_ratio(y, seg, 2, 1.0), y)


def _rtn_roundtrip(x: torch.Tensor, bits: int, rot: torch.Tensor) -> torch.Tensor:
    c = x.shape[-1]
    layout = ScaleLayout(token_group=1, segment_of=torch.zeros(c, dtype=INDEX_DTYPE), n_segments=1, symmetric=False)
    return rotation.unrotate(encode(rotation.rotate(x, rot), bits, layout).decode(torch.float32), rot)


@pytest.mark.parametrize("bits", [3, 4])
def test_hadamard_lowers_the_rtn_error_on_outlier_channels(bits):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 256, 64, generator=g)
    x[..., [5, 40]] *= 20.0
    plain = (_rtn_roundtrip(x, bits, torch.eye(64).unsqueeze(0)) - x).pow(2).mean()
    rotated = (_rtn_roundtrip(x, bits, rotation.head_rotations(1, 64, None)) - x).pow(2).mean()
    assert rotated < 0.5 * plain, (rotated, plain)


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(0, 256, (2, 150), generator=torch.Generator().manual_seed(1))


def _run(tiny_reference, prompt, method):
    model = CompressedLlamaForCausalLM(tiny_reference.config).eval()
    model.load_state_dict(tiny_reference.state_dict())
    with torch.no_grad():
        out = model(prompt, compression_config=method)
    return model, out


@pytest.mark.parametrize("name,group", [("quarot-4", None), ("quarot-3", None), ("quarot-4", 8)])
def test_measured_bytes_equal_the_formula(name, group, tiny_reference, prompt):
    """Codes + fp16 (lo, step) per token and group, plus the int16 group ids once per layer."""
    method = preset(name, chunk_size=32, group_size=group)
    model, out = _run(tiny_reference, prompt, method)
    c, n_groups = 32, 32 // (group or 16)
    expected = 2 * 150 * (packed_size(c, method.key_bits) + 2 * 2 * n_groups) + 2 * c
    for layer in out.past_key_values.layers:
        assert layer.nbytes("keys") == expected and layer.nbytes("values") == expected
    assert model.get_compression_stats(out.past_key_values, method).avg_key_bits == pytest.approx(
        8 * 2 * expected / (2 * 150 * 32 * 2))


@torch.no_grad()
def test_logits_close_to_the_uncompressed_model_and_better_with_bits(tiny_reference, prompt):
    reference = tiny_reference(prompt).logits
    err = {}
    for name in ("quarot-3", "quarot-4"):
        for strict in (False, True):
            _, out = _run(tiny_reference, prompt, preset(name, chunk_size=32, quantize_current_chunk=strict))
            err[name, strict] = (out.logits - reference).abs().max().item()
    assert err["quarot-4", False] < 0.05 and err["quarot-4", True] < 0.15
    for strict in (False, True):
        assert err["quarot-4", strict] < err["quarot-3", strict]


@torch.no_grad()
def test_rotation_is_the_plain_hadamard_unless_seeded(tiny_reference, prompt):
    _, out = _run(tiny_reference, prompt, preset("quarot-4", chunk_size=32))
    layer = out.past_key_values.layers[0]
    torch.testing.assert_close(layer._rotations(0, torch.device("cpu")),
                               rotation.head_rotations(2, 16, None))
    seeded = _run(tiny_reference, prompt, preset("quarot-4", chunk_size=32, seed=3))[1]
    rot = seeded.past_key_values.layers[0]._rotations(0, torch.device("cpu"))
    assert not torch.equal(rot, layer._rotations(0, torch.device("cpu")))
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(16).expand(2, 16, 16), atol=1e-6, rtol=0)


def test_settings_are_checked():
    q = preset("quarot-3")
    assert (q.key_bits, q.value_bits, q.group_size, q.key_clip_ratio, q.value_clip_ratio) == (3, 3, None, 0.95, 0.95)
    with pytest.raises(InvalidSettings, match=r"key_clip_ratio: 1.5 is out of range \(allowed: 0 < x <= 1\)"):
        QuaRot(key_clip_ratio=1.5)
    with pytest.raises(InvalidSettings, match="value_bits"):
        QuaRot(value_bits=5)
    assert QuaRot(group_size=5).model_problems(tiny_llama_config())[0].field == "group_size"
    problems = QuaRot().model_problems(tiny_llama_config(hidden_size=96, num_attention_heads=4))  # head_dim 24
    assert "power of two" in problems[0].message
    assert QuaRot(group_size=8).model_problems(tiny_llama_config()) == []

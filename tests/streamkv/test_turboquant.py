"""TurboQuant-style peer: the Lloyd-Max codebooks, the rotated codebook quantizer, its layout
(fractional bits by channel split), measured bytes against the formula, and logits."""

from __future__ import annotations

import math

import pytest
import torch

from streamkv import CompressedLlamaForCausalLM, rotation
from streamkv.codebooks import gaussian_levels, lloyd_max, nearest_level, sphere_levels
from streamkv.methods import preset
from streamkv.methods.turboquant import TurboQuant, outlier_channels
from streamkv.quant import packed_size
from streamkv.settings import InvalidSettings
from streamkv.storage import encode_codebook
from tests.conftest import tiny_llama_config


# --- codebooks ----------------------------------------------------------------------------------
def test_lloyd_max_gaussian_levels_match_the_classic_table():
    """Max (1960): N(0,1) at 1 bit +-0.7979 (= sqrt(2/pi)), at 2 bits +-0.4528, +-1.5104."""
    torch.testing.assert_close(gaussian_levels(1), torch.tensor([-0.7979, 0.7979], dtype=torch.float64),
                               atol=1e-4, rtol=0)
    assert gaussian_levels(1)[1].item() == pytest.approx(math.sqrt(2 / math.pi), abs=1e-5)
    torch.testing.assert_close(gaussian_levels(2), torch.tensor([-1.5104, -0.4528, 0.4528, 1.5104],
                                                                dtype=torch.float64), atol=1e-4, rtol=0)


def test_lloyd_max_of_a_uniform_law_is_the_uniform_grid():
    levels = lloyd_max(lambda t: torch.ones_like(t), -1.0, 1.0, 4)
    torch.testing.assert_close(levels, torch.tensor([-0.75, -0.25, 0.25, 0.75], dtype=torch.float64),
                               atol=1e-5, rtol=0)


def test_sphere_levels_follow_the_coordinate_law():
    # d = 3: one coordinate of a uniform point on S^2 is uniform on [-1, 1] (Archimedes).
    torch.testing.assert_close(sphere_levels(3, 2), torch.tensor([-0.75, -0.25, 0.25, 0.75]), atol=1e-4, rtol=0)
    # Large d: ≈ N(0, 1/d), so the levels approach the Gaussian ones / sqrt(d).
    scaled = sphere_levels(4096, 2) * 64
    torch.testing.assert_close(scaled, gaussian_levels(2).float(), atol=2e-3, rtol=0)
    # The paper's 1-bit value for moderate d: +-sqrt(2/(pi d)) to leading order.
    assert sphere_levels(64, 1)[1].item() == pytest.approx(math.sqrt(2 / (math.pi * 64)), rel=0.02)
    for bits in (1, 2, 3, 4):
        lv = sphere_levels(64, bits)
        assert lv.shape == (1 << bits,) and torch.all(lv[1:] > lv[:-1])
        torch.testing.assert_close(lv, -lv.flip(0))  # symmetric law, symmetric levels


def test_sphere_levels_mse_matches_the_papers_distortion():
    """TurboQuant's Theorem 1: MSE of a rotated unit vector ≈ 0.36, 0.117, 0.03, 0.009 at b = 1..4,
    the paper's rounding of the Gaussian Lloyd-Max distortions (Max 1960: 0.3634, 0.1175,
    0.03454, 0.009497), which large-d sphere codebooks approach."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 128, generator=g)
    u = x / x.norm(dim=-1, keepdim=True)
    rot = rotation.randomized_hadamard(128, seed=1)
    y = u @ rot.T
    for bits, paper in [(1, 0.3634), (2, 0.1175), (3, 0.03454), (4, 0.009497)]:
        lv = sphere_levels(128, bits)
        mse = ((lv[nearest_level(y, lv).long()] - y) ** 2).sum(-1).mean().item()
        assert mse == pytest.approx(paper, rel=0.05), (bits, mse)


# --- the rotated codebook quantizer -------------------------------------------------------------
def _outlier_vectors(d: int = 64, n: int = 512) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, n, d, generator=g)
    x[..., [3, 17]] *= 25.0  # KV-style outlier channels
    return x


def _roundtrip(x: torch.Tensor, bits: int, rot: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1]
    y = rotation.rotate(x, rot)
    part = encode_codebook(y, bits, sphere_levels(d, bits), torch.zeros(d, dtype=torch.int16), 1)
    return rotation.unrotate(part.decode(torch.float32), rot)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_rotation_lowers_the_roundtrip_error_on_outlier_channels(bits):
    x = _outlier_vectors()
    rotated = (_roundtrip(x, bits, rotation.head_rotations(1, 64, seed=0)) - x).pow(2).mean()
    unrotated = (_roundtrip(x, bits, torch.eye(64).unsqueeze(0)) - x).pow(2).mean()
    assert rotated < 0.5 * unrotated, (rotated, unrotated)
    # And the relative error is what the codebook promises for a rotated unit vector.
    rel = rotated * 64 / x.pow(2).sum(-1).mean()
    assert rel < {2: 0.14, 3: 0.04, 4: 0.012}[bits]


def test_outlier_channels_are_the_largest_rms_per_head():
    x = torch.randn(2, 30, 2 * 8, generator=torch.Generator().manual_seed(0))
    x[..., 2] *= 10
    x[..., 8 + 7] *= 10
    x[..., 8 + 0] *= 5
    idx = outlier_channels(x, n_heads=2, n_outliers=2)
    assert idx[0, 0] == 2 or idx[0, 1] == 2
    assert idx[1].tolist() == [0, 7]


# --- the method in the model --------------------------------------------------------------------
@pytest.fixture(scope="module")
def prompt():
    return torch.randint(0, 256, (2, 150), generator=torch.Generator().manual_seed(1))


def _run(tiny_reference, prompt, method):
    model = CompressedLlamaForCausalLM(tiny_reference.config).eval()
    model.load_state_dict(tiny_reference.state_dict())
    with torch.no_grad():
        out = model(prompt, compression_config=method)
    return model, out


def _expected_bytes_per_kind(bits: float, batch: int, tokens: int, n_heads: int, head_dim: int) -> int:
    """Codes + fp16 norms per token and subset, plus per layer: the levels (fp32) and the
    channel metadata (int16) of each subset."""
    c = n_heads * head_dim
    if bits == int(bits):
        b = int(bits)
        return batch * tokens * (packed_size(c, b) + 2 * n_heads) + 4 * (1 << b) + 2 * c
    low = math.floor(bits)
    per_token = packed_size(c // 2, low + 1) + packed_size(c // 2, low) + 2 * 2 * n_heads
    shared = 4 * ((1 << (low + 1)) + (1 << low)) + 2 * 2 * c  # segment ids + channel ids of both subsets
    return batch * tokens * per_token + shared


@pytest.mark.parametrize("name", ["turboquant-2", "turboquant-2.5", "turboquant-3.5", "turboquant-4"])
def test_measured_bytes_equal_the_formula(name, tiny_reference, prompt):
    method = preset(name, chunk_size=32)
    model, out = _run(tiny_reference, prompt, method)
    cache = out.past_key_values
    expected = _expected_bytes_per_kind(method.key_bits, 2, 150, 2, 16)
    for layer in cache.layers:
        assert layer.nbytes("keys") == expected
        assert layer.nbytes("values") == expected
    stats = model.get_compression_stats(cache, method)
    assert stats.avg_key_bits == pytest.approx(8 * 2 * expected / (2 * 150 * 32 * 2))


def test_fractional_bits_split_each_head_in_two_instances(tiny_reference, prompt):
    model, out = _run(tiny_reference, prompt, preset("turboquant-2.5", chunk_size=32))
    layer = out.past_key_values.layers[0]
    parts = layer.blocks[0].keys.parts
    assert [p.bits for p in parts] == [3, 2]
    assert [p.n_channels for p in parts] == [16, 16]  # half of each of the 2 heads' 16 channels
    assert sorted(torch.cat([p.channels for p in parts]).tolist()) == list(range(32))
    # Every block of the layer uses the same channels (chosen once, on the first chunk).
    assert all(torch.equal(b.keys.parts[0].channels, parts[0].channels) for b in layer.blocks)
    # The rotation is block-diagonal over the two subsets of each head, and orthogonal.
    rot = layer._shared["keys"].rotations
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(16).expand(2, 16, 16), atol=1e-6, rtol=0)
    hi = parts[0].channels[:8].long()
    lo = parts[1].channels[:8].long()
    assert rot[0][hi][:, lo].abs().max() == 0


@torch.no_grad()
def test_logits_close_to_the_uncompressed_model_and_better_with_bits(tiny_reference, prompt):
    reference = tiny_reference(prompt).logits
    errors = {}
    for name in ("turboquant-2", "turboquant-3", "turboquant-4"):
        for strict in (False, True):
            _, out = _run(tiny_reference, prompt, preset(name, chunk_size=32, quantize_current_chunk=strict))
            errors[name, strict] = (out.logits - reference).abs().max().item()
    assert errors["turboquant-4", False] < 0.05 and errors["turboquant-4", True] < 0.15
    for strict in (False, True):
        assert errors["turboquant-4", strict] < errors["turboquant-3", strict] < errors["turboquant-2", strict]


@torch.no_grad()
def test_seed_makes_runs_reproducible(tiny_reference, prompt):
    a = _run(tiny_reference, prompt, preset("turboquant-3", chunk_size=32))[1].logits
    b = _run(tiny_reference, prompt, preset("turboquant-3", chunk_size=32))[1].logits
    c = _run(tiny_reference, prompt, preset("turboquant-3", chunk_size=32, seed=5))[1].logits
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_settings_are_checked():
    assert preset("turboquant-2.5").key_bits == 2.5
    assert TurboQuant(key_bits=3).key_bits == 3.0
    assert TurboQuant(key_bits=3).config_id == TurboQuant(key_bits=3.0).config_id
    with pytest.raises(InvalidSettings, match=r"key_bits: 5 is out of range \(allowed: 2 \| 2.5 \| 3 \| 3.5 \| 4\)"):
        TurboQuant(key_bits=5)
    with pytest.raises(InvalidSettings, match="seed"):
        TurboQuant(seed=-1)
    problems = TurboQuant().model_problems(tiny_llama_config(hidden_size=96, num_attention_heads=4))  # head_dim 24
    assert problems and "power of two" in problems[0].message and "24" in problems[0].message
    assert TurboQuant().model_problems(tiny_llama_config()) == []


# --- QJL on the key residual (TurboQuant_prod) -----------------------------------------------------
def test_qjl_scores_are_unbiased_where_the_mse_quantizer_shrinks_them():
    """Over many random Gaussian projections, <q, decoded> averages to <q, x> with QJL; the
    (b-1)-bit MSE reconstruction alone is biased towards 0 (its scores are shrunk)."""
    g = torch.Generator().manual_seed(0)
    d, n_vec = 64, 64
    x = torch.randn(1, n_vec, d, generator=g)
    q = torch.randn(d, generator=g)
    seg = torch.zeros(d, dtype=torch.int16)
    levels = sphere_levels(d, 1)
    truth = x[0] @ q  # [n_vec]
    mse = encode_codebook(x, 1, levels, seg, 1).decode(torch.float32)[0] @ q
    draws = torch.stack([encode_codebook(x, 1, levels, seg, 1, projection=torch.randn(1, d, d, generator=g))
                         .decode(torch.float32)[0] @ q for _ in range(400)])  # [draws, n_vec]
    slope = lambda est: float((est * truth).sum() / (truth * truth).sum())  # noqa: E731
    assert slope(mse) < 0.75  # 1-bit MSE codes shrink scores by ~(1 - distortion) = 0.64
    assert slope(draws.mean(0)) == pytest.approx(1.0, abs=0.05)  # QJL: unbiased on average
    # and a single draw's estimate is centered on the truth, with QJL's variance
    assert float((draws.mean(0) - truth).abs().mean()) < float((mse - truth).abs().mean())


def test_qjl_keys_store_b_minus_1_bit_codes_signs_and_a_residual_norm(tiny_reference, prompt):
    plain = preset("turboquant-3", chunk_size=32)
    method = preset("turboquant-3-qjl", chunk_size=32)
    assert method.qjl and "qjl" not in plain.to_dict() and method.config_id != plain.config_id
    model, out = _run(tiny_reference, prompt, method)
    layer = out.past_key_values.layers[0]
    key, value = layer.blocks[0].keys.parts[0], layer.blocks[0].values.parts[0]
    assert key.bits == 2 and key.signs is not None and value.bits == 3 and value.signs is None
    c, h = 32, 2
    # keys: 2-bit codes + 1 sign bit per coordinate + two fp16 norms per head; values unchanged
    per_token = packed_size(c, 2) + packed_size(c, 1) + 2 * 2 * h
    assert layer.nbytes("keys") == 2 * 150 * per_token + 4 * 4 + 2 * c
    assert layer.nbytes("values") == _expected_bytes_per_kind(3, 2, 150, 2, 16)
    # decode steps extend the parts with their signs; the logits stay finite and close
    with torch.no_grad():
        step = model(prompt[:, :1], past_key_values=out.past_key_values)
    assert torch.isfinite(step.logits).all() and layer.blocks[-1].keys.parts[0].signs.shape[1] >= 1
    _, ref = _run(tiny_reference, prompt, preset("none"))
    assert (out.logits - ref.logits).abs().mean() < 0.5 * ref.logits.abs().mean()

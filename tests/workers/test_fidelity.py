"""Fidelity math on hand-built logits, and the two measurements on the tiny model."""

import math

import pytest
import torch

from streamkv import CompressedLlamaForCausalLM, preset
from workers.fidelity import (
    Fidelity,
    continuation_fidelity,
    is_reference,
    kl_divergence,
    prefill_fidelity,
    reference_config,
    top1_agreement,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread_module):
    """Module-wide: see tests/conftest.py."""


def test_identical_logits_give_zero_kl_and_full_agreement():
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(0)) * 4
    assert torch.equal(kl_divergence(logits, logits.clone()), torch.zeros(5, dtype=torch.float64))
    assert torch.equal(top1_agreement(logits, logits.clone()), torch.ones(5))
    fid = Fidelity.of(logits, logits.clone())
    assert fid.mean_kl == 0.0 and fid.top1 == 1.0 and fid.tokens == 5


def test_two_class_kl_by_hand():
    # P = softmax([0, 0]) = (1/2, 1/2); Q = softmax([ln 3, 0]) = (3/4, 1/4).
    p = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    q = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # = 0.5 ln(4/3) ~ 0.1438
    assert kl_divergence(p, q).item() == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.5 * math.log(4 / 3))
    # KL is not symmetric: KL(Q || P) = 3/4 ln(3/2) + 1/4 ln(1/2)
    assert kl_divergence(q, p).item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-12)
    # argmax of P is class 0 (tie broken to the first), of Q class 0: they agree.
    assert top1_agreement(p, q).tolist() == [1.0]
    assert top1_agreement(torch.tensor([[0.0, 1.0]], dtype=torch.float64), q).tolist() == [0.0]


def test_kl_handles_batches_larger_than_a_block_and_shapes():
    g = torch.Generator().manual_seed(1)
    p, q = torch.randn(2, 150, 11, generator=g), torch.randn(2, 150, 11, generator=g)
    kl = kl_divergence(p, q)
    assert kl.shape == (2, 150) and bool((kl >= 0).all())
    direct = (torch.softmax(p.double(), -1) * (torch.log_softmax(p.double(), -1)
                                               - torch.log_softmax(q.double(), -1))).sum(-1)
    assert torch.allclose(kl, direct)
    with pytest.raises(ValueError, match="shapes differ"):
        kl_divergence(p, q[..., :5])


def test_fidelity_accumulates_token_weighted():
    a = Fidelity(kl_sum=1.0, agree=3.0, tokens=4)
    a += Fidelity(kl_sum=2.0, agree=0.0, tokens=2)
    assert a.mean_kl == pytest.approx(0.5) and a.top1 == pytest.approx(0.5)
    assert Fidelity().mean_kl is None


@pytest.fixture(scope="module")
def model(tiny_reference):
    m = CompressedLlamaForCausalLM(tiny_reference.config, preset("none")).eval()
    m.load_state_dict(tiny_reference.state_dict())
    return m


def test_none_is_its_own_reference_and_streamkv_is_not():
    assert is_reference(preset("none", chunk_size=64))
    assert reference_config(64) == preset("none", chunk_size=64)
    assert not is_reference(preset("none", chunk_size=64, quantize_current_chunk=True))
    assert not is_reference(preset("streamkv-4", chunk_size=64))


@torch.no_grad()
def test_prefill_fidelity_on_the_tiny_model(model):
    window = torch.randint(0, 256, (96,), generator=torch.Generator().manual_seed(2))
    logits = model(window.view(1, -1), compression_config=preset("streamkv-2", chunk_size=32)).logits[0]
    fid = prefill_fidelity(model, window, logits, 32)
    assert fid.tokens == 96 and 0 < fid.mean_kl < 0.5 and 0.5 < fid.top1 <= 1.0
    assert model.compression_config == preset("none")  # the reference run is an argument, not a change
    same = model(window.view(1, -1), compression_config=preset("none", chunk_size=32)).logits[0]
    # the lossless config rerun for real: identical computation, exactly 0
    real = prefill_fidelity(model, window, same, 32)
    assert real.mean_kl == 0.0 and real.top1 == 1.0
    assert prefill_fidelity(model, window, same, 32, same_as_reference=True).mean_kl == 0.0


@torch.no_grad()
def test_continuation_fidelity_teacher_forces_the_reference(model):
    prompt = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(3)).tolist()

    def greedy(config):
        # explicit mask: generate would otherwise mask the prompt's 0 tokens as padding
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 40, dtype=torch.long),
                             max_new_tokens=6, do_sample=False, output_logits=True, compression_config=config,
                             return_dict_in_generate=True, pad_token_id=0)
        return out.sequences[0, 40:].tolist(), torch.cat(out.logits)

    # chunk_size=1: teacher forcing repeats the decode steps (float rounding aside)
    new, steps = greedy(preset("none", chunk_size=1))
    fid = continuation_fidelity(model, prompt, new, steps, 1)
    assert fid.tokens == 6 and fid.mean_kl < 1e-9 and fid.top1 == 1.0
    # a compressed continuation: positions line up (teacher-forced logits predict the same tokens)
    new, steps = greedy(preset("streamkv-2", chunk_size=16))
    fid = continuation_fidelity(model, prompt, new, steps, 16)
    assert fid.tokens == 6 and 0 < fid.mean_kl < 0.1
    with pytest.raises(ValueError, match="logit rows"):
        continuation_fidelity(model, prompt, new, steps[:3], 16)
    assert continuation_fidelity(model, prompt, [], steps[:0], 16).tokens == 0

"""Chunked-prefill attention: the lower-right causal path equals SDPA with the explicit mask."""

import pytest
import torch
from transformers.masking_utils import causal_mask_function

from streamkv import CompressedLlamaForCausalLM, CompressionConfig
from streamkv.attention import NAME, chunk_mask, chunked_sdpa_forward


class _Module(torch.nn.Module):
    is_causal = True

    def __init__(self, groups):
        super().__init__()
        self.num_key_value_groups = groups


def explicit(query, key, value, groups):
    q_len, kv_len = query.shape[2], key.shape[2]
    allowed = torch.ones(q_len, kv_len, dtype=torch.bool).tril(diagonal=kv_len - q_len)
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    return torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=allowed).transpose(1, 2)


@pytest.mark.parametrize("q_len, kv_len", [(16, 48), (7, 7), (1, 30), (5, 6)])
@pytest.mark.parametrize("groups", [1, 3])
def test_lower_right_causal_equals_explicit_mask(q_len, kv_len, groups):
    g = torch.Generator().manual_seed(q_len * kv_len)
    query = torch.randn(2, 2 * groups, q_len, 16, generator=g)
    key, value = torch.randn(2, 2, kv_len, 16, generator=g), torch.randn(2, 2, kv_len, 16, generator=g)
    out, _ = chunked_sdpa_forward(_Module(groups), query, key, value, None)
    torch.testing.assert_close(out, explicit(query, key, value, groups), rtol=1e-5, atol=1e-6)


def test_mask_is_skipped_only_when_purely_causal():
    common = dict(batch_size=2, q_length=4, kv_length=12, q_offset=8, kv_offset=0)
    assert chunk_mask(**common, attention_mask=None) is None
    assert chunk_mask(**common, attention_mask=torch.ones(2, 12, dtype=torch.bool)) is None
    padded = torch.ones(2, 12, dtype=torch.bool)
    padded[0, :3] = False
    mask = chunk_mask(**common, attention_mask=padded, mask_function=causal_mask_function)
    assert mask.shape == (2, 1, 4, 12) and not mask[0, :, :, :3].any() and mask[1, 0, 0, :9].all()


def test_model_selects_it_without_touching_the_callers_config(tiny_config):
    model = CompressedLlamaForCausalLM(tiny_config, CompressionConfig())
    assert model.config._attn_implementation == NAME
    assert tiny_config._attn_implementation == "sdpa"
    eager = CompressedLlamaForCausalLM(tiny_config.__class__(**{**tiny_config.to_dict(), "attn_implementation": "eager"}))
    assert eager.config._attn_implementation == "eager"

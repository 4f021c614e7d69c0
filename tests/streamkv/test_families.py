"""Model families on tiny random configs: Llama (Llama-3 RoPE scaling), Mistral, Qwen2
(attention biases), Qwen3 (q/k norms before RoPE, explicit head_dim). In every family the
16-bit mode equals the stock transformers model within float rounding, 8 bits are close
(pre-RoPE key storage rotates with the family's own rotary embedding), and generate works with
a left-padded batch. Models streamkv cannot compress correctly are refused with the reason."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    GPT2Config,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    T5Config,
)

from streamkv import AutoCompressedModelForCausalLM, CompressionConfig, preset
from streamkv.modeling import COMPRESSED_CLASSES

SMALL = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
             attn_implementation="sdpa")
# Llama-3's RoPE scaling changes frequencies beyond the original 64 positions: the 150-token
# prompt reaches them.
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
FAMILIES = {
    "llama3": (LlamaConfig, LlamaForCausalLM, dict(rope_parameters=LLAMA3_ROPE)),
    "mistral": (MistralConfig, MistralForCausalLM, dict(sliding_window=None)),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),  # q/k/v biases by default
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(head_dim=24)),  # q/k RMS norms; head_dim != hidden/heads
}
EIGHT_BITS = CompressionConfig(chunk_size=32, key_bits_normal=8, value_bits_normal=8)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread_module):
    """Module-wide: see tests/conftest.py."""


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    config_cls, stock_cls, extra = FAMILIES[request.param]
    config = config_cls(**SMALL, **extra)
    torch.manual_seed(0)
    stock = stock_cls(config).eval()
    model = AutoCompressedModelForCausalLM.from_config(config).eval()
    model.load_state_dict(stock.state_dict())
    return request.param, stock, model


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(0, 256, (2, 150), generator=torch.Generator().manual_seed(1))


def test_the_family_class_is_picked(family):
    _, stock, model = family
    assert type(model) is COMPRESSED_CLASSES[stock.config.model_type]
    assert isinstance(model, type(stock))


@torch.no_grad()
def test_sixteen_bit_equals_the_stock_model(family, prompt):
    """fp16 storage of an fp32 model's K/V: ~5e-4 relative, so 1e-3 on these logits."""
    _, stock, model = family
    reference = stock(prompt).logits
    for chunk in (16, 150):
        logits = model(prompt, compression_config=preset("none", chunk_size=chunk)).logits
        assert (logits - reference).abs().max().item() < 1e-3


@torch.no_grad()
def test_eight_bits_is_close_and_keys_rotate_with_the_family_rope(family, prompt):
    _, stock, model = family
    reference = stock(prompt).logits
    err8 = (model(prompt, compression_config=EIGHT_BITS).logits - reference).abs().max().item()
    # Rotating keys back with the wrong positions or frequencies costs far more than 8-bit rounding.
    wrong = (model(prompt, compression_config=EIGHT_BITS.replace(pre_rope_keys=False)).logits
             - reference).abs().max().item()
    assert err8 < 0.03 and wrong < 0.03
    err4 = (model(prompt, compression_config=preset("streamkv-4", chunk_size=32)).logits
            - reference).abs().max().item()
    assert err8 < err4 / 3


@torch.no_grad()
def test_generate_with_a_left_padded_batch(family):
    """Each row of a left-padded batch gives the same greedy tokens as that row alone (16-bit:
    quantized rows share their batch's running statistics, so their codes may differ), and a
    quantized padded batch decodes too."""
    _, _, model = family
    method = preset("none", chunk_size=8)
    g = torch.Generator().manual_seed(3)
    long, short = torch.randint(1, 256, (1, 30), generator=g), torch.randint(1, 256, (1, 21), generator=g)
    batch = torch.cat([long, torch.cat([torch.zeros(1, 9, dtype=torch.long), short], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :9] = 0
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, compression_config=method)
    out = model.generate(batch, attention_mask=mask, **kwargs)
    assert torch.equal(out[0, 30:], model.generate(long, **kwargs)[0, 30:])
    assert torch.equal(out[1, 30:], model.generate(short, **kwargs)[0, 21:])
    quantized = model.generate(batch, attention_mask=mask, **{**kwargs, "compression_config": EIGHT_BITS})
    assert quantized.shape == (2, 36) and torch.equal(quantized[:, :30], batch)


def test_from_pretrained_takes_what_transformers_takes(tmp_path):
    config = Qwen3Config(**SMALL, head_dim=24)
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(tmp_path)
    method = preset("kivi-4")
    model = AutoCompressedModelForCausalLM.from_pretrained(tmp_path, compression_config=method,
                                                           dtype=torch.float32)
    assert type(model).__name__ == "CompressedQwen3ForCausalLM" and model.compression_config == method


@pytest.mark.parametrize("config, reason", [
    (MistralConfig(**SMALL, sliding_window=16), "sliding_window=16"),
    (Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=16, max_window_layers=1),
     "sliding_attention layers"),
    (GPT2Config(n_embd=64, n_layer=2, n_head=4), "non-RoPE"),
    (T5Config(d_model=64, num_layers=2, num_heads=4), "encoder-decoder"),
])
def test_models_it_cannot_compress_are_refused_with_the_reason(config, reason):
    with pytest.raises(ValueError, match=reason):
        AutoCompressedModelForCausalLM.from_config(config)

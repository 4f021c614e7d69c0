"""Integration on the real model: SmolLM2-135M (30 layers, 9 query / 3 KV heads)."""

import pytest
import torch

from streamkv import CompressionConfig
from tests.conftest import requires_smollm2

pytestmark = [pytest.mark.slow, requires_smollm2]


@torch.no_grad()
def test_generate_with_default_config_produces_text_and_sane_stats(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    method = CompressionConfig(chunk_size=64)
    text = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
            "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
            "from 1887 to 1889. ") * 3 + "In which city is the Eiffel Tower?"
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    n = ids["input_ids"].shape[1]
    assert n > 128  # more than two prefill chunks
    cache = model.new_cache(method)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False, past_key_values=cache, compression_config=method)
    new = tok.decode(out[0, n:], skip_special_tokens=True)
    assert "Eiffel Tower" in new  # the 135M model answers by quoting the passage
    st = model.get_compression_stats()
    assert st.tokens == n + 11 and st.sink_tokens == 4
    assert 4.0 < st.avg_key_bits < 6.0 and 4.0 < st.avg_value_bits < 6.0
    assert 2.5 < st.compression_ratio < 4.0
    assert 0.0 <= st.outlier_ratio < 0.2
    assert st.kv_bytes == cache.nbytes()
    layers = {row["layer"] for row in st.per_layer}
    assert layers == set(range(30))
    assert model.config.num_key_value_heads == 3 and model.config.num_attention_heads == 9

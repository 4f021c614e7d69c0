"""Per-layer bit allocation (`layer_key_bits` / `layer_value_bits`): each layer stores at its own
bits, the measured bytes follow, and bad allocations are refused with the field named."""

import pytest
import torch

from streamkv import CompressedLlamaForCausalLM, CompressionConfig, InvalidSettings
from streamkv.compression_stats import compression_stats
from streamkv.methods import method_from_dict

NO_PROTECTION = dict(sink_protection=False, outlier_detection=False, chunk_size=64)


def run_cache(tiny_reference, config, n=128):
    model = CompressedLlamaForCausalLM(tiny_reference.config, config).eval()
    model.load_state_dict(tiny_reference.state_dict())
    ids = torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(ids, use_cache=True).past_key_values


def test_a_layer_at_2_bits_and_one_at_8_store_what_they_say(tiny_reference):
    mixed = run_cache(tiny_reference, CompressionConfig(layer_key_bits=(2, 8), layer_value_bits=(2, 8),
                                                        **NO_PROTECTION))
    at2 = run_cache(tiny_reference, CompressionConfig(key_bits_normal=2, value_bits_normal=2, **NO_PROTECTION))
    at8 = run_cache(tiny_reference, CompressionConfig(key_bits_normal=8, value_bits_normal=8, **NO_PROTECTION))
    for kind in ("keys", "values"):
        # layer 0 is byte for byte the 2-bit cache's layer 0, layer 1 the 8-bit cache's layer 1
        assert mixed.layers[0].nbytes(kind) == at2.layers[0].nbytes(kind)
        assert mixed.layers[1].nbytes(kind) == at8.layers[1].nbytes(kind)
        assert mixed.layers[1].nbytes(kind) > 3 * mixed.layers[0].nbytes(kind)
    bits = compression_stats(mixed).avg_key_bits
    lo, hi = compression_stats(at2).avg_key_bits, compression_stats(at8).avg_key_bits
    assert bits == pytest.approx((lo + hi) / 2, rel=1e-6)


def test_per_layer_bits_round_trip_and_change_the_config_id():
    config = CompressionConfig(layer_key_bits=[2, 8], layer_value_bits=None)
    assert config.layer_key_bits == (2, 8)
    data = config.to_dict()
    assert data["layer_key_bits"] == (2, 8) and "layer_value_bits" not in data
    assert method_from_dict({**data, "layer_key_bits": [2, 8]}) == config
    assert config.config_id != CompressionConfig().config_id
    # unset per-layer fields are not written: the ids of configs that do not use them stay put
    assert "layer_key_bits" not in CompressionConfig().to_dict()


@pytest.mark.parametrize("value, words", [
    ((2, 5), "layer_key_bits: (2, 5) is out of range"),
    ((), "layer_key_bits: () is out of range"),
    ((2, 16), "layer_key_bits: layer(s) [1] exceed key_bits_sink_outlier=8"),
])
def test_bad_per_layer_bits_are_refused_with_the_field_named(value, words):
    with pytest.raises(InvalidSettings, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        CompressionConfig(layer_key_bits=value)


def test_a_length_other_than_the_models_layers_is_refused(tiny_config, tiny_reference):
    config = CompressionConfig(layer_value_bits=(4, 4, 4))
    problems = config.model_problems(tiny_config)
    assert [p.field for p in problems] == ["layer_value_bits"]
    assert "num_hidden_layers=2" in str(problems[0])
    with pytest.raises(InvalidSettings, match="layer_value_bits: has 3 entries"):
        run_cache(tiny_reference, config)

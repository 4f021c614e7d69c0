"""Per-head bit allocation (`head_key_bits` / `head_value_bits`): each KV head of a layer stores
at its own bits (one packed part per bit width), decodes exactly as a cache with that head's
bits everywhere, the bytes follow, decode steps extend the parts, and bad allocations are
refused with the field named."""

import pytest
import torch

from streamkv import CompressedCache, CompressedLlamaForCausalLM, CompressionConfig, InvalidSettings
from streamkv.compression_stats import compression_stats
from streamkv.methods import method_from_dict, preset

NO_PROTECTION = dict(sink_protection=False, outlier_detection=False, chunk_size=64)
IDS = torch.randint(0, 256, (1, 150), generator=torch.Generator().manual_seed(5))


def model_of(tiny_reference, config):
    model = CompressedLlamaForCausalLM(tiny_reference.config, config).eval()
    model.load_state_dict(tiny_reference.state_dict())
    return model


def run_cache(tiny_reference, config):
    with torch.no_grad():
        return model_of(tiny_reference, config)(IDS, use_cache=True).past_key_values


def history(layer, kind: str, head: int, head_dim: int) -> torch.Tensor:
    """The layer's stored keys or values of one KV head, decoded: [B, T, head_dim]."""
    parts = [getattr(b, kind).decode(torch.float32) for b in layer.blocks]
    return torch.cat(parts, dim=1)[..., head * head_dim:(head + 1) * head_dim]


@pytest.mark.parametrize("groups", [0, 1, 4])
def test_each_head_decodes_as_a_cache_at_its_bits(tiny_reference, groups):
    # layer 0 sees the same keys/values whatever the config: its heads can be compared one by one
    bits = {"head_key_bits": ((2, 8), (8, 2)), "head_value_bits": ((8, 2), (2, 8))}
    settings = dict(NO_PROTECTION, value_quant_groups=groups)
    mixed = run_cache(tiny_reference, CompressionConfig(**bits, **settings))
    at = {b: run_cache(tiny_reference, CompressionConfig(key_bits_normal=b, value_bits_normal=b, **settings))
          for b in (2, 8)}
    exact = run_cache(tiny_reference, preset("none", chunk_size=64))
    head_dim = tiny_reference.config.head_dim
    layer = mixed.layers[0]
    for kind, per_head in (("keys", bits["head_key_bits"][0]), ("values", bits["head_value_bits"][0])):
        for head, b in enumerate(per_head):
            got, want = (history(c.layers[0], kind, head, head_dim) for c in (mixed, at[b]))
            if kind == "keys" or groups == 0:  # per-channel grids: the same codes and scales
                assert torch.equal(got, want)
            else:  # per-token log-grid scales are coded below each part's own largest scale
                truth = history(exact.layers[0], kind, head, head_dim)
                err, err_uniform = (float((x - truth).abs().mean()) for x in (got, want))
                assert err == pytest.approx(err_uniform, rel=0.1)
        # one part per bit width, each holding only its head's channels
        assert sorted(p.bits for p in layer.blocks[0].__getattribute__(kind).parts) == [2, 8]
        assert at[2].layers[0].nbytes(kind) < layer.nbytes(kind) < at[8].layers[0].nbytes(kind)
    stats = compression_stats(mixed)
    assert compression_stats(at[2]).avg_key_bits < stats.avg_key_bits < compression_stats(at[8]).avg_key_bits


def test_heads_that_agree_store_exactly_as_the_uniform_config(tiny_reference):
    base = preset("streamkv-3", chunk_size=64)  # outliers, sinks and value groups on
    same = base.replace(head_key_bits=((3, 3), (3, 3)), head_value_bits=((3, 3), (3, 3)))
    assert same.config_id != base.config_id
    with torch.no_grad():
        a = model_of(tiny_reference, base)(IDS, use_cache=True)
        b = model_of(tiny_reference, same)(IDS, use_cache=True)
    assert torch.equal(a.logits, b.logits)
    assert a.past_key_values.nbytes() == b.past_key_values.nbytes()


def test_decode_steps_extend_mixed_heads_and_blockwise_equals_dense(tiny_reference):
    config = preset("streamkv-3", chunk_size=64).replace(head_key_bits=((2, 4), (4, 2)), head_value_bits=((4, 2), (2, 3)))
    model = model_of(tiny_reference, config)
    runs = {}
    for window in (0, 64):  # 0: the dense path; 64: one block per window
        cache = CompressedCache(config, model.config, model.model.rotary_emb, attention_window=window)
        with torch.no_grad():
            out = model.generate(IDS[:, :100], past_key_values=cache, max_new_tokens=20, do_sample=False)
        runs[window] = (out, cache)
    assert torch.equal(runs[0][0], runs[64][0])
    cache = runs[64][1]
    assert cache.get_seq_length() == 119 and "blockwise" in compression_stats(cache).history_reads
    assert "blockwise" not in compression_stats(runs[0][1]).history_reads
    # the decode tokens joined an open block: its parts (one per bit width) grew token by token
    last = cache.layers[1].blocks[-1]
    assert last.length > 1 and {2, 3} <= {p.bits for p in last.values.parts} <= {2, 3, 8}


def test_per_head_bits_round_trip_and_leave_other_ids_alone():
    config = CompressionConfig(head_key_bits=[[2, 8], [4, 4]])
    assert config.head_key_bits == ((2, 8), (4, 4))
    data = config.to_dict()
    assert data["head_key_bits"] == ((2, 8), (4, 4)) and "head_value_bits" not in data
    assert method_from_dict({**data, "head_key_bits": [[2, 8], [4, 4]]}) == config
    assert "head_key_bits" not in CompressionConfig().to_dict()


@pytest.mark.parametrize("fields, words", [
    ({"head_key_bits": ((2, 5), (2, 2))}, "head_key_bits: ((2, 5), (2, 2)) is out of range"),
    ({"head_key_bits": ((),)}, "head_key_bits: ((),) is out of range"),
    ({"head_value_bits": ((2, 16), (2, 2))}, "head_value_bits: (layer, head) [(0, 1)] exceed value_bits_sink_outlier=8"),
    ({"head_key_bits": ((2, 2), (2, 2)), "layer_key_bits": (2, 2)}, "head_key_bits: give layer_key_bits or "
                                                                     "head_key_bits, not both"),
])
def test_bad_per_head_bits_are_refused_with_the_field_named(fields, words):
    with pytest.raises(InvalidSettings) as err:
        CompressionConfig(**fields)
    assert words in str(err.value)


def test_a_shape_other_than_the_models_layers_and_heads_is_refused(tiny_config, tiny_reference):
    wrong_heads = CompressionConfig(head_value_bits=((4, 4), (4, 4, 4)))
    problems = wrong_heads.model_problems(tiny_config)
    assert [p.field for p in problems] == ["head_value_bits"]
    assert "layer(s) [1] do not have one entry per KV head" in str(problems[0])
    assert "num_key_value_heads=2" in str(problems[0])
    with pytest.raises(InvalidSettings, match="head_value_bits: layer"):
        run_cache(tiny_reference, wrong_heads)
    wrong_layers = CompressionConfig(head_key_bits=((4, 4),) * 3)
    assert "has 3 entries" in str(wrong_layers.model_problems(tiny_config)[0])

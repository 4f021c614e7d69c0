"""method="calibrated": offline statistics (streamkv.calibrate -> streamkv.calibration) used by
CalibratedLayer, each layer taking the ranges of its own index."""

import pytest
import torch

from streamkv import CompressedLlamaForCausalLM, method_class, preset
from streamkv.calibrate import calibrate
from streamkv.calibration import CALIBRATION_VERSION, KINDS, load_calibration, save_calibration
from streamkv.methods import Calibrated
from tests.conftest import tiny_llama_config


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread_module):
    """Module-wide: see tests/conftest.py."""


def batch(seed: int, n: int = 2, t: int = 128) -> torch.Tensor:
    return torch.randint(0, 256, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def calib_path(tiny_reference, tmp_path_factory):
    calib = calibrate(tiny_reference, batch(10), meta={"note": "test"})
    return save_calibration(calib, tmp_path_factory.mktemp("calib") / "tiny.pt")


def compressed(tiny_reference, config) -> CompressedLlamaForCausalLM:
    model = CompressedLlamaForCausalLM(tiny_reference.config, config).eval()
    model.load_state_dict(tiny_reference.state_dict())
    return model


def test_registered():
    assert method_class("calibrated") is Calibrated
    with pytest.raises(ValueError, match="calibration_path: '' is out of range"):
        Calibrated()


def test_calibration_file_roundtrip(tiny_reference, calib_path):
    calib = load_calibration(calib_path)
    assert calib.dims == {"num_layers": 2, "num_kv_heads": 2, "head_dim": 16}
    assert {k: tuple(v.shape) for k, v in calib.ranges.items()} == {k: (2, 2, 32) for k in KINDS}
    assert all(bool((v[0] < v[1]).all()) for v in calib.ranges.values()) and calib.meta["note"] == "test"
    assert calib.meta["statistic"] == "min/max" and calib.meta["tokens"] == 2 * (128 - 4)
    blob = torch.load(calib_path, weights_only=True)
    assert blob["version"] == CALIBRATION_VERSION
    # the range of pre-RoPE keys really is what k_proj produced (sinks excluded): Llama has no
    # k-norm, so the keys the cache gets, rotated back, are k_proj's output
    with torch.no_grad():
        hidden = tiny_reference.model.embed_tokens(batch(10))
        keys = tiny_reference.model.layers[0].self_attn.k_proj(
            tiny_reference.model.layers[0].input_layernorm(hidden))[:, 4:]
    low, high = calib.range("key_pre_rope", 0)
    assert torch.allclose(low, keys.amin(dim=(0, 1)), atol=1e-5)
    assert torch.allclose(high, keys.amax(dim=(0, 1)), atol=1e-5)
    # a percentile range lies inside the min/max range
    pct = calibrate(tiny_reference, batch(10), percentile=99.0)
    assert bool((pct.ranges["value"][1] <= calib.ranges["value"][1] + 1e-6).all())
    assert bool((pct.ranges["value"][0] >= calib.ranges["value"][0] - 1e-6).all())
    assert bool((pct.absmax("value") < calib.absmax("value")).any())


def test_wrong_version_is_refused(calib_path, tmp_path):
    blob = torch.load(calib_path, weights_only=True)
    blob["version"] = CALIBRATION_VERSION + 1
    path = tmp_path / "future.pt"
    torch.save(blob, path)
    with pytest.raises(ValueError, match="version"):
        load_calibration(path)


@torch.no_grad()
def test_calibrated_logits_close_to_uncompressed(tiny_reference, calib_path):
    cfg = Calibrated(calibration_path=str(calib_path), chunk_size=32)
    model = compressed(tiny_reference, cfg)
    prompt = batch(11)  # another batch than the calibration's
    reference = tiny_reference(prompt).logits
    out = model(prompt)
    err = (out.logits - reference).abs().max().item()
    assert 0 < err < 0.25  # streamkv-4's tolerance on this model is 0.2
    calib = load_calibration(calib_path)
    for i, layer in enumerate(out.past_key_values.layers):  # each layer has its own statistics
        assert layer.ctx.layer_idx == i
        assert torch.equal(layer.key_stats.high, calib.range("key_pre_rope", i)[1])
        assert torch.equal(layer.value_stats.low, calib.range("value", i)[0])
    stats = model.get_compression_stats()
    assert stats.compression_ratio > 2 and stats.per_layer
    assert stats.sink_tokens == 4  # the sink block is counted for every method that stores one
    # fixed statistics: another prompt leaves them as they were (no EMA)
    cache = model(batch(12)).past_key_values
    assert torch.equal(cache.layers[1].key_stats.low, calib.range("key_pre_rope", 1)[0])
    # and generation runs through the decode path
    out = model.generate(prompt[:1, :40], attention_mask=torch.ones(1, 40, dtype=torch.long),
                         max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 45)
    # post-RoPE keys take the post-RoPE statistics
    post = compressed(tiny_reference, cfg.replace(pre_rope_keys=False))
    assert (post(prompt).logits - reference).abs().max().item() < 0.25
    assert torch.equal(post(prompt).past_key_values.layers[0].key_stats.high, calib.range("key_post_rope", 0)[1])


@torch.no_grad()
def test_out_of_range_values_are_clipped(tiny_reference, calib_path, tmp_path):
    calib = load_calibration(calib_path)
    calib.ranges = {k: v * 0.05 for k, v in calib.ranges.items()}  # far too small: heavy clipping
    small = save_calibration(calib, tmp_path / "small.pt")
    prompt = batch(11)
    reference = tiny_reference(prompt).logits
    good = compressed(tiny_reference, Calibrated(calibration_path=str(calib_path),
                                                        chunk_size=32, value_quant_groups=0))
    bad = compressed(tiny_reference, Calibrated(calibration_path=str(small),
                                                       chunk_size=32, value_quant_groups=0))
    good_err = (good(prompt).logits - reference).abs().max().item()
    bad_err = (bad(prompt).logits - reference).abs().max().item()
    assert bad_err > 2 * good_err
    # the streaming method would have expanded its range instead
    assert (compressed(tiny_reference, preset("streamkv-4", chunk_size=32))(prompt).logits
            - reference).abs().max().item() < bad_err


def test_dims_mismatch_is_an_error(calib_path):
    from transformers import LlamaForCausalLM

    cfg = Calibrated(calibration_path=str(calib_path), chunk_size=32)
    other_heads = CompressedLlamaForCausalLM(tiny_llama_config(num_key_value_heads=1), cfg).eval()
    with pytest.raises(ValueError, match=r"does not match the model: num_kv_heads=2 \(model: 1\)"):
        other_heads(batch(1, 1, 16))
    deeper = CompressedLlamaForCausalLM(tiny_llama_config(num_hidden_layers=3), cfg).eval()
    with pytest.raises(ValueError, match=r"num_layers=2 \(model: 3\)"):
        deeper(batch(1, 1, 16))
    assert isinstance(LlamaForCausalLM, type)

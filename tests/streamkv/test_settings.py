"""Method settings: validation names the field, value and range; serialization round-trips;
the registry finds methods and presets by name."""

import pytest
from transformers import LlamaConfig

from streamkv import CompressionConfig, InvalidSettings, method_class, method_from_dict, method_names, preset
from streamkv.methods import Calibrated, Kivi, method_from_mapping, preset_names, resolve_settings

INVALID = [
    ("chunk_size", 0), ("chunk_size", -3), ("chunk_size", 1.5), ("chunk_size", True),
    ("ema_decay", 0.0), ("ema_decay", 1.0), ("ema_decay", -0.2),
    ("attention_sink_size", -1),
    ("key_bits_normal", 5), ("value_bits_normal", 1), ("key_bits_sink_outlier", 32),
    ("value_bits_sink_outlier", 7), ("key_bits_normal", 4.0),
    ("outlier_threshold_relative", 1.0), ("outlier_threshold_relative", -2),
    ("outlier_threshold_abs", 0.0), ("outlier_threshold_abs", -1.0), ("outlier_threshold_abs", True),
    ("value_quant_groups", -1),
    ("statistics", "median"), ("range_mode", "wrap"),
    ("pre_rope_keys", "yes"), ("sink_protection", 1), ("outlier_detection", None),
    ("quantize_current_chunk", "no"),
]


@pytest.mark.parametrize("field,value", INVALID)
def test_each_invalid_field_is_named(field, value):
    with pytest.raises(ValueError, match=rf"{field}: {value!r} is out of range \(allowed: "):
        CompressionConfig(**{field: value})


def test_all_problems_reported_at_once():
    with pytest.raises(InvalidSettings) as err:
        CompressionConfig(chunk_size=0, ema_decay=2.0, key_bits_normal=5, outlier_threshold_abs=True)
    assert [p.field for p in err.value.problems] == ["chunk_size", "key_bits_normal", "outlier_threshold_abs",
                                                    "ema_decay"]
    assert "2 | 3 | 4 | 8 | 16" in str(err.value)


def test_protected_bits_never_below_normal():
    with pytest.raises(ValueError, match="key_bits_sink_outlier: 4 must be >= key_bits_normal=8"):
        CompressionConfig(key_bits_normal=8, key_bits_sink_outlier=4)


def test_model_dependent_settings_are_checked_against_the_model():
    model = LlamaConfig(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=1)
    with pytest.raises(ValueError, match="value_quant_groups: 3 must divide the model's head_dim=64"):
        CompressionConfig(value_quant_groups=3).check_model(model)
    CompressionConfig(value_quant_groups=4).check_model(model)
    with pytest.raises(ValueError, match="group_size: 48 must divide the model's head_dim=64"):
        Kivi(group_size=48).check_model(model)


def test_each_method_has_only_its_own_settings():
    assert "residual_length" not in CompressionConfig().settings()
    assert "ema_decay" not in Kivi().settings()
    with pytest.raises(ValueError, match="unknown setting of method 'kivi'"):
        Kivi.from_dict({"ema_decay": 0.5})
    with pytest.raises(ValueError, match="calibration_path"):
        Calibrated()


def test_numbers_are_canonical_so_equal_settings_share_an_id():
    assert CompressionConfig(outlier_threshold_relative=3) == CompressionConfig(outlier_threshold_relative=3.0)
    assert CompressionConfig(outlier_threshold_relative=3).config_id == CompressionConfig().config_id


def test_roundtrip_and_hash():
    cfg = CompressionConfig(chunk_size=256, key_bits_normal=3, outlier_threshold_abs=5.0)
    again = CompressionConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.config_id == cfg.config_id
    assert cfg.to_dict()["method"] == "streamkv" and len(cfg.config_id) == 12
    assert cfg.config_id != CompressionConfig().config_id
    for name in method_names():
        if name != "calibrated":
            method = method_class(name)()
            assert method_from_dict(method.to_dict()) == method


def test_unknown_fields_are_refused():
    with pytest.raises(ValueError, match="chunksize"):
        CompressionConfig.from_dict({"chunksize": 5})


@pytest.mark.parametrize("name", preset_names())
def test_presets_are_valid_and_distinct(name):
    assert preset(name).config_id
    assert len({preset(n).config_id for n in preset_names()}) == len(preset_names())


def test_unknown_preset_and_method():
    with pytest.raises(ValueError, match="unknown preset 'kvquant-5'; allowed: none, int8"):
        preset("kvquant-5")
    with pytest.raises(ValueError, match="unknown method 'gptq'"):
        method_from_mapping({"method": "gptq"})


def test_mappings_as_users_write_them():
    assert method_from_mapping({"preset": "kivi-2", "chunk_size": 64}) == preset("kivi-2", chunk_size=64)
    assert method_from_mapping({"method": "kivi", "key_bits": 2}) == Kivi(key_bits=2)
    assert method_from_mapping({"chunk_size": 64}) == CompressionConfig(chunk_size=64)
    _, _, problems = resolve_settings({"preset": "streamkv-3", "key_bits_normal": 5, "ema_decay": 7})
    assert {p.field for p in problems} == {"key_bits_normal", "ema_decay"}

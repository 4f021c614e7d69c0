"""Which decoder families streamkv compresses, and the dims it reads from their configs.

streamkv stores keys before RoPE and rotates them back at their positions with the model's own
rotary embedding, and runs the prefill in chunks through the family's own decoder. That is
correct for decoder-only models whose every layer is full causal attention with
rotate-half RoPE: Llama (incl. Llama-3's RoPE scaling), Mistral, Qwen2 (attention biases) and
Qwen3 (q/k norms before RoPE). Anything else is refused with the reason, never run wrongly.
"""

from __future__ import annotations

from transformers import PretrainedConfig

SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3")


def head_dim_of(model_config: PretrainedConfig) -> int:
    return getattr(model_config, "head_dim", None) or (
        model_config.hidden_size // model_config.num_attention_heads)


def kv_heads_of(model_config: PretrainedConfig) -> int:
    """KV heads per layer (num_attention_heads when the config has no GQA field)."""
    return getattr(model_config, "num_key_value_heads", None) or model_config.num_attention_heads


def unsupported_reason(model_config: PretrainedConfig) -> str | None:
    """Why streamkv cannot compress this model correctly, or None when it can."""
    model_type = getattr(model_config, "model_type", "?")
    if getattr(model_config, "is_encoder_decoder", False):
        return f"{model_type} is an encoder-decoder model; streamkv compresses decoder-only self-attention caches"
    if model_type not in SUPPORTED_MODEL_TYPES:
        has_rope = any(getattr(model_config, a, None) is not None
                       for a in ("rope_parameters", "rope_theta", "rope_scaling"))
        what = "its attention has no rotary position embedding (non-RoPE)" if not has_rope else \
            "its attention and RoPE variant are not ones streamkv has been checked against"
        return (f"model type {model_type!r} is not supported: {what}; supported: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    layer_types = getattr(model_config, "layer_types", None)
    if layer_types is not None:
        other = sorted({t for t in layer_types if t != "full_attention"})
        if other:
            return (f"{model_type} model has {', '.join(other)} layers: sliding-window attention drops "
                    "old tokens, which the compressed cache keeps and attends to; use a config without it")
    elif getattr(model_config, "sliding_window", None) is not None:
        return (f"{model_type} model has sliding_window={model_config.sliding_window}: sliding-window "
                "attention drops old tokens, which the compressed cache keeps and attends to; load it with "
                "sliding_window=None to attend to the whole context")
    return None


def check_supported(model_config: PretrainedConfig) -> None:
    reason = unsupported_reason(model_config)
    if reason is not None:
        raise ValueError(f"streamkv cannot compress this model: {reason}")


__all__ = ["SUPPORTED_MODEL_TYPES", "check_supported", "head_dim_of", "kv_heads_of", "unsupported_reason"]

"""Attention for chunked prefill: SDPA with a lower-right causal mask, no materialized mask.

A prefill chunk of q tokens attends to kv = history + q keys: query i sees keys up to
kv - q + i. transformers' `sdpa` builds that as a [B, 1, q, kv] boolean tensor for every
chunk, which rules out SDPA's flash kernel (measured on an H100 in ../shared/ANCHORS.md:
chunked prefill 1.63x slower than one full prefill at 32K). Without padding the mask is
exactly `torch.nn.attention.bias.causal_lower_right(q, kv)`, which SDPA runs with the flash
kernel on CUDA (and materializes on CPU). With padding, or for any other mask, this falls
back to transformers' own `sdpa` path unchanged.

It is registered under one name in transformers' public `AttentionInterface` and
`AttentionMaskInterface`; `CompressedLlamaForCausalLM` selects it in place of `sdpa`.
"""

from __future__ import annotations

import torch
from torch.nn.attention.bias import causal_lower_right
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, causal_mask_function, sdpa_mask

NAME = "streamkv_sdpa"


def chunk_mask(*args, mask_function=causal_mask_function, attention_mask: torch.Tensor | None = None,
               local_size: int | None = None, **kwargs) -> torch.Tensor | None:
    """Mask interface: None when the mask is purely causal (no padding, no window), so the
    attention below aligns it to the lower right itself; else transformers' SDPA mask."""
    plain = (mask_function is causal_mask_function and local_size is None
             and (attention_mask is None or bool(attention_mask.all())))
    if plain:
        return None
    return sdpa_mask(*args, mask_function=mask_function, attention_mask=attention_mask,
                     local_size=local_size, **kwargs)


def chunked_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                         value: torch.Tensor, attention_mask: torch.Tensor | None,
                         dropout: float = 0.0, scaling: float | None = None,
                         is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """query [B, Hq, q, D]; key/value [B, Hkv, kv, D] -> [B, q, Hq, D].

    With `streamkv_cache` (passed by streamkv's model classes) whose layer attends blockwise,
    key/value are only the chunk just stored and the layer reads its history itself."""
    q_len, kv_len = query.shape[2], key.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    cache = kwargs.pop("streamkv_cache", None)
    if cache is not None:
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        if not causal or dropout:
            raise ValueError("blockwise history attention is causal and has no dropout; build the "
                             "cache with attention_window=0 for the dense path")
        out = cache.attend(module.layer_idx, query, key, value, attention_mask, scale)
        if out is not None:
            return out, None
    if attention_mask is not None or not causal or q_len == 1 or q_len >= kv_len:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:  # the flash path of a CausalBias takes equal head counts
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=causal_lower_right(q_len, kv_len), dropout_p=dropout, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, chunked_sdpa_forward)
AttentionMaskInterface.register(NAME, chunk_mask)

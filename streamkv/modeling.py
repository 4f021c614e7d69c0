"""Compressed causal LMs: a decoder whose prefill runs in chunks into a compressed cache.

`AutoCompressedModelForCausalLM.from_pretrained(...)` takes everything transformers'
`AutoModelForCausalLM.from_pretrained` takes, plus `compression_config=` (any method object,
default streamkv's `CompressionConfig()`), and returns the compressed class of the model's
family: `CompressedLlamaForCausalLM`, `CompressedMistralForCausalLM`,
`CompressedQwen2ForCausalLM` or `CompressedQwen3ForCausalLM`. A model streamkv cannot compress
correctly is refused with the reason (`streamkv.families`).

Only the outer forward changes: the prompt is split into `chunk_size` chunks, each chunk goes
through the family's own transformers decoder with the method's cache, and its keys/values are
quantized as they are produced. RoPE and the decoder layers are transformers'; attention is
transformers' SDPA path except that an unpadded chunk uses a lower-right causal mask
(`streamkv.attention`) instead of a materialized one, so SDPA can run its flash kernel.

Which method a call uses is an argument, never a change to the model:
`model(ids, compression_config=m)`, `model.generate(ids, compression_config=m)`, or a cache
built by `model.new_cache(m)` passed as `past_key_values` (the method of a `CompressedCache`
is its own). Without any of them the call uses the method the model was loaded with
(`model.compression_config`).
"""

from __future__ import annotations

import copy

import torch
from transformers import (
    AutoConfig,
    LlamaForCausalLM,
    MistralForCausalLM,
    PretrainedConfig,
    Qwen2ForCausalLM,
    Qwen3ForCausalLM,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from streamkv import attention
from streamkv.cache import CompressedCache
from streamkv.compression_stats import CompressionStats
from streamkv.families import check_supported
from streamkv.methods import CompressionConfig, Method


class CompressedCausalLMMixin:
    """The chunked forward, generate and stats shared by every compressed family class."""

    def __init__(self, config, compression_config: Method | None = None):
        check_supported(config)
        # The attention choice below is recorded in the config: keep a caller's config as it was.
        super().__init__(copy.deepcopy(config))
        if self.config._attn_implementation == "sdpa":
            self.set_attn_implementation(attention.NAME)
        self.compression_config = compression_config or CompressionConfig()
        # The seed's API reads the stats of the last call (`get_compression_stats()` without an
        # argument); nothing inside streamkv relies on it: the runner passes caches explicitly.
        self._last_run: tuple[Method, object] | None = None

    @classmethod
    def from_pretrained(cls, *args, compression_config: Method | None = None, **kwargs):
        """Everything transformers' `from_pretrained` takes, plus `compression_config`."""
        model = super().from_pretrained(*args, **kwargs)
        check_supported(model.config)
        model.compression_config = compression_config or CompressionConfig()
        return model

    def new_cache(self, compression_config: Method | None = None):
        """A fresh cache of `compression_config` (default: the model's) for this model."""
        method = compression_config or self.compression_config
        return method.new_cache(self.config, self.model.rotary_emb, dtype=self.dtype, device=self.device)

    def generate(self, *args, compression_config: Method | None = None, **kwargs):
        method = compression_config or self.compression_config
        if kwargs.get("past_key_values") is None:
            kwargs["past_key_values"] = self.new_cache(method)
        # Passed on to every forward step (generate forwards unknown model kwargs).
        return super().generate(*args, compression_config=method, **kwargs)

    def get_compression_stats(self, cache=None, compression_config: Method | None = None) -> CompressionStats:
        """Stats of `cache` (default: the cache of this model's last forward/generate call)."""
        if cache is None:
            if self._last_run is None:
                raise RuntimeError("no cache yet: run forward() or generate() first, or pass a cache")
            method, cache = self._last_run
        elif compression_config is not None:
            method = compression_config
        elif isinstance(cache, CompressedCache):
            method = cache.method
        elif self._last_run is not None and self._last_run[1] is cache:
            method = self._last_run[0]
        else:  # a transformers cache says nothing of the method that built it
            raise ValueError("pass compression_config= (the method that built this cache) to measure it")
        return method.stats(cache, self.config)

    def _method_of(self, cache, compression_config: Method | None) -> Method:
        if compression_config is not None:
            return compression_config
        if isinstance(cache, CompressedCache):
            return cache.method
        return self.compression_config

    def forward(self, input_ids: torch.LongTensor | None = None,
                attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None,
                past_key_values=None,
                inputs_embeds: torch.FloatTensor | None = None,
                labels: torch.LongTensor | None = None,
                use_cache: bool | None = None,
                logits_to_keep: int | torch.Tensor = 0,
                compression_config: Method | None = None,
                **kwargs) -> CausalLMOutputWithPast:
        method = self._method_of(past_key_values, compression_config)
        cache = past_key_values if past_key_values is not None else self.new_cache(method)
        self._last_run = (method, cache)
        embeds = inputs_embeds if inputs_embeds is not None else self.model.embed_tokens(input_ids)
        batch, seq = embeds.shape[:2]
        chunk = method.chunk_size or seq  # None: one forward (methods that prefill unchunked)
        past = cache.get_seq_length()
        if position_ids is None:
            position_ids = torch.arange(past, past + seq, device=embeds.device).unsqueeze(0)
        if attention_mask is not None and attention_mask.dim() != 2 and seq > chunk:
            raise ValueError("chunked prefill needs a 2D attention_mask [batch, past + seq]")
        keep_last = logits_to_keep if isinstance(logits_to_keep, int) else 0
        hidden: list[torch.Tensor] = []
        kept = 0
        for start in range(0, seq, chunk):
            end = min(seq, start + chunk)
            mask = attention_mask
            if attention_mask is not None and attention_mask.dim() == 2:
                mask = attention_mask[:, :past + end]
            step_kwargs = kwargs
            if isinstance(cache, CompressedCache):
                # Under streamkv's attention, layers attend over their packed history window by
                # window (`PackedLayer.attend`) instead of returning all of it from `update`.
                blockwise = self.config._attn_implementation == attention.NAME
                cache.begin_step(position_ids[:, start:end], batch, blockwise=blockwise)
                if blockwise:
                    step_kwargs = {**kwargs, "streamkv_cache": cache}
            out = self.model(inputs_embeds=embeds[:, start:end], attention_mask=mask,
                             position_ids=position_ids[:, start:end], past_key_values=cache,
                             use_cache=True, **step_kwargs)
            hidden.append(out.last_hidden_state)
            kept += end - start
            # Logits of early chunks are only kept when asked for (perplexity needs them all).
            while keep_last and kept - hidden[0].shape[1] >= keep_last:
                kept -= hidden.pop(0).shape[1]
        states = torch.cat(hidden, dim=1)  # [B, S or kept, hidden]
        if keep_last:
            states = states[:, -keep_last:]
        elif isinstance(logits_to_keep, torch.Tensor):
            states = states[:, logits_to_keep]
        logits = self.lm_head(states)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=cache)


class CompressedLlamaForCausalLM(CompressedCausalLMMixin, LlamaForCausalLM):
    """Llama (incl. Llama-3's RoPE scaling) with the chunked, compressed prefill."""


class CompressedMistralForCausalLM(CompressedCausalLMMixin, MistralForCausalLM):
    """Mistral (without sliding-window layers) with the chunked, compressed prefill."""


class CompressedQwen2ForCausalLM(CompressedCausalLMMixin, Qwen2ForCausalLM):
    """Qwen2 (attention biases) with the chunked, compressed prefill."""


class CompressedQwen3ForCausalLM(CompressedCausalLMMixin, Qwen3ForCausalLM):
    """Qwen3 (q/k norms before RoPE) with the chunked, compressed prefill."""


COMPRESSED_CLASSES: dict[str, type] = {
    "llama": CompressedLlamaForCausalLM,
    "mistral": CompressedMistralForCausalLM,
    "qwen2": CompressedQwen2ForCausalLM,
    "qwen3": CompressedQwen3ForCausalLM,
}


class AutoCompressedModelForCausalLM:
    """Picks the compressed class of a model's family (like transformers' Auto classes)."""

    @staticmethod
    def class_for(model_config: PretrainedConfig) -> type:
        check_supported(model_config)
        return COMPRESSED_CLASSES[model_config.model_type]

    @classmethod
    def from_config(cls, model_config: PretrainedConfig, compression_config: Method | None = None):
        """A randomly initialized compressed model (tests, benchmarks)."""
        return cls.class_for(model_config)(model_config, compression_config)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, compression_config: Method | None = None,
                        **kwargs):
        """Everything `AutoModelForCausalLM.from_pretrained` takes, plus `compression_config`."""
        config = kwargs.pop("config", None)
        if config is None:
            config_kwargs = {k: kwargs[k] for k in ("gguf_file", "revision", "trust_remote_code", "token",
                                                    "cache_dir", "local_files_only") if k in kwargs}
            config = AutoConfig.from_pretrained(pretrained_model_name_or_path, **config_kwargs)
        return cls.class_for(config).from_pretrained(pretrained_model_name_or_path, *args, config=config,
                                                     compression_config=compression_config, **kwargs)


__all__ = ["COMPRESSED_CLASSES", "AutoCompressedModelForCausalLM", "CompressedCausalLMMixin",
           "CompressedLlamaForCausalLM", "CompressedMistralForCausalLM", "CompressedQwen2ForCausalLM",
           "CompressedQwen3ForCausalLM"]

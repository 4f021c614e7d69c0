"""`CompressedLlamaForCausalLM`: a Llama whose prefill runs in chunks into a compressed cache.

Only the outer forward changes: the prompt is split into `chunk_size` chunks, each chunk goes
through transformers' own `LlamaModel` with a `CompressedCache`, and its keys/values are
quantized as they are produced. RoPE and the decoder layers are transformers'; attention is
transformers' SDPA path except that an unpadded chunk uses a lower-right causal mask
(`streamkv.attention`) instead of a materialized one, so SDPA can run its flash kernel.
"""

from __future__ import annotations

import copy

import torch
from transformers import LlamaForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from streamkv import attention
from streamkv.cache import CompressedCache
from streamkv.compression_stats import CompressionStats, compression_stats
from streamkv.config import CompressionConfig


class CompressedLlamaForCausalLM(LlamaForCausalLM):
    def __init__(self, config, compression_config: CompressionConfig | None = None):
        # The attention choice below is recorded in the config: keep a caller's config as it was.
        super().__init__(copy.deepcopy(config))
        if self.config._attn_implementation == "sdpa":
            self.set_attn_implementation(attention.NAME)
        self.compression_config = compression_config or CompressionConfig()
        self.last_cache: CompressedCache | None = None

    @classmethod
    def from_pretrained(cls, *args, compression_config: CompressionConfig | None = None, **kwargs):
        """Everything `LlamaForCausalLM.from_pretrained` takes, plus `compression_config`."""
        model = super().from_pretrained(*args, **kwargs)
        model.compression_config = compression_config or CompressionConfig()
        return model

    def new_cache(self) -> CompressedCache:
        return CompressedCache(self.compression_config, self.config, self.model.rotary_emb)

    def generate(self, *args, **kwargs):
        if kwargs.get("past_key_values") is None:
            kwargs["past_key_values"] = self.new_cache()
        return super().generate(*args, **kwargs)

    def get_compression_stats(self) -> CompressionStats:
        """Stats of the cache of the last forward/generate call."""
        if self.last_cache is None:
            raise RuntimeError("no cache yet: run forward() or generate() first")
        return compression_stats(self.last_cache)

    def forward(self, input_ids: torch.LongTensor | None = None,
                attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None,
                past_key_values=None,
                inputs_embeds: torch.FloatTensor | None = None,
                labels: torch.LongTensor | None = None,
                use_cache: bool | None = None,
                logits_to_keep: int | torch.Tensor = 0,
                **kwargs) -> CausalLMOutputWithPast:
        cache = past_key_values if past_key_values is not None else self.new_cache()
        if isinstance(cache, CompressedCache):
            self.last_cache = cache
        embeds = inputs_embeds if inputs_embeds is not None else self.model.embed_tokens(input_ids)
        batch, seq = embeds.shape[:2]
        past = cache.get_seq_length()
        if position_ids is None:
            position_ids = torch.arange(past, past + seq, device=embeds.device).unsqueeze(0)
        if attention_mask is not None and attention_mask.dim() != 2 and seq > self.compression_config.chunk_size:
            raise ValueError("chunked prefill needs a 2D attention_mask [batch, past + seq]")
        keep_last = logits_to_keep if isinstance(logits_to_keep, int) else 0
        hidden: list[torch.Tensor] = []
        kept = 0
        for start in range(0, seq, self.compression_config.chunk_size):
            end = min(seq, start + self.compression_config.chunk_size)
            mask = attention_mask
            if attention_mask is not None and attention_mask.dim() == 2:
                mask = attention_mask[:, :past + end]
            if isinstance(cache, CompressedCache):
                cache.begin_step(position_ids[:, start:end], batch)
            out = self.model(inputs_embeds=embeds[:, start:end], attention_mask=mask,
                             position_ids=position_ids[:, start:end], past_key_values=cache,
                             use_cache=True, **kwargs)
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

"""Greedy generation of one sample, timed honestly.

`generate_sample` runs ONE `model.generate(..., do_sample=False, output_logits=True,
return_dict_in_generate=True)` and times it with a streamer:

- prefill time = time to first token (TTFT): from just before `generate` to the moment
  transformers hands the first new token to the streamer. That is the prefill forward (all
  chunks, with their quantization) plus the selection of the first token, i.e. exactly what a
  user waits for. No separate prompt forward is run (that would time a different call, and
  on CUDA would warm caches for the real one). Prefill tokens/s = prompt tokens / TTFT.
- decode time = from the first token to the end of `generate`, over the remaining
  new tokens - 1 steps. Decode tokens/s = (new tokens - 1) / decode time; None when one token.

transformers calls `streamer.put(tokens.cpu())`, so on CUDA the device is synchronized at the
first-token stamp; the end stamp synchronizes explicitly.

Stopping: greedy until `spec.max_new_tokens` or a stop token: the model's
`generation_config.eos_token_id` (all of them) and the tokenizer's eos; for samsum also the
newline token, with at least one new token, as LongBench's pred.py does. Only the new tokens
are decoded (special tokens skipped, as pred.py does).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers.generation.streamers import BaseStreamer

from workers.tasks import TaskSpec

# pred.py stops these tasks at a newline too (and forces one new token).
NEWLINE_STOP_TASKS = ("samsum",)


@dataclass
class GenerationOutput:
    prompt_tokens: int
    new_token_ids: list[int]
    text: str
    step_logits: torch.Tensor  # [new_tokens, vocab] float32: the logits each token was chosen from
    prefill_seconds: float  # time to first token
    decode_seconds: float
    stopped_by: str  # "stop_token" | "max_new_tokens"

    @property
    def new_tokens(self) -> int:
        return len(self.new_token_ids)

    @property
    def prefill_tokens_per_s(self) -> float | None:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else None

    @property
    def decode_tokens_per_s(self) -> float | None:
        steps = self.new_tokens - 1
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds > 0 else None


class _Clock(BaseStreamer):
    """Stamps the first new token and the end of generation."""

    def __init__(self, device: torch.device):
        self.device = device
        self.calls = 0
        self.first_token: float | None = None
        self.finished: float | None = None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2:  # call 1 is the prompt; call 2 the first new token (already on CPU)
            self.first_token = time.perf_counter()

    def end(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.finished = time.perf_counter()


def stop_token_ids(model, tokenizer, spec: TaskSpec) -> list[int]:
    ids: list[int] = []
    eos = getattr(model.generation_config, "eos_token_id", None)
    for value in ([eos] if isinstance(eos, int) else list(eos or [])) + [tokenizer.eos_token_id]:
        if value is not None and value not in ids:
            ids.append(int(value))
    if spec.name in NEWLINE_STOP_TASKS:
        newline = tokenizer.encode("\n", add_special_tokens=False)
        if newline and newline[-1] not in ids:
            ids.append(newline[-1])
    if not ids:
        raise ValueError("neither the model nor the tokenizer names an EOS token to stop at")
    return ids


@torch.no_grad()
def generate_sample(model, tokenizer, input_ids: list[int], spec: TaskSpec, *,
                    past_key_values=None, compression_config=None) -> GenerationOutput:
    """Greedy continuation of `input_ids` (see the module docstring) with the method
    `compression_config` (default: the model's) and, when given, its cache `past_key_values`."""
    if not input_ids:
        raise ValueError("empty prompt: the sample produced no input tokens")
    device = model.device
    ids = torch.tensor([input_ids], dtype=torch.long, device=device)
    stops = stop_token_ids(model, tokenizer, spec)
    clock = _Clock(device)
    kwargs = dict(do_sample=False, max_new_tokens=spec.max_new_tokens, output_logits=True,
                  return_dict_in_generate=True, eos_token_id=stops,
                  pad_token_id=model.generation_config.pad_token_id or stops[0],
                  attention_mask=torch.ones_like(ids), streamer=clock,
                  # explicit: a model's generation_config must not turn greedy into anything else
                  temperature=None, top_p=None, top_k=None, repetition_penalty=None)
    if spec.name in NEWLINE_STOP_TASKS:
        kwargs["min_new_tokens"] = 1
    if past_key_values is not None:
        kwargs["past_key_values"] = past_key_values
    if compression_config is not None:
        kwargs["compression_config"] = compression_config
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = model.generate(ids, **kwargs)
    if clock.finished is None:
        clock.end()
    new = out.sequences[0, ids.shape[1]:].tolist()
    first = clock.first_token if clock.first_token is not None else clock.finished
    logits = torch.cat([step.float() for step in out.logits], dim=0)
    if logits.shape[0] != len(new):
        raise RuntimeError(f"generate returned {logits.shape[0]} logit rows for {len(new)} new tokens")
    text = tokenizer.decode(new, skip_special_tokens=True)
    stopped = "stop_token" if new and new[-1] in stops else "max_new_tokens"
    return GenerationOutput(prompt_tokens=len(input_ids), new_token_ids=new, text=text,
                            step_logits=logits, prefill_seconds=first - start,
                            decode_seconds=clock.finished - first, stopped_by=stopped)


__all__ = ["NEWLINE_STOP_TASKS", "GenerationOutput", "generate_sample", "stop_token_ids"]

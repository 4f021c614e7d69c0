"""Perplexity on a raw text file (WikiText-2 by default) through the real chunked-prefill path.

Protocol: the text is tokenized once, cut into non-overlapping windows of `context_length`
tokens (the KVQuant/GPTQ protocol), and each window is one forward of the compressed model:
chunks of `chunk_size` tokens, each attending to the quantized history plus its own
keys/values (full precision in the streaming protocol; quantized too in the strict protocol,
`quantize_current_chunk=True`, as the published KVQuant tables are computed).
The NLL of every position but the first of each window is averaged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_WIKITEXT = Path(__file__).resolve().parent.parent / "data" / "wikitext-2-raw" / "wiki.test.raw"


@dataclass(frozen=True)
class WindowResult:
    index: int
    tokens: int  # predicted tokens (context_length - 1)
    nll_sum: float

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_sum / self.tokens)


def load_text(path: str | Path | None = None) -> str:
    p = Path(path) if path else DEFAULT_WIKITEXT
    if not p.exists():
        raise FileNotFoundError(f"perplexity text {p} not found; pass a path to a raw text file "
                                "(e.g. WikiText-2 wiki.test.raw)")
    return p.read_text(encoding="utf-8")


def token_windows(token_ids: torch.Tensor, context_length: int) -> list[torch.Tensor]:
    """Non-overlapping windows [context_length] of a 1D token tensor; the tail is dropped."""
    if context_length < 2:
        raise ValueError(f"context_length={context_length} is out of range (allowed: >= 2)")
    n = token_ids.numel() // context_length
    return [token_ids[i * context_length:(i + 1) * context_length] for i in range(n)]


@torch.no_grad()
def window_nll(model, window: torch.Tensor, compression_config=None) -> tuple[float, torch.Tensor]:
    """(sum of next-token NLL, logits [T, V] float32) of one window through `model` with the
    method `compression_config` (default: the model's)."""
    ids = window.unsqueeze(0).to(model.device)
    logits = model(ids, compression_config=compression_config).logits[0].float()
    nll = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:], reduction="sum")
    return float(nll), logits


def perplexity(results: list[WindowResult]) -> float:
    tokens = sum(r.tokens for r in results)
    return math.exp(sum(r.nll_sum for r in results) / tokens)

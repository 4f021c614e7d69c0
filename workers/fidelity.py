"""How far a compressed cache moves the model's next-token distribution.

Pure functions on logits [N, V]:
- `kl_divergence(p_logits, q_logits)`: per row, KL(P || Q) with P = softmax(p_logits) the
  reference (uncompressed) and Q = softmax(q_logits) the compressed model, in nats, computed
  in float64 from log-softmaxes (exactly 0 for identical rows, clamped at 0 below);
- `top1_agreement(p_logits, q_logits)`: per row, 1.0 when both argmaxes agree, else 0.0.

Protocol (the reference is `streamkv.preset("none", chunk_size=<the method's chunk size>)`,
the lossless fp16 cache through the same chunked code path, run on the same loaded model with
`compression_config=` the reference; a method that prefills in one forward, chunk_size None,
is compared with a one-forward reference):
- (a) prefill, perplexity units: the compressed forward of a window vs the reference forward
  of the same window, every position;
- (b) generation, task units: the logits the compressed model chose each greedy token from
  (`generate(..., output_logits=True)`) vs one teacher-forced reference forward of
  prompt + generated tokens[:-1], whose last `n_new` positions predict the same tokens.
A config equal to its reference (`none` at the same chunk size) is not run twice: its
reference logits are its own, so KL is exactly 0 and agreement 1 by construction.
Unit metrics are token-weighted means over all compared positions of the unit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streamkv.methods import Method, preset

_KL_ROWS = 128
# The reference's chunk for a method that prefills in one forward (longer than any window).
UNCHUNKED = 1 << 30


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """[..., V] x2 -> [...]: KL(softmax(p) || softmax(q)) per row, in nats."""
    if p_logits.shape != q_logits.shape:
        raise ValueError(f"logit shapes differ: {tuple(p_logits.shape)} vs {tuple(q_logits.shape)}")
    vocab = p_logits.shape[-1]
    p_rows, q_rows = p_logits.reshape(-1, vocab), q_logits.reshape(-1, vocab)
    out = torch.empty(p_rows.shape[0], dtype=torch.float64, device=p_logits.device)
    # Row blocks: float64 copies of a [2048, 49152] window would take gigabytes at once.
    for start in range(0, p_rows.shape[0], _KL_ROWS):
        log_p = torch.log_softmax(p_rows[start:start + _KL_ROWS].double(), dim=-1)
        log_q = torch.log_softmax(q_rows[start:start + _KL_ROWS].double(), dim=-1)
        out[start:start + _KL_ROWS] = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    return out.clamp_min(0.0).reshape(p_logits.shape[:-1])


def top1_agreement(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """[..., V] x2 -> [...] float: 1.0 where the argmaxes agree."""
    if p_logits.shape != q_logits.shape:
        raise ValueError(f"logit shapes differ: {tuple(p_logits.shape)} vs {tuple(q_logits.shape)}")
    return (p_logits.argmax(dim=-1) == q_logits.argmax(dim=-1)).float()


@dataclass
class Fidelity:
    """Sums over compared positions; merge samples with `+=`."""

    kl_sum: float = 0.0
    agree: float = 0.0
    tokens: int = 0

    @classmethod
    def of(cls, reference_logits: torch.Tensor, logits: torch.Tensor) -> Fidelity:
        kl = kl_divergence(reference_logits, logits)
        return cls(float(kl.sum()), float(top1_agreement(reference_logits, logits).sum()), kl.numel())

    @classmethod
    def identical(cls, tokens: int) -> Fidelity:
        return cls(0.0, float(tokens), tokens)

    def __iadd__(self, other: Fidelity) -> Fidelity:
        self.kl_sum += other.kl_sum
        self.agree += other.agree
        self.tokens += other.tokens
        return self

    @property
    def mean_kl(self) -> float | None:
        return self.kl_sum / self.tokens if self.tokens else None

    @property
    def top1(self) -> float | None:
        return self.agree / self.tokens if self.tokens else None


def reference_config(chunk_size: int | None) -> Method:
    return preset("none", chunk_size=chunk_size or UNCHUNKED)


@torch.no_grad()
def reference_logits(model, input_ids: torch.Tensor, chunk_size: int | None, keep_last: int = 0) -> torch.Tensor:
    """Reference logits [T or keep_last, V] (float32) of one sequence [T] (or [1, T])."""
    ids = input_ids.view(1, -1).to(model.device)
    out = model(ids, logits_to_keep=keep_last, compression_config=reference_config(chunk_size))
    return out.logits[0].float()


def is_reference(config: Method) -> bool:
    """True when `config` is its own reference (fidelity is then exact by construction)."""
    return config.is_lossless and config == reference_config(config.chunk_size)


def prefill_fidelity(model, window: torch.Tensor, logits: torch.Tensor, chunk_size: int, *,
                     same_as_reference: bool = False) -> Fidelity:
    """(a): logits [T, V] of `window` from the evaluated cache vs the reference's, run with
    `chunk_size`. `same_as_reference`: the evaluated run WAS the reference run (no rerun)."""
    if same_as_reference:
        return Fidelity.identical(logits.shape[0])
    ref = reference_logits(model, window, chunk_size)
    return Fidelity.of(ref, logits.to(ref.device))


def continuation_fidelity(model, prompt_ids: list[int], new_ids: list[int], step_logits: torch.Tensor,
                          chunk_size: int, *, same_as_reference: bool = False) -> Fidelity:
    """(b): per-step logits [n, V] of a greedy continuation vs teacher-forced reference logits."""
    n = len(new_ids)
    if n == 0:
        return Fidelity()
    if step_logits.shape[0] != n:
        raise ValueError(f"{step_logits.shape[0]} logit rows for {n} new tokens")
    if same_as_reference:
        return Fidelity.identical(n)
    ids = torch.tensor(list(prompt_ids) + list(new_ids[:-1]), dtype=torch.long)
    ref = reference_logits(model, ids, chunk_size, keep_last=n)
    return Fidelity.of(ref, step_logits.to(ref.device))


__all__ = ["UNCHUNKED", "Fidelity", "continuation_fidelity", "is_reference", "kl_divergence", "prefill_fidelity",
           "reference_config", "reference_logits", "top1_agreement"]

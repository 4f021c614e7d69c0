"""Prefill time and peak memory: compressed vs uncompressed, same model, same chunk size.

    python benchmarks/speed.py                                  # SmolLM2 on CPU, 2048 tokens
    python benchmarks/speed.py --model llama2-7b-random --lengths 4096 16384 32768 --chunk-size 2048   # CUDA, bf16

Rows per length (medians of --repeats runs after one warm-up, `logits_to_keep=1`):
- `full`: plain transformers, whole prompt in one forward, DynamicCache, its own `sdpa`;
- `chunked-none`: our chunked prefill with 16-bit storage (method none);
- `streamkv-4` (and any --configs): our chunked prefill with the compressed cache; on CUDA the
  packing/unpacking runs in the Triton kernels (streamkv.kernels), and `--torch-path` adds a
  `<config>/torch` row with the plain-torch reference path for comparison.
Ratios are against `full` of the same run. Peak memory is torch.cuda.max_memory_allocated on
CUDA (also shown without the weights, which every row holds); on CPU it is the bytes held by
the KV cache (measured: the plain cache's tensors, or our cache's peak after any step), since
the process RSS cannot be reset between rows. On CUDA, before timing, the kernel path is checked
against the torch path on the first length (last-64-token logits, relative difference).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamkv import CompressedLlamaForCausalLM, Method, preset  # noqa: E402


def build_model(name: str, device: str, dtype: torch.dtype) -> CompressedLlamaForCausalLM:
    if name == "llama2-7b-random":  # speed and memory do not depend on the weight values
        from transformers import LlamaConfig

        cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                          max_position_embeddings=32768, attn_implementation="sdpa")
        with torch.device(device):
            model = CompressedLlamaForCausalLM(cfg).to(dtype)
        return model.eval()
    from streamkv.loading import load_model

    return load_model(name, dtype=dtype, device=device).model


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_prefill(model, ids, config: Method | None, fused: bool | None, keep: int = 1):
    """One prefill; config None = plain transformers forward (DynamicCache; time_row sets sdpa)."""
    if config is None:
        from transformers import DynamicCache, LlamaForCausalLM

        cache = DynamicCache(config=model.config)
        return LlamaForCausalLM.forward(model, ids, past_key_values=cache, logits_to_keep=keep), cache
    from streamkv import CompressedCache

    cache = CompressedCache(config, model.config, model.model.rotary_emb, dtype=model.dtype, device=model.device,
                            fused=fused)
    return model(ids, past_key_values=cache, logits_to_keep=keep), cache


class model_attention:
    """Temporarily runs the model with another attention implementation (the plain baseline)."""

    def __init__(self, model, name: str):
        self.model, self.name = model, name

    def __enter__(self):
        self.saved = self.model.config._attn_implementation
        self.model.set_attn_implementation(self.name)

    def __exit__(self, *exc):
        self.model.set_attn_implementation(self.saved)


@torch.no_grad()
def time_row(model, ids, device: str, config: Method | None, repeats: int,
             fused: bool | None = None) -> tuple[float, int]:
    """(median seconds, peak bytes) of one prefill."""
    times, peak = [], 0
    baseline_attention = model_attention(model, "sdpa") if config is None else contextlib.nullcontext()
    with baseline_attention:
        for i in range(repeats + 1):
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            sync(device)
            start = time.perf_counter()
            _, cache = run_prefill(model, ids, config, fused)
            sync(device)
            if i:  # the first run warms up (and compiles the kernels)
                times.append(time.perf_counter() - start)
            if device.startswith("cuda"):
                peak = max(peak, torch.cuda.max_memory_allocated())
            elif config is not None:
                peak = max(peak, cache.peak_bytes)
            else:  # the plain cache holds every key/value in the model's dtype
                peak = max(peak, sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values)))
            del cache
    return statistics.median(times), peak


@torch.no_grad()
def check_kernels(model, ids, config: Method) -> float:
    """Relative difference of the last 64 logits: Triton kernels vs the plain-torch path."""
    fused, _ = run_prefill(model, ids, config, True, keep=64)
    plain, _ = run_prefill(model, ids, config, False, keep=64)
    a, b = fused.logits.float(), plain.logits.float()
    return float((a - b).norm() / b.norm())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048])
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--configs", nargs="*", default=["streamkv-4"])
    ap.add_argument("--torch-path", action="store_true",
                    help="also time the plain-torch packing path on CUDA (<config>/torch rows)")
    args = ap.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    model = build_model(args.model, device, dtype)
    weights = sum(p.nbytes for p in model.parameters()) if device == "cuda" else 0
    vocab = model.config.vocab_size
    print(f"{args.model} on {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}), "
          f"{dtype}, chunk {args.chunk_size}, median of {args.repeats}; weights {weights / 1e9:.2f} GB")
    if device == "cuda":
        ids = torch.randint(0, vocab, (1, args.lengths[0]), device=device)
        for name in args.configs:
            diff = check_kernels(model, ids, preset(name, chunk_size=args.chunk_size))
            print(f"kernel check {name} at {args.lengths[0]} tokens: relative logit difference "
                  f"Triton vs torch path {diff:.2e}", flush=True)
    print(f"{'tokens':>7} {'row':<18} {'seconds':>9} {'x full':>7} {'peak MB':>9} {'x full':>7} "
          f"{'x full w/o weights':>19}")
    for n in args.lengths:
        ids = torch.randint(0, vocab, (1, n), device=device)
        rows: list[tuple[str, Method | None, bool | None]] = [
            ("full", None, None), ("chunked-none", preset("none", chunk_size=args.chunk_size), None)]
        for name in args.configs:
            rows.append((name, preset(name, chunk_size=args.chunk_size), None))
            if args.torch_path and device == "cuda":
                rows.append((f"{name}/torch", preset(name, chunk_size=args.chunk_size), False))
        base_t = base_m = None
        for label, cfg, fused in rows:
            t, peak = time_row(model, ids, device, cfg, args.repeats, fused)
            if label == "full":
                base_t, base_m = t, peak
            above = f"{(peak - weights) / (base_m - weights):19.3f}" if weights else f"{'-':>19}"
            print(f"{n:>7} {label:<18} {t:9.3f} {t / base_t:7.3f} {peak / 1e6:9.1f} "
                  f"{peak / base_m:7.3f} {above}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

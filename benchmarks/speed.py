"""Prefill time and peak memory: compressed vs uncompressed, same model, same chunk size.

    python benchmarks/speed.py                                  # SmolLM2 on CPU, 2048 tokens
    python benchmarks/speed.py --model llama2-7b-random --lengths 4096 16384 32768   # CUDA, bf16

Rows per length (medians of --repeats runs after one warm-up, `logits_to_keep=1`):
- `full`: plain transformers, whole prompt in one forward, DynamicCache;
- `chunked-none`: our chunked prefill with 16-bit storage (method none);
- `streamkv-4` (and any --configs): our chunked prefill with the compressed cache.
Ratios are against `full` of the same run. Peak memory is torch.cuda.max_memory_allocated on
CUDA; on CPU it is the bytes held by the KV cache (measured: the plain cache's tensors, or
our cache's peak after any step), since the process RSS cannot be reset between rows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamkv import CompressedLlamaForCausalLM, CompressionConfig, baseline  # noqa: E402


def build_model(name: str, device: str, dtype: torch.dtype) -> CompressedLlamaForCausalLM:
    if name == "llama2-7b-random":  # speed and memory do not depend on the weight values
        from transformers import LlamaConfig

        cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                          max_position_embeddings=32768, attn_implementation="sdpa")
        with torch.device(device):
            model = CompressedLlamaForCausalLM(cfg).to(dtype)
        return model.eval()
    from streamkv.models import load_model

    return load_model(name, dtype=dtype, device=device).model


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def time_row(model, ids, device: str, config: CompressionConfig | None, repeats: int) -> tuple[float, int]:
    """(median seconds, peak bytes) of one prefill; config None = plain transformers forward."""
    times, peak = [], 0
    for i in range(repeats + 1):
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        start = time.perf_counter()
        if config is None:
            from transformers import DynamicCache, LlamaForCausalLM

            cache = DynamicCache(config=model.config)
            LlamaForCausalLM.forward(model, ids, past_key_values=cache, logits_to_keep=1)
        else:
            model.compression_config = config
            model(ids, logits_to_keep=1)
        sync(device)
        if i:  # the first run warms up
            times.append(time.perf_counter() - start)
        if device.startswith("cuda"):
            peak = max(peak, torch.cuda.max_memory_allocated())
        elif config is not None:
            peak = max(peak, model.last_cache.peak_bytes)
        else:  # the plain cache holds every key/value in the model's dtype
            peak = max(peak, sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values)))
    return statistics.median(times), peak


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048])
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--configs", nargs="*", default=["streamkv-4"])
    args = ap.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    model = build_model(args.model, device, dtype)
    vocab = model.config.vocab_size
    print(f"{args.model} on {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}), "
          f"{dtype}, chunk {args.chunk_size}, median of {args.repeats}")
    print(f"{'tokens':>7} {'row':<14} {'seconds':>9} {'x full':>7} {'peak MB':>9} {'x full':>7}")
    for n in args.lengths:
        ids = torch.randint(0, vocab, (1, n), device=device)
        rows = {"full": None, "chunked-none": baseline("none", chunk_size=args.chunk_size)}
        rows.update({c: baseline(c, chunk_size=args.chunk_size) for c in args.configs})
        base_t = base_m = None
        for label, cfg in rows.items():
            t, peak = time_row(model, ids, device, cfg, args.repeats)
            if label == "full":
                base_t, base_m = t, peak
            mem_ratio = f"{peak / base_m:7.3f}" if base_m else "      -"
            print(f"{n:>7} {label:<14} {t:9.3f} {t / base_t:7.3f} {peak / 1e6:9.1f} {mem_ratio}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

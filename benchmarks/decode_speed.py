"""Decode speed after a long prompt: ms per generated token, compressed vs uncompressed caches.

    python benchmarks/decode_speed.py                          # SmolLM2, CPU, 2048 and 8192 tokens
    python benchmarks/decode_speed.py --lengths 2048 --steps 16 --repeats 5 --configs streamkv-4
    python benchmarks/decode_speed.py --model llama2-7b-random --lengths 4096 16384 32768 \\
        --chunk-size 2048                                      # CUDA, bf16 (benchmarks/gpu_speed.sh)

Rows per prompt length (one prefill per row and repeat, then `--steps` greedy decode steps;
the figure is the median over repeats of each run's median step time):
- `dynamic`: plain transformers, its own `sdpa`, `DynamicCache` (the uncompressed reference);
- `none`: streamkv's chunked cache with 16-bit storage;
- every `--configs` preset (default streamkv-4, kivi-4);
- `hf-quanto-4`: transformers' `QuantizedCache` with optimum-quanto (when installed).
Rows are interleaved (repeat 1 of every row, then repeat 2, ...), so a noisy machine slows all
of them alike, and the ratio column is against `dynamic` of the same run. streamkv rows attend
over their packed history window by window (`--window` tokens, `streamkv.history_attention`);
`--dense` adds a `<config>/dense` row per config with the dense path (the whole history
decoded into one buffer, then SDPA), to compare the two; `--codes` a `<config>/codes` row with
attention read straight from the packed codes (`streamkv.code_attention`, Triton: CUDA, or
the interpreter on CPU, which is far too slow to time).
Also printed: each row's prefill seconds (median) and the cache's bytes after the prompt, and
on CUDA each row's floor: (weight bytes + cache bytes) / `--bandwidth-gbs`, the time a step
would take if it only read what it must (the compressed rows' floor reads their codes).
Prompt ids are random: speed does not depend on the text.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/speed.py's models

from streamkv import preset  # noqa: E402


def _hf_quanto(model_config):
    import workers.hf_baselines  # noqa: F401 - registers the hf-* presets

    return preset("hf-quanto-4").new_cache(model_config)


def _cache_bytes(cache, model_config) -> int | None:
    """Bytes the cache holds: streamkv's own count, the HF baseline's measurement for quanto's
    QuantizedCache (its codes live outside `keys`/`values`), else the plain tensors."""
    if hasattr(cache, "nbytes"):
        return cache.nbytes()
    from transformers.cache_utils import QuantizedCache

    if isinstance(cache, QuantizedCache):
        return preset("hf-quanto-4").stats(cache, model_config).kv_bytes
    return sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def run_row(model, ids: torch.Tensor, row: str, steps: int, window: int, chunk: int | None) -> dict:
    """One prefill + `steps` greedy decode steps; seconds of the prefill and of each step."""
    from transformers import DynamicCache, LlamaForCausalLM

    from streamkv import CompressedCache

    device = str(ids.device)
    if row in ("dynamic", "hf-quanto-4"):
        cache = DynamicCache(config=model.config) if row == "dynamic" else _hf_quanto(model.config)
        forward = lambda x, c: LlamaForCausalLM.forward(model, x, past_key_values=c, use_cache=True,  # noqa: E731
                                                        logits_to_keep=1)
    else:
        name, _, path = row.partition("/")
        method = preset(name) if chunk is None else preset(name, chunk_size=chunk)
        cache = CompressedCache(method, model.config, model.model.rotary_emb, dtype=model.dtype,
                                device=model.device, attention_window=0 if path == "dense" else window,
                                **({"fused": True, "code_attention": True} if path == "codes" else {}))
        forward = lambda x, c: model(x, past_key_values=c, logits_to_keep=1)  # noqa: E731
    sync(device)
    t0 = time.perf_counter()
    out = forward(ids, cache)
    sync(device)
    prefill = time.perf_counter() - t0
    nbytes = _cache_bytes(cache, model.config)
    token = out.logits[:, -1:].argmax(-1)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        out = forward(token, cache)
        token = out.logits[:, -1:].argmax(-1)
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"prefill": prefill, "step": statistics.median(times), "bytes": nbytes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="an offline model name or llama2-7b-random")
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--chunk-size", type=int, default=None, help="prefill chunk (default: each preset's)")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--configs", nargs="*", default=["streamkv-4", "kivi-4"])
    ap.add_argument("--no-quanto", action="store_true", help="leave out the hf-quanto-4 row")
    ap.add_argument("--window", type=int, default=None,
                    help="tokens per window of the blockwise history attention (default: the library's)")
    ap.add_argument("--dense", action="store_true", help="add a <config>/dense row per config")
    ap.add_argument("--codes", action="store_true", help="add a <config>/codes row per config (Triton)")
    ap.add_argument("--bandwidth-gbs", type=float, default=4800.0, help="device memory bandwidth (CUDA floor)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from speed import build_model  # benchmarks/speed.py: the same models

    from streamkv.layers import LayerContext

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    model = build_model(args.model, device, dtype)
    weights = sum(p.nbytes for p in model.parameters())
    window = args.window if args.window is not None else LayerContext.attention_window
    rows = ["dynamic", "none", *args.configs]
    if args.dense:
        rows += [f"{c}/dense" for c in ["none", *args.configs]]
    if args.codes:
        rows += [f"{c}/codes" for c in args.configs]
    if not args.no_quanto:
        try:
            _hf_quanto(model.config)
            rows.append("hf-quanto-4")
        except Exception as exc:  # noqa: BLE001 - reported, the row is left out
            print(f"hf-quanto-4 left out: {exc}")
    where = torch.cuda.get_device_name() if device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"{args.model} on {where}, {dtype}, {args.steps} decode steps, median of {args.repeats} "
          f"interleaved repeats; history windows of {window} tokens")
    floor_head = f" {'floor ms':>9}" if device == "cuda" else ""
    print(f"{'prompt':>7} {'row':<18} {'ms/token':>9} {'x dynamic':>10} {'prefill s':>10} {'cache MB':>9}{floor_head}")
    for n in args.lengths:
        torch.manual_seed(n)
        ids = torch.randint(0, model.config.vocab_size, (1, n), device=device)
        got: dict[str, list[dict]] = {r: [] for r in rows}
        for _ in range(args.repeats):
            for r in rows:
                got[r].append(run_row(model, ids, r, args.steps, window, args.chunk_size))
        base = statistics.median(x["step"] for x in got["dynamic"])
        for r in rows:
            step = statistics.median(x["step"] for x in got[r])
            prefill = statistics.median(x["prefill"] for x in got[r])
            nbytes = got[r][0]["bytes"]
            mb = f"{nbytes / 1e6:9.2f}" if nbytes is not None else f"{'-':>9}"
            floor = ""
            if device == "cuda":
                floor = f" {1000 * (weights + nbytes) / (args.bandwidth_gbs * 1e9):9.2f}" if nbytes else f" {'-':>9}"
            print(f"{n:>7} {r:<18} {1000 * step:9.1f} {step / base:10.2f} {prefill:10.2f} {mb}{floor}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

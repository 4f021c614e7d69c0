"""WikiText-2 perplexity and measured compression for every method, on the same windows.

    python benchmarks/quality.py --windows 4 --csv results/quality.csv
    python benchmarks/quality.py --protocol strict      # KVQuant's protocol (see README)

Rows: no compression, INT8, naive INT4 per token, KIVI-4/2, the rotated peers (TurboQuant-style
at 2/2.5/3/3.5/4 bits and its QJL variant at 4/3/2, QuaRot-style at 4/3), and ours at 4/3/2 bits with and without
sink/outlier protection (`--ablation` adds range mode, statistics and value groups).
Perplexity deltas are relative to the no-compression row of the same run.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamkv import Method, preset  # noqa: E402
from streamkv.loading import load_model  # noqa: E402
from workers.perplexity import WindowResult, load_text, perplexity, token_windows, window_nll  # noqa: E402


def rows(ablation: bool) -> dict[str, Method]:
    out = {name: preset(name) for name in ("none", "int8", "int4_token", "kivi-4", "kivi-2")}
    for name in ("turboquant-4", "turboquant-3.5", "turboquant-3", "turboquant-2.5", "turboquant-2",
                 "turboquant-4-qjl", "turboquant-3-qjl", "turboquant-2-qjl", "quarot-4", "quarot-3"):
        out[name] = preset(name)
    for bits in (4, 3, 2):
        out[f"streamkv-{bits}"] = preset(f"streamkv-{bits}")
        out[f"streamkv-{bits} no sink/outlier"] = preset(
            f"streamkv-{bits}", sink_protection=False, outlier_detection=False)
    if ablation:
        # The 16-bit tail (full_precision_tail=1: the newest whole chunk waits in 16 bits, so the
        # strict protocol's chunk attends to itself unquantized, as KIVI's 128-token residual
        # does); with 128-token chunks the tail costs a quarter of the bits of 512-token ones.
        for bits in (4, 3, 2):
            out[f"streamkv-{bits} tail: newest chunk 16-bit"] = preset(f"streamkv-{bits}", full_precision_tail=1)
            out[f"streamkv-{bits} chunk 128 + tail"] = preset(f"streamkv-{bits}", chunk_size=128,
                                                               full_precision_tail=1)
            out[f"streamkv-{bits} chunk 128"] = preset(f"streamkv-{bits}", chunk_size=128)
        for label, change in [("range_mode=clip", dict(range_mode="clip")),
                              ("statistics=chunk", dict(statistics="chunk")),
                              ("value_quant_groups=0", dict(value_quant_groups=0)),
                              ("value_quant_groups=1", dict(value_quant_groups=1)),
                              ("value_quant_groups=4", dict(value_quant_groups=4)),
                              ("post-RoPE keys", dict(pre_rope_keys=False)),
                              ("no sink", dict(sink_protection=False)),
                              ("no outliers", dict(outlier_detection=False))]:
            for bits in (4, 3):
                out[f"streamkv-{bits} {label}"] = preset(f"streamkv-{bits}", **change)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--text", default=None, help="raw text file (default: the repo's WikiText-2 test)")
    ap.add_argument("--context-length", type=int, default=2048)
    ap.add_argument("--windows", type=int, default=4, help="first N windows (same for every row)")
    ap.add_argument("--chunk-size", type=int, default=None, help="override every row's chunk_size")
    ap.add_argument("--protocol", choices=("streaming", "strict"), default="streaming")
    ap.add_argument("--ablation", action="store_true")
    ap.add_argument("--only", nargs="*", help="row names to run (default: all)")
    ap.add_argument("--csv", default="results/quality.csv")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    loaded = load_model(args.model)
    ids = loaded.tokenizer(load_text(args.text), return_tensors="pt").input_ids[0]
    windows = token_windows(ids, args.context_length)[: args.windows]
    print(f"{loaded.model_id}: {len(windows)} windows x {args.context_length} tokens, "
          f"protocol={args.protocol}", flush=True)
    table = []
    for name, cfg in rows(args.ablation).items():
        if args.only and name not in args.only:
            continue
        changes = {"quantize_current_chunk": args.protocol == "strict"}
        if args.chunk_size:
            changes["chunk_size"] = args.chunk_size
        method = cfg.replace(**changes)
        start = time.perf_counter()
        results = []
        for i, w in enumerate(windows):
            nll, _ = window_nll(loaded.model, w, compression_config=method)
            results.append(WindowResult(i, w.numel() - 1, nll))
        st = loaded.model.get_compression_stats()  # of the last window
        table.append(dict(row=name, config_id=cfg.config_id, perplexity=perplexity(results),
                          avg_key_bits=st.avg_key_bits, avg_value_bits=st.avg_value_bits,
                          avg_bits=st.avg_bits, compression_ratio=st.compression_ratio,
                          outlier_ratio=st.outlier_ratio, seconds=time.perf_counter() - start))
        print(_fmt(table[-1], table[0]["perplexity"]), flush=True)
    out = Path(args.csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]) + ["delta_pct"])
        writer.writeheader()
        for r in table:
            writer.writerow({**r, "delta_pct": 100 * (r["perplexity"] / table[0]["perplexity"] - 1)})
    print(f"wrote {out}")
    return 0


def _fmt(r: dict, base_ppl: float) -> str:
    delta = 100 * (r["perplexity"] / base_ppl - 1)
    return (f"{r['row']:<38} ppl {r['perplexity']:8.4f} ({delta:+6.2f}%)  K {r['avg_key_bits']:5.2f}b  "
            f"V {r['avg_value_bits']:5.2f}b  ratio {r['compression_ratio']:5.2f}x  "
            f"outliers {100 * r['outlier_ratio']:5.2f}%  {r['seconds']:6.1f}s")


if __name__ == "__main__":
    raise SystemExit(main())

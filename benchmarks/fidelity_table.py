"""Perplexity, KL, top-1 agreement and measured compression of every method, through the
workers' unit runner, on the same WikiText-2 windows (one model load for all rows).

    python benchmarks/fidelity_table.py --windows 2 --context-length 2048 --csv results/fidelity.csv

KL and top-1 are measured against the uncompressed cache (`none`, same chunk size) on the same
windows; deltas are relative to the `none` row of the same run.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamkv import preset  # noqa: E402
from workers.actor import UnitWorker  # noqa: E402
from workers.hf_baselines import available_hf_baselines  # noqa: E402
from workers.units import PERPLEXITY_TASK, WorkUnit  # noqa: E402

ROWS = ["none", "int8", "int4_token", "kivi-4", "kivi-2", "hf-quanto-4", "hf-quanto-2",
        "streamkv-4", "streamkv-3", "streamkv-2",
        "streamkv-4 no sink/outlier", "streamkv-3 no sink/outlier", "streamkv-2 no sink/outlier"]


def row_config(name: str):
    if name.startswith("hf-"):
        return preset(name, chunk_size=512)
    base, _, variant = name.partition(" ")
    if variant == "no sink/outlier":
        return preset(base, sink_protection=False, outlier_detection=False)
    return preset(base)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--context-length", type=int, default=2048)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--csv", default="results/fidelity.csv")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    worker = UnitWorker(args.model)
    hf = available_hf_baselines()
    table = []
    for name in ROWS:
        if args.only and name not in args.only:
            continue
        if name.startswith("hf-") and not hf[name].available:
            print(f"{name:<30} skipped: {hf[name].reason}", flush=True)
            continue
        unit = WorkUnit(model=args.model, config=row_config(name), task=PERPLEXITY_TASK, shard="0/1",
                        limit=args.windows, context_length=args.context_length, sweep_id="fidelity-table")
        r = worker.run(unit)
        row = dict(row=name, config_id=r.key.config_id, perplexity=r.metrics.get("perplexity"),
                   kl=r.metrics.get("kl"), top1_agreement=r.metrics.get("top1_agreement"),
                   avg_key_bits=r.avg_key_bits, avg_value_bits=r.avg_value_bits,
                   compression_ratio=r.compression_ratio, outlier_ratio=r.outlier_ratio)
        table.append(row)
        base = table[0]["perplexity"]
        print(f"{name:<30} ppl {row['perplexity']:8.4f} ({100 * (row['perplexity'] / base - 1):+6.2f}%)  "
              f"KL {row['kl']:.5f}  top-1 {row['top1_agreement']:.4f}  "
              f"K {_f(row['avg_key_bits'])}b V {_f(row['avg_value_bits'])}b  "
              f"ratio {_f(row['compression_ratio'])}x  outliers {_f(100 * (row['outlier_ratio'] or 0))}%",
              flush=True)
    out = Path(args.csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    print(f"wrote {out}")
    return 0


def _f(x) -> str:
    return "-" if x is None else f"{x:.2f}"


if __name__ == "__main__":
    raise SystemExit(main())

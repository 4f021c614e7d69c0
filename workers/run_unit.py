"""Run one work unit from the command line and print its rows.

    python -m workers.run_unit --model smollm2-135m --task passage_retrieval_synth \\
        --config configs/default.yaml --shard 0/4 --limit 2 --context-length 400

Config files (YAML, `workers.units.load_config_file`; `configs/default.yaml` is the streamkv-4
preset), one of:
- a named preset plus optional setting changes:
      preset: streamkv-3          # `streamkv.preset_names()`: none, int8, kivi-4, hf-quanto-4, ...
      chunk_size: 256
- a method and its settings (missing ones take their defaults):
      method: kivi                # `streamkv.method_names()`
      key_bits: 2
- streamkv's own settings alone (no `preset:` or `method:` key).
An unknown or out-of-range setting is an error naming it. `--preset NAME` instead of
`--config` uses a preset directly.

Output: the unit key, the summary (metrics, compression, timings, environment) and one line per
sample; `--json PATH` also writes the whole result (trace tables as row counts).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from workers.units import TASK_NAMES, WorkUnit, config_from_mapping, load_config_file


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.4e}"
    return str(value)


def _clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_result(result) -> str:
    """The readable table `main` prints."""
    key = result.key
    lines = [(f"unit     {key.sweep_id} | {key.model_id} | {result.method} (config {key.config_id}) | "
              f"{key.task} | shard {key.shard}"),
             f"samples  {result.n_samples}"]
    metrics = "  ".join(f"{k}={_fmt(v)}" for k, v in sorted(result.metrics.items()))
    lines.append(f"metrics  {metrics or '-'}")
    comp = [("avg_key_bits", result.avg_key_bits), ("avg_value_bits", result.avg_value_bits),
            ("kv_bytes", result.kv_bytes), ("fp16_kv_bytes", result.fp16_kv_bytes),
            ("ratio", result.compression_ratio), ("outlier_ratio", result.outlier_ratio)]
    lines.append("cache    " + "  ".join(f"{k}={_fmt(v)}" for k, v in comp))
    env = result.environment
    timing = [("prefill_tok/s", result.prefill_tokens_per_s), ("decode_tok/s", result.decode_tokens_per_s),
              ("peak_memory_bytes", result.peak_memory_bytes)]
    lines.append("timing   " + "  ".join(f"{k}={_fmt(v)}" for k, v in timing)
                 + f"  ({env.get('peak_memory', '')})")
    lines.append(f"env      model_id={env.get('model_id')} device={result.device} git={str(env.get('git_commit'))[:12]} "
                 f"dataset_sha256={str(env.get('dataset_sha256'))[:12]} seed={env.get('seed')}")
    lines.append("traces   " + "  ".join(f"{k}: {t.num_rows} rows" for k, t in sorted(result.traces.items())))
    if result.samples:
        header = f"{'sample_id':<26} {'score':>6} {'prompt':>6} {'kl':>8} {'top1':>5}  prediction | answers"
        lines += ["", header, "-" * len(header)]
        for row in result.samples:
            extra = row.extra or {}
            pred = row.prediction if row.prediction else f"ppl={_fmt(extra.get('perplexity'))}"
            lines.append(f"{_clip(row.sample_id, 26):<26} {_fmt(row.score):>6} {row.prompt_tokens:>6} "
                         f"{_fmt(extra.get('kl')):>8} {_fmt(extra.get('top1_agreement')):>5}  "
                         f"{_clip(pred, 40)} | {_clip(' / '.join(row.answers), 30) or '-'}")
    return "\n".join(lines)


def result_json(result) -> dict[str, Any]:
    data = asdict(result)
    data["traces"] = {k: t.num_rows for k, t in result.traces.items()}
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", required=True, help=f"one of: {', '.join(TASK_NAMES)}")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--config", default=None, help="YAML config file (default configs/default.yaml)")
    group.add_argument("--preset", default=None, help="a named preset instead of a config file")
    ap.add_argument("--shard", default="0/1")
    ap.add_argument("--limit", type=int, default=None, help="samples (windows) per shard")
    ap.add_argument("--source", default=None, help="LongBench file/folder/hf:// id, or a text file")
    ap.add_argument("--context-length", type=int, default=2048,
                    help="perplexity window tokens / synthetic context words / RULER tokens")
    ap.add_argument("--depth", type=int, default=None, help="RULER single-needle NIAH: needle depth (percent)")
    ap.add_argument("--difficulty", default=None, help="LongBench v2: only the easy | hard samples")
    ap.add_argument("--length", default=None, help="LongBench v2: only the short | medium | long samples")
    ap.add_argument("--max-length", type=int, default=3500, help="prompt tokens (middle truncation)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sweep-id", default="local")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default=None, help="cpu | cuda | auto (default)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", default=None, help="also write the result as JSON here")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = ap.parse_args(argv)

    try:
        if args.preset:
            config = config_from_mapping({"preset": args.preset})
        else:
            from workers.environment import REPO_ROOT

            config = load_config_file(args.config or REPO_ROOT / "configs" / "default.yaml")
        unit = WorkUnit(model=args.model, config=config, task=args.task, shard=args.shard, source=args.source,
                        limit=args.limit, max_length=args.max_length, context_length=args.context_length,
                        depth=args.depth, difficulty=args.difficulty, length_class=args.length,
                        seed=args.seed, sweep_id=args.sweep_id)
    except (ValueError, FileNotFoundError) as err:
        ap.error(str(err))

    from workers.actor import UnitWorker

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    worker = UnitWorker(args.model, dtype=args.dtype, device=args.device)
    progress = None if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    result = worker.run(unit, progress=progress)
    print(format_result(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result_json(result), handle, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Configuration search vs a grid sweep over the same fields, at the same measured-bits budget.

    python benchmarks/tune_vs_grid.py [sweeps/tune_smollm2.yaml] [--out benchmarks/results/tune_vs_grid]

1. `streamkv tune SPEC` (in this process: `cluster.tune.run_search`), its choice checked on the
   held-apart shards.
2. The grid: the cartesian product of the same fields, each layer at the same bits (a
   per-layer or per-head field `layer_X_bits` / `head_X_bits` becomes `X_bits_normal` over the
   same bit widths; a choice
   keeps its values; a range gives its two ends and the base's value when it lies inside),
   every point on the same search shards,
   through the same model actors and the same store (sweep id `<search id>-grid`); its best
   point within the budget (same rule: `store.searches.best_trial`) is then evaluated on
   the same held-apart shards.
3. Prints a Markdown table (measured bits, KL and perplexity on search and held-apart shards,
   for both and for the uncompressed model) and writes it, the raw figures (JSON) and an SVG
   of the chosen configuration's bits per layer under --out.

Nothing is hard-coded: every figure is read back from the store.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cluster.tune_spec import ModelShape, SearchSpec  # noqa: E402


def grid_configs(spec: SearchSpec) -> list:
    """The grid over the search's fields, uniform across layers."""
    axes: dict[str, list] = {}
    for d in spec.space:
        if d.allocation:  # per layer or per head: the same bits on every layer and head
            axes[f"{d.kv_kind}_bits_normal"] = list(d.values)
        elif d.kind == "choice":
            axes[d.field] = list(d.values)
        else:  # a range: its two ends, and the base's value when inside (the default a grid starts from)
            low, high = d.values
            base = spec.base.get(d.field)
            axes[d.field] = sorted({low, high} | ({base} if base is not None and low <= base <= high else set()))
    configs = []
    for values in itertools.product(*axes.values()):
        try:
            configs.append(spec.method(**{**spec.base, **dict(zip(axes, values))}))
        except ValueError:  # a combination the method refuses (e.g. normal bits above the sink bits)
            continue
    return list({c.config_id: c for c in configs}.values())


def svg_layer_bits(config: dict, title: str) -> str:
    """A small heat strip: one cell per layer, one row per kind (per KV head for a per-head
    allocation: `store.searches.bit_allocation`), darker = fewer bits."""
    from store.searches import bit_allocation

    colors = {2: "#440154", 3: "#3b528b", 4: "#21918c", 8: "#5ec962", 16: "#fde725"}
    cell, left, top = 18, 70, 30
    rows, allocation = [], bit_allocation(config)
    for r, (label, bits) in enumerate(allocation):
        rows.append(f'<text x="4" y="{top + r * cell + 13}" font-size="12">{label}</text>')
        for i, b in enumerate(bits):
            rows.append(f'<rect x="{left + i * cell}" y="{top + r * cell}" width="{cell - 1}" height="{cell - 1}" '
                        f'fill="{colors.get(b, "#999")}"><title>{label}, layer {i}: {b} bits</title></rect>'
                        f'<text x="{left + i * cell + 5}" y="{top + r * cell + 13}" font-size="10" '
                        f'fill="white">{b}</text>')
    n = max([len(bits) for _, bits in allocation] + [1])
    height_rows = max(len(allocation), 1)
    width, height = left + n * cell + 10, top + height_rows * cell + 30
    axis = "".join(f'<text x="{left + i * cell + 3}" y="{top + height_rows * cell + 14}" font-size="9">{i}</text>'
                   for i in range(0, n, 5))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
            f'<text x="4" y="16" font-size="13">{title}</text>{"".join(rows)}{axis}'
            f'<text x="{left}" y="{height - 4}" font-size="10">layer</text></svg>\n')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", nargs="?", default=str(REPO / "sweeps" / "tune_smollm2.yaml"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "tune_vs_grid"))
    parser.add_argument("--db", help="results database URL (overrides store.url)")
    parser.add_argument("--blobs")
    parser.add_argument("--storage")
    args = parser.parse_args(argv)

    import ray

    from cluster.driver import connect_ray
    from cluster.tune import evaluate, report, resolve, run_search, start_actors, stored_trials
    from store.searches import best_trial
    from cluster.tune_spec import load_search_spec
    from cluster.tune_trials import TrialContext
    from store.paths import absolute_store
    from streamkv.methods import method_from_dict

    spec = resolve(load_search_spec(args.spec), argparse.Namespace(db=args.db, blobs=args.blobs, storage=args.storage,
                                                                    search_id=None, num_actors=None))
    url, blob_root = absolute_store(spec.store.resolved_url, spec.store.resolved_blobs)
    connect_ray(None, verbose=False)
    try:
        outcome = run_search(spec)
        report(spec, outcome, url)
        grid_id = f"{outcome.search_id}-grid"
        workers, dispatcher = start_actors(spec, verbose=False)
        ctx = TrialContext(spec=spec, search_id=grid_id, shape=ModelShape(0, 0), store_url=url, blob_root=blob_root,
                           dispatcher=dispatcher)
        configs = grid_configs(spec)
        print(f"grid: {len(configs)} points on the search shards", flush=True)
        evaluate(spec, ctx, configs, spec.data.search_shards, grid_id)
        grid = stored_trials(spec, url, grid_id)
        grid_best = best_trial(grid, spec.objective, spec.max_avg_bits, spec.max_cache_bytes)
        if grid_best is not None:
            evaluate(spec, ctx, [method_from_dict(grid_best.config)], spec.data.holdout_shards, grid_id)
            grid_best = next(t for t in stored_trials(spec, url, grid_id) if t.config_id == grid_best.config_id)
    finally:
        ray.shutdown()
    rows = [("search (Optuna TPE + ASHA)", outcome.best), ("grid, best within budget", grid_best),
            ("uncompressed (none)", outcome.baseline)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["| configuration | config_id | measured bits (search) | KL search | KL held-apart | "
             "perplexity held-apart | measured bits held-apart |", "|---|---|---|---|---|---|---|"]

    def f(v, p=4):
        return "n/a" if v is None else f"{v:.{p}g}"

    raw = {"search_id": outcome.search_id, "grid_id": grid_id, "grid_points": len(configs),
           "trials": outcome.trials, "budget_bits": spec.max_avg_bits}
    for label, t in rows:
        if t is None:
            lines.append(f"| {label} | none within budget | | | | | |")
            continue
        h = t.holdout
        lines.append(f"| {label} | `{t.config_id}` | {f(t.search.avg_bits)} | {f(t.search.kl)} | "
                     f"{f(h.kl if h else None)} | {f(h.perplexity if h else None)} | {f(h.avg_bits if h else None)} |")
        raw[label] = {"config_id": t.config_id, "config": t.config, "search": t.search.__dict__,
                      "holdout": h.__dict__ if h else None}
    table = "\n".join(lines)
    print("\n" + table)
    (out / "table.md").write_text(table + "\n")
    (out / "figures.json").write_text(json.dumps(raw, indent=1, default=str))
    if outcome.best is not None:
        (out / "best_layer_bits.svg").write_text(svg_layer_bits(
            outcome.best.config, f"bits per layer of {outcome.best.config_id} (search best)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Per-layer trace tables of a unit, built from `CompressionStats.per_layer`.

Two pyarrow tables (the keys of `UnitResult.traces`):

- "outlier_channels": one row per outlier channel of every sample's cache at the end of the
  sample (prompt + generation, or the perplexity window), with columns
  sample_id (string), layer (int32), kind ("key" | "value"), head (int32, KV head),
  channel (int32, index within the head), statistic (float64, the channel's running
  statistic, or the calibrated one), head_median and head_max (float64, over the head's
  channels; the outlier rule compares the statistic with relative x head_median).
- "layer_summary": one row per sample, layer and kind, with columns sample_id, layer, kind,
  heads (int32), head_dim (int32), outlier_channels (int32, total over heads), max_head_outliers (int32),
  head_median_mean (float64, mean over heads), head_max (float64, max over heads),
  sink_tokens (int32, tokens kept at the sink bits in this layer), tokens (int32, cache length).

Methods without channel statistics (none, int8, int4_token, kivi, HF baselines) give both
tables with their schema and no rows.
"""

from __future__ import annotations

import pyarrow as pa

from streamkv.compression_stats import CompressionStats

OUTLIER_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("layer", pa.int32()), ("kind", pa.string()), ("head", pa.int32()),
    ("channel", pa.int32()), ("statistic", pa.float64()), ("head_median", pa.float64()),
    ("head_max", pa.float64()),
])
SUMMARY_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("layer", pa.int32()), ("kind", pa.string()), ("heads", pa.int32()),
    ("head_dim", pa.int32()), ("outlier_channels", pa.int32()), ("max_head_outliers", pa.int32()),
    ("head_median_mean", pa.float64()), ("head_max", pa.float64()), ("sink_tokens", pa.int32()),
    ("tokens", pa.int32()),
])
OUTLIER_COLUMNS: tuple[str, ...] = tuple(OUTLIER_SCHEMA.names)
SUMMARY_COLUMNS: tuple[str, ...] = tuple(SUMMARY_SCHEMA.names)
TRACE_KINDS: tuple[str, ...] = ("outlier_channels", "layer_summary")


class TraceCollector:
    """Accumulates the per-layer rows of each sample's cache; `tables()` at the end."""

    def __init__(self) -> None:
        self._outliers: dict[str, list] = {name: [] for name in OUTLIER_COLUMNS}
        self._summary: dict[str, list] = {name: [] for name in SUMMARY_COLUMNS}

    def add(self, sample_id: str, stats: CompressionStats) -> None:
        groups: dict[tuple[int, str], list[dict]] = {}
        for row in stats.per_layer:
            groups.setdefault((int(row["layer"]), str(row["kind"])), []).append(row)
            for channel, value in zip(row["outlier_channels"], row["outlier_stats"]):
                for name, item in (("sample_id", sample_id), ("layer", row["layer"]), ("kind", row["kind"]),
                                   ("head", row["head"]), ("channel", channel), ("statistic", value),
                                   ("head_median", row["head_median"]), ("head_max", row["head_max"])):
                    self._outliers[name].append(item)
        for (layer, kind), rows in sorted(groups.items()):
            counts = [len(r["outlier_channels"]) for r in rows]
            values = {
                "sample_id": sample_id, "layer": layer, "kind": kind, "heads": len(rows),
                "head_dim": rows[0]["head_dim"],
                "outlier_channels": sum(counts), "max_head_outliers": max(counts),
                "head_median_mean": sum(r["head_median"] for r in rows) / len(rows),
                "head_max": max(r["head_max"] for r in rows),
                "sink_tokens": stats.sink_tokens, "tokens": stats.tokens,
            }
            for name, item in values.items():
                self._summary[name].append(item)

    def tables(self) -> dict[str, pa.Table]:
        return {"outlier_channels": pa.Table.from_pydict(self._outliers, schema=OUTLIER_SCHEMA),
                "layer_summary": pa.Table.from_pydict(self._summary, schema=SUMMARY_SCHEMA)}


def empty_tables() -> dict[str, pa.Table]:
    return TraceCollector().tables()


__all__ = ["OUTLIER_COLUMNS", "OUTLIER_SCHEMA", "SUMMARY_COLUMNS", "SUMMARY_SCHEMA", "TRACE_KINDS",
           "TraceCollector", "empty_tables"]

"""Plain dataclasses that form the store's public interface.

Callers (workers, cluster, dashboard, CLI) only ever see these; ORM rows stay inside `store`.
Datetimes returned by the store are timezone-aware UTC; naive datetimes passed in are taken
to be UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import pyarrow as pa

UnitStatus = Literal["pending", "running", "done", "failed", "skipped"]
UNIT_STATUSES: tuple[str, ...] = ("pending", "running", "done", "failed", "skipped")

SweepStatus = Literal["running", "done", "failed", "cancelled"]
SWEEP_STATUSES: tuple[str, ...] = ("running", "done", "failed", "cancelled")


@dataclass(frozen=True, order=True)
class UnitKey:
    """Identifies one unit of work: a shard of one task, for one model and config, in a sweep."""

    sweep_id: str
    model_id: str
    config_id: str
    task: str
    shard: str  # "i/n", e.g. "0/4"


@dataclass
class SampleRow:
    """One evaluated sample of a unit."""

    sample_id: str
    prediction: str
    answers: list[str]
    score: float | None
    prompt_tokens: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class UnitResult:
    """Everything a worker produced for one unit; written atomically by `write_unit_result`."""

    key: UnitKey
    # {"method", "chunk_size", "quantize_current_chunk", ...the method's own fields}: plain JSON
    # values; key.config_id must be streamkv.hashing.content_id(config).
    config: dict[str, Any]
    method: str
    metrics: dict[str, float]  # "score", "perplexity", "kl", "top1_agreement", ...
    n_samples: int
    avg_key_bits: float | None = None
    avg_value_bits: float | None = None
    kv_bytes: int | None = None
    fp16_kv_bytes: int | None = None
    compression_ratio: float | None = None
    outlier_ratio: float | None = None
    prefill_tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None
    peak_memory_bytes: int | None = None
    # model_id, weights_sha256, dataset_sha256, git_commit, library versions, seed, device
    environment: dict[str, Any] = field(default_factory=dict)
    samples: list[SampleRow] = field(default_factory=list)
    traces: dict[str, pa.Table] = field(default_factory=dict)  # kind -> table
    worker: str = ""
    device: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True)
class BlobRef:
    """A Parquet blob: `uri` is relative to the BlobStore root (`<kind>/<sha[:2]>/<sha>.parquet`)."""

    kind: str
    uri: str
    sha256: str
    bytes: int
    row_count: int
    schema_json: str


@dataclass
class SweepRecord:
    sweep_id: str
    name: str
    spec: dict[str, Any]
    created_by: str | None
    created_at: datetime
    status: str
    finished_at: datetime | None = None


@dataclass
class UnitRecord:
    key: UnitKey
    status: str
    attempts: int
    worker: str | None = None
    device: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    claimed_by: str | None = None  # the driver of the latest claimed attempt
    lease_until: datetime | None = None  # while running: until when that claim holds


@dataclass(frozen=True)
class Claim:
    """What `store.claim_unit` did: `claimed` (this driver now runs the unit), or why not.

    Not claimed: `status` is the unit's current one (running: `holder` is the other driver
    whose lease is live; done / failed / skipped: it was finished, here or by another driver).
    """

    key: UnitKey
    claimed: bool
    status: str  # the unit's status after the call (running when claimed)
    holder: str | None  # the driver that holds the unit (this one when claimed)
    attempts: int  # the unit's attempt count after the call
    took_over_from: str | None = None  # claimed from this driver, whose lease had passed

"""streamkv results store: SQL database (SQLite or PostgreSQL) plus Parquet blobs.

    engine = create_store_engine("sqlite:///results/streamkv.db")   # migrates on first use
    blobs = BlobStore("results/blobs")
    register_sweep(engine, ...); claim_unit(engine, key, driver_id, worker=..., device=...)
    write_unit_result(engine, blobs, r)

Reads for the dashboard and CLI live in `store.queries` (imports pandas; not loaded here).
"""

from .blobs import (
    BlobCorruptedError,
    BlobError,
    BlobNotFoundError,
    BlobStore,
    UnsafeBlobPathError,
)
from .db import (
    DEFAULT_URL,
    ReadOnlyQueryError,
    SchemaVersionError,
    StoreConnectionError,
    StoreError,
    create_store_engine,
    ensure_schema,
    read_connection,
    readonly_engine,
    run_readonly_query,
    session_scope,
    upgrade,
)
from .entities import (
    UNIT_STATUSES,
    BlobRef,
    Claim,
    SampleRow,
    SweepRecord,
    UnitKey,
    UnitRecord,
    UnitResult,
)
from .repository import (
    DEFAULT_LEASE_S,
    UnknownSweepError,
    UnknownUnitError,
    claim_unit,
    completed_units,
    finish_sweep,
    mark_failed,
    mark_running,
    live_claims,
    mark_skipped,
    register_sweep,
    renew_leases,
    sweep_progress,
    write_unit_result,
)

__all__ = [
    "DEFAULT_LEASE_S", "DEFAULT_URL", "UNIT_STATUSES", "BlobCorruptedError", "BlobError",
    "BlobNotFoundError", "BlobRef", "BlobStore", "Claim", "claim_unit", "live_claims",
    "renew_leases", "ReadOnlyQueryError", "SampleRow", "SchemaVersionError",
    "StoreConnectionError", "StoreError", "SweepRecord", "UnitKey", "UnitRecord", "UnitResult",
    "UnknownSweepError", "UnknownUnitError", "UnsafeBlobPathError", "completed_units",
    "create_store_engine", "ensure_schema", "finish_sweep", "mark_failed", "mark_running",
    "mark_skipped", "read_connection", "readonly_engine", "register_sweep", "run_readonly_query",
    "session_scope", "sweep_progress", "upgrade", "write_unit_result",
]

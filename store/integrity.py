"""Checks that every blob the database references is intact, and the one repair there is.

`check_blobs` verifies each row of `blobs` against its file (exists, not a symlink, size,
sha256, readable Parquet with the row count). A blob cannot be rebuilt from the database, so
`repair_blobs` makes the store honest instead: the unit's bad blob rows are deleted, a done
unit goes back to pending with the reason in `error` (so rerunning its sweep recomputes it and
`write_unit_result` replaces its rows), and the bad file is removed. `streamkv db check` is
the command line of both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Engine

from .blobs import BlobError, BlobRef, BlobStore
from .db import read_connection, session_scope
from .entities import UnitKey
from .repository import KEY_COLUMNS, blobs_t, units_t


@dataclass(frozen=True)
class BlobProblem:
    """One referenced blob that is not intact."""

    key: UnitKey
    unit_status: str
    kind: str
    uri: str
    problem: str  # what is wrong, in words ("missing", "has 10 bytes, expected 2040 ...")


@dataclass
class BlobRepair:
    units_reset: int = 0  # done units put back to pending
    rows_deleted: int = 0  # blob rows that referenced a bad file
    files_removed: int = 0
    not_done: list[str] = field(default_factory=list)  # what could not be repaired, in words
    sweeps: list[str] = field(default_factory=list)  # sweeps to rerun


def check_blobs(engine: Engine, blobs: BlobStore) -> tuple[int, list[BlobProblem]]:
    """(how many blob rows were checked, the problems), in unit order. Each file is read once,
    however many units reference it."""
    cols = [*(units_t.c[n] for n in KEY_COLUMNS), units_t.c.status, blobs_t.c.kind,
            blobs_t.c.uri, blobs_t.c.sha256, blobs_t.c.bytes, blobs_t.c.row_count,
            blobs_t.c.schema_json]
    with read_connection(engine) as conn:
        rows = conn.execute(select(*cols).join(units_t, units_t.c.unit_id == blobs_t.c.unit_id)
                            .order_by(units_t.c.unit_id, blobs_t.c.kind)).all()
    verdicts: dict[BlobRef, str | None] = {}
    problems = []
    for row in rows:
        ref = BlobRef(row.kind, row.uri, row.sha256, int(row.bytes), int(row.row_count),
                      row.schema_json)
        if ref not in verdicts:
            verdicts[ref] = blobs.verify(ref)
        if verdicts[ref] is not None:
            key = UnitKey(*(getattr(row, n) for n in KEY_COLUMNS))
            problems.append(BlobProblem(key, row.status, row.kind, row.uri, verdicts[ref]))
    return len(rows), problems


def repair_blobs(engine: Engine, blobs: BlobStore, problems: list[BlobProblem]) -> BlobRepair:
    """Deletes the rows of the bad blobs, puts their done units back to pending and removes the
    bad files. Run it while no sweep writes to this store: a result written meanwhile with the
    same content could lose its file (a rerun writes it again)."""
    repair = BlobRepair()
    with session_scope(engine) as s:
        for p in problems:
            unit_id = s.scalar(select(units_t.c.unit_id).where(
                *(units_t.c[n] == getattr(p.key, n) for n in KEY_COLUMNS)))
            res = s.execute(delete(blobs_t).where(blobs_t.c.unit_id == unit_id,
                                                  blobs_t.c.kind == p.kind))
            repair.rows_deleted += res.rowcount  # type: ignore[attr-defined]
            reason = (f"blob {p.kind!r} {p.uri} {p.problem}; put back to pending by "
                      "`streamkv db check --repair` so that a rerun recomputes it")
            res = s.execute(update(units_t).where(units_t.c.unit_id == unit_id,
                                                  units_t.c.status == "done")
                            .values(status="pending", error=reason, lease_until=None))
            repair.units_reset += res.rowcount  # type: ignore[attr-defined]
    for uri in dict.fromkeys(p.uri for p in problems if p.problem != "missing"):
        try:
            repair.files_removed += blobs.remove(uri)
        except (BlobError, OSError) as exc:
            repair.not_done.append(f"could not remove {uri}: {exc}")
    repair.sweeps = sorted({p.key.sweep_id for p in problems})
    return repair

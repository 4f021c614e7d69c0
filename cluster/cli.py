"""`streamkv` command line.

    streamkv db upgrade [--db URL]                 apply the store's migrations
    streamkv db query "SELECT ..." [--db URL] [--max-rows N] [--max-bytes N]
                                                   read-only SQL, printed as a table (at most
                                                   10,000 rows and 10 MB unless raised)
    streamkv db check [--db URL] [--blobs URI] [--repair]
                                                   verify every referenced blob file; exit 1
                                                   when one is missing or damaged (--repair:
                                                   put its units back to pending for a rerun)
    streamkv dashboard [--db URL] [--blobs URI]    the Streamlit dashboard on 127.0.0.1
    streamkv sweep SPEC [--address ADDR] [--db URL] [--blobs URI] [--verbose]
                                                   run a sweep on Ray; prints a progress bar, a
                                                   line per unit and a results table (--verbose:
                                                   third-party warnings and bars too)
    streamkv tune SPEC [--address ADDR] [--db URL] [--blobs URI] [--storage DIR]
                                                   configuration search on Ray Tune (Optuna TPE,
                                                   ASHA); resumes when rerun; ends with the
                                                   held-apart check and a YAML block

The database URL defaults to $STREAMKV_DB, then sqlite:///results/streamkv.db; the blob
root to $STREAMKV_BLOBS, then results/blobs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import TextIO

from store.db import DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS, DEFAULT_URL


def _db_url(args: argparse.Namespace) -> str:
    return args.db or os.environ.get("STREAMKV_DB") or DEFAULT_URL


def _blobs_root(args: argparse.Namespace) -> str:
    return args.blobs or os.environ.get("STREAMKV_BLOBS") or "results/blobs"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def table_lines(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> Iterator[str]:
    """The lines of a plain fixed-width table; floats with 4 significant decimals."""
    def cell(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))

    body = [[cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in body]) for i, c in enumerate(columns)]
    yield "  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()
    yield "  ".join("-" * w for w in widths)
    for r in body:
        # rstrip: a wide last column does not pad every other row to its width
        yield "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()


def format_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    return "\n".join(table_lines(columns, rows))


def write_bounded(lines: Iterable[str], max_bytes: int, out: TextIO) -> bool:
    """Writes `lines` to `out` up to `max_bytes` bytes (UTF-8) in all; True when it cut them.
    Padding to a wide column can make the table much larger than its values."""
    used = 0
    for line in lines:
        data = (line + "\n").encode()
        if used + len(data) > max_bytes:
            out.write(data[:max(0, max_bytes - used - 1)].decode(errors="ignore") + "\n")
            return True
        out.write(data.decode())
        used += len(data)
    return False


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from store.db import upgrade

    upgrade(_db_url(args))
    print(f"store at {_db_url(args)} is at the latest schema revision")
    return 0


def cmd_db_query(args: argparse.Namespace) -> int:
    from store.db import bounded_query

    result = bounded_query(_db_url(args), args.sql, max_rows=args.max_rows,
                           max_bytes=args.max_bytes)
    cut = result.cut
    if write_bounded(table_lines(result.columns, result.rows), args.max_bytes, sys.stdout):
        cut = f"the table's text passed {args.max_bytes} bytes"
    n = len(result.rows)
    print(f"({n} row{'s' if n != 1 else ''}; limit {args.max_rows} rows, {args.max_bytes} bytes)")
    if cut:
        print(f"streamkv db query: output cut: {cut}; raise --max-rows / --max-bytes to see "
              "more", file=sys.stderr)
    return 0


def cmd_db_check(args: argparse.Namespace) -> int:
    from store import BlobStore, create_store_engine, readonly_engine
    from store.integrity import check_blobs, repair_blobs

    url, root = _db_url(args), _blobs_root(args)
    blobs = BlobStore(root, create=False)
    if blobs.is_local and not os.path.isdir(blobs.root):
        raise FileNotFoundError(f"the blob root {blobs.root} (--blobs {root}) does not exist")
    engine = create_store_engine(url) if args.repair else readonly_engine(url, pooled=False)
    try:
        checked, problems = check_blobs(engine, blobs)
        for p in problems:
            k = p.key
            print(f"unit {k.sweep_id} {k.model_id} {k.config_id} {k.task} {k.shard} "
                  f"({p.unit_status}): blob {p.kind} {p.uri}: {p.problem}")
        units = len({p.key for p in problems})
        print(f"checked {checked} blob reference(s) under {blobs.root}: {len(problems)} "
              f"problem(s) in {units} unit(s)")
        if not problems:
            return 0
        if not args.repair:
            print("A blob cannot be rebuilt from the database. `streamkv db check --repair` "
                  "removes the bad files and puts their done units back to pending, so that "
                  "rerunning their sweep recomputes them.", file=sys.stderr)
            return 1
        repair = repair_blobs(engine, blobs, problems)
    finally:
        engine.dispose()
    print(f"repaired: {repair.rows_deleted} blob row(s) deleted, {repair.files_removed} bad "
          f"file(s) removed, {repair.units_reset} unit(s) back to pending; rerun sweep(s) "
          f"{', '.join(repair.sweeps)} to recompute them")
    for line in repair.not_done:
        print(f"streamkv db check: {line}", file=sys.stderr)
    return 1 if repair.not_done else 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from dashboard.launch import launch

    return launch(_db_url(args), args.blobs, port=args.port, host=args.host) or 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from cluster.sweep import run_from_args

    return run_from_args(args)


def cmd_tune(args: argparse.Namespace) -> int:
    from cluster.tune import run_from_args

    return run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamkv", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="the results store")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="apply migrations (also done automatically on first use)")
    up.add_argument("--db", help="SQLAlchemy URL (default $STREAMKV_DB or sqlite:///results/streamkv.db)")
    up.set_defaults(func=cmd_db_upgrade)
    query = db_sub.add_parser("query", help="run one read-only SQL statement")
    query.add_argument("sql")
    query.add_argument("--db")
    query.add_argument("--max-rows", "--limit", dest="max_rows", type=_positive,
                       default=DEFAULT_MAX_ROWS,
                       help=f"rows printed at most (default {DEFAULT_MAX_ROWS:,})")
    query.add_argument("--max-bytes", type=_positive, default=DEFAULT_MAX_BYTES,
                       help=f"bytes of output at most (default {DEFAULT_MAX_BYTES:,})")
    query.set_defaults(func=cmd_db_query)
    check = db_sub.add_parser("check", help="verify every blob the database references")
    check.add_argument("--db")
    check.add_argument("--blobs", help="blob root (default $STREAMKV_BLOBS or results/blobs)")
    check.add_argument("--repair", action="store_true",
                       help="remove bad blob files and put their units back to pending")
    check.set_defaults(func=cmd_db_check)

    dash = sub.add_parser("dashboard", help="open the Streamlit dashboard (loopback only by default)")
    dash.add_argument("--db")
    dash.add_argument("--blobs", default=os.environ.get("STREAMKV_BLOBS", "results/blobs"))
    dash.add_argument("--port", type=int, default=8501)
    dash.add_argument("--host", default="127.0.0.1")
    dash.set_defaults(func=cmd_dashboard)

    from cluster.sweep import __doc__ as sweep_doc
    from cluster.sweep import add_arguments

    sweep = sub.add_parser("sweep", help="run a sweep spec on Ray (local, or a cluster with --address)",
                           description=sweep_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(sweep)
    sweep.set_defaults(func=cmd_sweep)

    from cluster.tune import __doc__ as tune_doc
    from cluster.tune import add_arguments as add_tune_arguments

    tune = sub.add_parser("tune", help="search the best config within a measured-bits budget (Ray Tune)",
                          description=tune_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tune_arguments(tune)
    tune.set_defaults(func=cmd_tune)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as err:  # a clear one-line error for users, not a traceback
        from store import StoreError

        if isinstance(err, (StoreError, ValueError, FileNotFoundError)):
            print(f"streamkv: error: {err}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())

"""`streamkv` command line.

    streamkv db upgrade [--db URL]                 apply the store's migrations
    streamkv db query "SELECT ..." [--db URL]      read-only SQL, printed as a table
    streamkv dashboard [--db URL] [--blobs URI]    the Streamlit dashboard on 127.0.0.1
    streamkv sweep SPEC [--address ADDR] [--db URL] [--blobs URI] [--verbose]
                                                   run a sweep on Ray; prints a progress bar, a
                                                   line per unit and a results table (--verbose:
                                                   third-party warnings and bars too)

The database URL defaults to $STREAMKV_DB, then sqlite:///results/streamkv.db.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from store.db import DEFAULT_URL


def _db_url(args: argparse.Namespace) -> str:
    return args.db or os.environ.get("STREAMKV_DB") or DEFAULT_URL


def format_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Plain fixed-width table; floats with 4 significant decimals."""
    def cell(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))

    body = [[cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in body]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in body]
    return "\n".join(lines)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from store.db import upgrade

    upgrade(_db_url(args))
    print(f"store at {_db_url(args)} is at the latest schema revision")
    return 0


def cmd_db_query(args: argparse.Namespace) -> int:
    from store.db import run_readonly_query

    columns, rows = run_readonly_query(_db_url(args), args.sql, limit=args.limit)
    print(format_table(columns, rows))
    print(f"({len(rows)} row{'s' if len(rows) != 1 else ''}; limit {args.limit})")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from dashboard.launch import launch

    return launch(_db_url(args), args.blobs, port=args.port, host=args.host) or 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from cluster.sweep import run_from_args

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
    query.add_argument("--limit", type=int, default=1000)
    query.set_defaults(func=cmd_db_query)

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

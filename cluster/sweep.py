"""`python -m cluster.sweep SPEC`: run a sweep spec (the `ray job submit` entrypoint).

    python -m cluster.sweep sweeps/smoke.yaml [--address HOST:6379] [--db URL] [--blobs URI]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m cluster.sweep sweeps/tiny.yaml --db sqlite:////tmp/streamkv.db

Without --address (and without $RAY_ADDRESS, which `ray job submit` sets) Ray starts inside
this process. With the default local store (SQLite, a blob folder) the run happens in a private
network namespace where `lo` is the only interface, so every Ray listener is on loopback
(`cluster/isolation.py`; `--no-isolate` to opt out; where namespaces are not permitted it runs
without and says so). The spec is validated completely before anything runs or any database is
created: its own fields (`cluster.spec`, every problem with its path), the number of units it
plans (`--max-units`), and what it names (`cluster.checks.preflight`: each model's config, not
its weights, against every config's model-dependent settings; each data file, read and
validated once; the store's URL).

Output: one progress bar (units done/total, ETA, failures), one line per finished unit above it
(done / skipped / retry / FAILED with the first line of the error), then a table of the results
(one row per config: each task's score or perplexity, KL, compression ratio) and where they are
stored. Third-party warnings, library logging below ERROR and progress bars (weight conversion,
downloads), in this process and in the Ray actors, and Ray's own start-up warnings are hidden
unless --verbose; errors always show.

Exit status: 0 all units done or skipped, 1 some units failed, 2 invalid spec, unreachable
store/cluster, or a store that kept refusing writes during the run (one line names it; the
units not stored run again on the rerun), 130 interrupted by Ctrl-C (SIGINT), 143 by SIGTERM.
On SIGINT or SIGTERM the units in flight go back to pending, the sweep is marked cancelled,
Ray is shut down with all its processes, and one line says so; the same command resumes.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .spec import SweepSpec

DEFAULT_SPEC = "sweeps/smoke.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="?", default=DEFAULT_SPEC,
                        help=f"sweep spec YAML (default {DEFAULT_SPEC})")
    parser.add_argument("--address", help="Ray cluster (GCS host:port or 'auto'); default: $RAY_ADDRESS, "
                                          "else a local Ray on 127.0.0.1")
    parser.add_argument("--db", help="results database URL (overrides the spec's store.url)")
    parser.add_argument("--blobs", help="blob root, a folder or s3://bucket/prefix (overrides store.blobs)")
    parser.add_argument("--sweep-id", help="resume/name this sweep id (default: <name>-<spec hash>)")
    parser.add_argument("--num-actors", type=int, help="actors per model (overrides resources.num_actors)")
    parser.add_argument("--max-attempts", type=int, help="attempts per unit (overrides max_attempts)")
    parser.add_argument("--limit", type=int, help="cap the samples per shard of every dataset")
    parser.add_argument("--max-units", type=int, default=None,
                        help="refuse a spec that plans more units than this (default 100000), before any write")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the plan; run nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true",
                        help="also show third-party output, hidden by default: Python warnings, "
                             "transformers/datasets/Ray logging below ERROR, weight-conversion and "
                             "download progress bars, in this process and in the Ray actors")
    parser.add_argument("--no-isolate", action="store_true",
                        help="local run: do not use a private network namespace for Ray")


def to_argv(args: argparse.Namespace) -> list[str]:
    """The command line of `python -m cluster.sweep` that these parsed arguments came from."""
    argv = [args.spec]
    for flag in ("address", "db", "blobs", "sweep_id", "num_actors", "max_attempts", "limit", "max_units"):
        value = getattr(args, flag)
        if value is not None:
            argv += [f"--{flag.replace('_', '-')}", str(value)]
    return argv + [f"--{flag.replace('_', '-')}" for flag in ("no_progress", "verbose") if getattr(args, flag)]


def run_from_args(args: argparse.Namespace) -> int:
    """The command; SIGINT and SIGTERM end it with one line and 130 / 143 (`cluster.interrupts`)."""
    from . import interrupts

    with interrupts.handling():
        try:
            return _run(args)
        except interrupts.SweepCancelled as err:  # the sweep's own cleanup ran: it says what it did
            print(f"\nstreamkv sweep: {err}", file=sys.stderr, flush=True)
            return interrupts.exit_code(err.signum)
        except KeyboardInterrupt:  # before the sweep was registered, or after it ended
            signum = interrupts.received() or signal.SIGINT
            print(f"\nstreamkv sweep: interrupted ({interrupts.signal_name(signum)}); "
                  "run the same command to resume", file=sys.stderr, flush=True)
            return interrupts.exit_code(signum)


def _run(args: argparse.Namespace) -> int:
    from . import isolation

    if isolation.inside():  # first: if the process outside is gone already, stop now
        isolation.enter_as_child()
    if not args.verbose:  # before the driver's import, which imports transformers and torch
        from .progress import hide_third_party_output

        hide_third_party_output()
    from .checks import preflight
    from .plan import plan
    from .spec import MAX_UNITS, SpecError, apply_overrides, check_size, load_spec

    try:
        spec = apply_overrides(load_spec(args.spec), db=args.db, blobs=args.blobs, sweep_id=args.sweep_id,
                               num_actors=args.num_actors, max_attempts=args.max_attempts,
                               limit=args.limit)
        check_size(spec, args.max_units or MAX_UNITS)
        if not isolation.inside():  # the outer run (before the namespace) has checked already
            preflight(spec)
    except (SpecError, FileNotFoundError) as err:
        print(f"streamkv sweep: invalid spec, nothing was run.\n{err}", file=sys.stderr)
        return 2
    if args.dry_run:
        units = plan(spec)
        print(f"sweep {spec.resolved_sweep_id}: {len(units)} units "
              f"({len(spec.models)} model(s) x {len(spec.configs)} config(s) x {len(spec.datasets)} task(s) x shards)")
        for unit in units:
            print(f"  {unit.model}  {unit.key.config_id}  {unit.method:<12} {unit.key.task:<26} {unit.shard}")
        return 0
    if not args.no_isolate and isolation.wanted(args.address, spec.store.resolved_url,
                                                str(spec.store.resolved_blobs)):
        if isolation.available():
            print("streamkv sweep: local run in a private network namespace (only loopback): "
                  "Ray's listeners are reachable from this run only", flush=True)
            return isolation.rerun_inside(to_argv(args))
        print("streamkv sweep: cannot create a network namespace here (unshare -rn); Ray's internal "
              "ports listen on all interfaces, protected by its token authentication", file=sys.stderr)
    if isolation.inside():
        print(f"streamkv sweep: network interfaces in this run: {', '.join(isolation.interfaces())}",
              flush=True)
    return _run_spec(spec, args)


def _run_spec(spec: SweepSpec, args: argparse.Namespace) -> int:
    # Imported here: the process outside the namespace never needs the driver (nor torch).
    from store import BlobError, StoreError

    from .driver import ClusterConnectionError, StoreWriteError, report, run_sweep, sweep_results

    try:
        summary = run_sweep(spec, address=args.address, progress=not args.no_progress, verbose=args.verbose)
        table = sweep_results(spec, summary.sweep_id)
    except StoreWriteError as err:  # one line: what failed, where, what to do
        print(f"\nstreamkv sweep: {err}", file=sys.stderr, flush=True)
        return 2
    except StoreError as err:
        print(f"streamkv sweep: the results store is not usable: {err}\n"
              "Check --db / store.url (for PostgreSQL: is the server up and reachable from here, "
              "`pip install -e .[postgres]`?), or use the default SQLite file.", file=sys.stderr)
        return 2
    except ClusterConnectionError as err:
        print(f"streamkv sweep: {err}", file=sys.stderr)
        return 2
    except BlobError as err:  # e.g. a relative blob root outside the working directory
        print(f"streamkv sweep: the blob store is not usable: {err}", file=sys.stderr)
        return 2
    print(f"\nresults of {summary.sweep_id} (from the store, over all its stored units):\n{table}")
    report(summary)
    return 1 if summary.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

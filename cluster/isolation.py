"""Run a local sweep in a private network namespace, so every Ray listener is on loopback.

Ray 2.60 opens its internal gRPC services (GCS, raylet, workers, agents) on all interfaces even
when told the node address is 127.0.0.1. In a fresh network namespace (`unshare -rn`: an
unprivileged user + network namespace) the only interface is `lo`, so whatever Ray opens is
reachable from this machine's processes in that namespace only. A local sweep needs no network
beyond that: the default store is a SQLite file and blobs a local folder, and the model and data
come from the installed packages and the repository. Runs against a Ray cluster, a PostgreSQL
server or object storage are not isolated (they need the network).

Signals: the driver runs in the child process (`unshare` and `sh` exec into it, so it keeps
the child's pid). This parent forwards SIGINT and SIGTERM to it and waits for it to clean up
(units back to pending, the sweep cancelled, Ray shut down), then exits with its status. The
driver sets the parent-death signal SIGTERM for itself, first thing
(`cluster.interrupts.die_with_parent`, given this process's pid in $STREAMKV_PARENT_PID, so a
parent that died before that is noticed too): if this parent is killed, even by SIGKILL, the
driver stops as on SIGTERM instead of running on beside the next run. It is not set in a
`preexec_fn` of the child instead: this process has threads by then (torch is imported for the
spec's check), and Python code between fork and exec may then deadlock; the driver's own call
covers the whole life of the driver, which is what matters.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence

from . import interrupts

MARKER = "STREAMKV_NETNS"  # set inside the namespace: do not re-enter it
PARENT = "STREAMKV_PARENT_PID"  # the pid of the process outside, whose death ends the run


def inside() -> bool:
    return os.environ.get(MARKER) == "1"


def interfaces() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex())


def wanted(address: str | None, db_url: str, blob_root: str) -> bool:
    """Only a local run whose store and blobs are local files can live without a network."""
    if address or os.environ.get("RAY_ADDRESS") or inside():
        return False
    return db_url.startswith("sqlite:") and "://" not in blob_root


def available() -> bool:
    """Whether this machine lets us create a user + network namespace (a quick probe)."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    probe = subprocess.run(["unshare", "-rn", "ip", "link", "set", "lo", "up"],
                           capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


def rerun_inside(argv: Sequence[str]) -> int:
    """Runs `python -m cluster.sweep ARGV` in a new network namespace with only `lo` up;
    returns its exit status (128 + N when a signal N ended it)."""
    env = {**os.environ, MARKER: "1", PARENT: str(os.getpid())}
    cmd = ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$0" "$@"',
           sys.executable, "-m", "cluster.sweep", *argv]
    child = subprocess.Popen(cmd, env=env)

    def forward(signum: int, _frame: object) -> None:
        # A Ctrl-C in a terminal reaches the child too; the driver ignores the second copy.
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in interrupts.SIGNALS}
    try:
        rc = child.wait()  # no timeout: the driver's cleanup is bounded; PEP 475 retries on signals
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if rc < 0:
        print(f"streamkv sweep: the run in the network namespace ended by {interrupts.signal_name(-rc)}",
              file=sys.stderr)
        return interrupts.exit_code(-rc)
    return rc


def enter_as_child() -> None:
    """Inside the namespace, first thing: end with the parent (see the module docstring)."""
    parent = os.environ.get(PARENT, "")
    if inside() and parent.isdigit():
        interrupts.die_with_parent(int(parent))

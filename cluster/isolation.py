"""Run a local sweep in a private network namespace, so every Ray listener is on loopback.

Ray 2.60 opens its internal gRPC services (GCS, raylet, workers, agents) on all interfaces even
when told the node address is 127.0.0.1. In a fresh network namespace (`unshare -rn`: an
unprivileged user + network namespace) the only interface is `lo`, so whatever Ray opens is
reachable from this machine's processes in that namespace only. A local sweep needs no network
beyond that: the default store is a SQLite file and blobs a local folder, and the model and data
come from the installed packages and the repository. Runs against a Ray cluster, a PostgreSQL
server or object storage are not isolated (they need the network).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence

MARKER = "STREAMKV_NETNS"  # set inside the namespace: do not re-enter it


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
    """Runs `python -m cluster.sweep ARGV` in a new network namespace with only `lo` up."""
    env = {**os.environ, MARKER: "1"}
    cmd = ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$0" "$@"',
           sys.executable, "-m", "cluster.sweep", *argv]
    return subprocess.run(cmd, env=env, check=False).returncode

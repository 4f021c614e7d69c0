"""SIGINT (Ctrl-C) and SIGTERM during a sweep: both stop the driver the same way.

`handling()` installs one handler for both signals (main thread only; nestable; the previous
handlers come back afterwards). The first signal raises `Interrupted`, a KeyboardInterrupt, so
every `except KeyboardInterrupt` treats SIGTERM like Ctrl-C; later signals are ignored: the
driver is already stopping, and a Ctrl-C in a terminal reaches the namespace's parent and the
driver both (the parent forwards it too), so one key press may arrive twice.

Bookkeeping must not be cut in half (a unit marked running but not yet known to be in flight,
a result written but not yet counted), so the driver runs its loop `deferred()`: a signal is
only noted there, and raised where the loop waits (`interruptible()`, around `ray.wait` and a
model's loading) or when the deferred block ends. Ray's blocking calls poll the signal handlers
and turn what they raise into a plain KeyboardInterrupt: `received()` still says which signal.

`die_with_parent()`: the Linux parent-death signal (prctl PR_SET_PDEATHSIG), so a driver whose
parent is killed (the user's process of a namespaced run, even by SIGKILL) gets SIGTERM.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; `signum` says which."""

    def __init__(self, signum: int):
        super().__init__(signal_name(signum))
        self.signum = signum


class SweepCancelled(Interrupted):
    """What `run_sweep` raises when a signal stopped it, after its cleanup; `str()` is the line
    the command prints."""

    def __init__(self, signum: int, message: str):
        super().__init__(signum)
        self.message = message

    def __str__(self) -> str:
        return self.message


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_code(signum: int) -> int:
    """The shell's convention for "ended by signal N": 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signum


@dataclass
class _State:
    depth: int = 0  # nested `handling()` blocks
    previous: dict[int, Any] = field(default_factory=dict)
    received: int | None = None  # the first signal of this run
    pending: bool = False  # received while deferred, not raised yet
    deferring: int = 0


_state = _State()


def _handler(signum: int, _frame: Any) -> None:
    if _state.received is not None:
        return  # already stopping (a repeated or forwarded signal): let the cleanup finish
    _state.received = signum
    if _state.deferring:
        _state.pending = True
        return
    raise Interrupted(signum)


@contextmanager
def handling() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` inside the block (a no-op off the main thread,
    where Python cannot set handlers, and in an inner block)."""
    if _state.depth or threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.received, _state.pending, _state.deferring = None, False, 0  # a fresh run
    _state.previous = {sig: signal.signal(sig, _handler) for sig in SIGNALS}
    _state.depth = 1
    try:
        yield
    finally:
        for sig, previous in _state.previous.items():
            signal.signal(sig, previous)
        _state.depth = 0


def active() -> bool:
    """Whether `handling()` is in force (in this thread's process, main thread)."""
    return bool(_state.depth)


def rearm() -> None:
    """Puts the handler back after a library replaced it: `ray.init` sets a Python SIGTERM
    handler that exits at once, and Ray's C++ core installs its own at the C level (it prints
    a stack trace, and the process later aborts) where Python's `getsignal` cannot see it; so
    both signals are set again, whatever `getsignal` says."""
    if _state.depth and threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, _handler)


def received() -> int | None:
    """The signal that stopped (or is stopping) this run, if any."""
    return _state.received


def _raise_pending() -> None:
    if _state.pending and not _state.deferring:
        _state.pending = False
        raise Interrupted(_state.received or signal.SIGINT)


@contextmanager
def deferred() -> Iterator[None]:
    """A signal inside the block is raised when the block ends (or at an `interruptible()`)."""
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1
    _raise_pending()


@contextmanager
def interruptible() -> Iterator[None]:
    """Inside a `deferred()` block: a wait that a signal may cut short."""
    saved, _state.deferring = _state.deferring, 0
    try:
        _raise_pending()
        yield
    finally:
        _state.deferring = saved


def set_parent_death_signal(signum: int = signal.SIGTERM) -> bool:
    """Asks Linux to send `signum` to this process when its parent exits (kept across exec).
    False where there is no prctl (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> bool:
    """`set_parent_death_signal`, and `signum` now if the parent `parent_pid` already exited
    (before the call, the death signal had nobody to watch)."""
    armed = set_parent_death_signal(signum)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signum)
    return armed


__all__ = ["Interrupted", "SweepCancelled", "active", "deferred", "die_with_parent", "exit_code", "handling", "interruptible",
           "rearm", "received", "set_parent_death_signal", "signal_name"]

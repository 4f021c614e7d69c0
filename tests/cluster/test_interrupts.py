"""Without Ray: how the driver takes SIGINT and SIGTERM (`cluster.interrupts`): the first
raises, later ones are ignored, a deferred one waits for the next wait or the block's end. The
same on a whole run, in subprocesses: tests/cluster/test_faults_interrupt.py."""

from __future__ import annotations

import os
import signal
import time

import pytest

from cluster import interrupts


def _signal_self(signum: int) -> None:
    os.kill(os.getpid(), signum)
    for _ in range(1000):  # Python runs the handler between bytecodes, soon after the kill
        time.sleep(0.001)


def test_the_first_signal_raises_later_ones_are_ignored_and_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with interrupts.handling():
        with pytest.raises(interrupts.Interrupted) as info:
            _signal_self(signal.SIGTERM)
        assert isinstance(info.value, KeyboardInterrupt) and info.value.signum == signal.SIGTERM
        _signal_self(signal.SIGINT)  # the driver is already stopping: nothing raised
        assert interrupts.received() == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    assert (interrupts.exit_code(signal.SIGINT), interrupts.exit_code(signal.SIGTERM)) == (130, 143)


def test_a_deferred_signal_is_raised_at_the_next_wait_or_at_the_end():
    steps = []
    with interrupts.handling():
        with pytest.raises(interrupts.Interrupted), interrupts.deferred():
            _signal_self(signal.SIGINT)
            steps.append("bookkeeping finished")  # not cut short by the signal
            with interrupts.interruptible():
                steps.append("never: the wait raises at once")
    assert steps == ["bookkeeping finished"]
    with interrupts.handling():  # a new run forgets the last one's signal
        assert interrupts.received() is None
        with pytest.raises(interrupts.Interrupted), interrupts.deferred():
            _signal_self(signal.SIGTERM)
            steps.append("end of the block")
    assert steps[-1] == "end of the block"

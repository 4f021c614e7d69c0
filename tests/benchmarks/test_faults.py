"""benchmarks/faults.py's measurement: the scheduling overhead is an actor's idle time
between two of its units, restarts (long gaps) excluded, whatever the timestamp type."""

from datetime import datetime, timedelta

from tests.conftest import load_benchmark

faults = load_benchmark("faults")


def test_idle_gaps_per_actor_in_start_order():
    t0 = datetime(2026, 1, 1)

    def at(s: float) -> datetime:
        return t0 + timedelta(seconds=s)

    runs = [("a", at(1.0), at(1.5)), ("b", at(0.0), at(0.2)), ("a", at(0.0), at(0.9)),
            ("b", at(0.25).isoformat(), at(0.5).isoformat()),  # SQLite gives text
            ("a", at(20.0), at(20.1))]  # after a restart: excluded
    gaps = sorted(round(g, 6) for g in faults.idle_gaps(runs))
    assert gaps == [0.05, 0.1]

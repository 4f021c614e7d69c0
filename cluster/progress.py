"""Live progress of a sweep: a tqdm bar on stdout (terminal and `ray job logs` alike).

units done/total with ETA; the postfix counts failures, retries and units running. On a
terminal the bar redraws at most every second; in a job log (not a TTY) it prints a line at
most every `log_interval` seconds, and every finished unit prints one line of its own.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm


class SweepProgress:
    def __init__(self, total: int, already_done: int = 0, *, desc: str = "sweep",
                 file: TextIO | None = None, enabled: bool = True, log_interval: float = 15.0):
        self.file = file or sys.stdout
        tty = bool(getattr(self.file, "isatty", lambda: False)())
        self.counts = {"done": 0, "failed": 0, "skipped": 0, "retried": 0, "running": 0}
        self.enabled = enabled
        self.bar = tqdm(total=total, initial=already_done, desc=desc, unit="unit", file=self.file,
                        mininterval=1.0 if tty else log_interval, dynamic_ncols=tty,
                        disable=not enabled, smoothing=0.1)

    def _postfix(self) -> None:
        c = self.counts
        self.bar.set_postfix_str(f"failed={c['failed']} retried={c['retried']} running={c['running']}",
                                 refresh=False)

    def started(self) -> None:
        self.counts["running"] += 1
        self._postfix()

    def finished(self, status: str, line: str | None = None) -> None:
        """status: done | failed | skipped | retry (a failed attempt that will run again)."""
        self.counts["running"] = max(0, self.counts["running"] - 1)
        if status == "retry":
            self.counts["retried"] += 1
        else:
            self.counts[status] += 1
            self.bar.update(1)
        self._postfix()
        if line and self.enabled:
            self.bar.write(line, file=self.file)

    def note(self, line: str) -> None:
        if self.enabled:
            self.bar.write(line, file=self.file)

    def close(self) -> None:
        self.bar.refresh()
        self.bar.close()


def first_line(text: str) -> str:
    """The first line of an error text (its exception type and message), at most 300 chars."""
    lines = text.strip().splitlines()
    return lines[0][:300] if lines else ""


def unit_line(status: str, what: str, *, seconds: float = 0.0, attempt: int = 1, error: str = "") -> str:
    """The line printed for one finished attempt; status: done | skipped | retry | failed."""
    if status == "done":
        return f"done    {what} {seconds:.1f}s"
    if status == "skipped":
        return f"skipped {what}: {first_line(error)}"
    if status == "retry":
        return f"retry   {what} (attempt {attempt} failed: {first_line(error)})"
    return f"FAILED  {what} after {attempt} attempt(s): {first_line(error)}"


__all__ = ["SweepProgress", "first_line", "unit_line"]

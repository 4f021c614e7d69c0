"""Live progress of a sweep: a tqdm bar on stdout (terminal and `ray job logs` alike).

units done/total with ETA; the postfix counts failures, retries and units running. On a
terminal the bar redraws at most every second; in a job log (not a TTY) it prints a line at
most every `log_interval` seconds, and every finished unit prints one line of its own.

`results_table`: one row per config, one column per task, plus KL and compression ratio, from
the sweep's rows of `v_unit_results` (`store.queries.result_frame`).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, TextIO

from tqdm import tqdm

if TYPE_CHECKING:
    import pandas as pd


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


# --- the results table -------------------------------------------------------------------------
LABEL_WIDTH = 28  # longer config labels (grid points of several axes) wrap at their commas
COLUMN_WIDTH = (8, 10)  # a column's least and most width from its header; "_"/"-" wrap names
TABLE_LEGEND = ("task cells: the score (higher is better), or the perplexity (lower is better)\n"
                "kl: KL divergence to the uncompressed model; ratio: fp16 / stored KV bytes (unit means)")


def results_table(units: pd.DataFrame, labels: Mapping[str, str], tasks: Sequence[str] = ()) -> str:
    """The table printed at the end of a sweep, from its rows of `v_unit_results` (one per
    unit: model_id, config_id, method, task, n_samples, score, perplexity, kl, compression_ratio).

    One row per (model, config), labelled from `labels` (config_id -> label, else the method)
    and in its order; one column per task (those of `tasks` first, in that order): the score,
    or the perplexity where no shard has a score, over the shards weighted by n_samples (as
    `v_task_scores` does); then kl and ratio, the plain mean over the config's units.
    """
    if units.empty:
        return "results: no unit of this sweep has a stored result yet"
    present = list(dict.fromkeys(units["task"]))
    task_order = [t for t in tasks if t in present] + sorted(t for t in present if t not in tasks)
    rank = {config_id: i for i, config_id in enumerate(labels)}
    keys = sorted(set(zip(units["model_id"], units["config_id"])),
                  key=lambda k: (k[0], rank.get(k[1], len(rank)), k[1]))
    several_models = len({model for model, _ in keys}) > 1
    rows = []
    for model, config_id in keys:
        group = units[(units["model_id"] == model) & (units["config_id"] == config_id)]
        label = labels.get(config_id) or str(group["method"].iloc[0])
        cells = [_number(_task_value(group[group["task"] == task])) for task in task_order]
        cells += [_number(_mean(group["kl"])), _ratio(_mean(group["compression_ratio"]))]
        rows.append((f"{model}: {label}" if several_models else label, cells))
    return _render(["config", *task_order, "kl", "ratio"], rows) + "\n" + TABLE_LEGEND


def _task_value(rows: pd.DataFrame) -> float | None:
    """The score weighted by n_samples over the shards; the perplexity where none has a score."""
    for column in ("score", "perplexity"):
        valid = rows[rows[column].notna()]
        weights = valid["n_samples"].astype("float64")
        if weights.sum() > 0:
            return float((valid[column] * weights).sum() / weights.sum())
    return None


def _mean(values: pd.Series) -> float | None:
    valid = values.dropna()
    return float(valid.mean()) if not valid.empty else None


def _number(value: float | None) -> str:
    """At most 8 characters, for scores in [0, 1] or [0, 100], KL near 0, perplexities of 1e4."""
    if value is None or math.isnan(value):
        return "-"
    size = abs(value)
    if 0 < size < 1e-3:
        return f"{value:.1e}"
    if size >= 1e5:
        return f"{value:.2e}"
    return f"{value:.1f}" if size >= 100 else f"{value:.3f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}x"


def _wrap(text: str, width: int, breaks: str) -> list[str]:
    """`text` in lines of at most `width`, broken after a character of `breaks` where possible."""
    lines, line = [], ""
    for part in re.split(f"(?<=[{re.escape(breaks)}])", text):
        if line and len(line) + len(part) > width:
            lines.append(line)
            line = ""
        line += part
        while len(line) > width:  # a part longer than a line: cut it
            lines.append(line[:width])
            line = line[width:]
    return lines + [line] if line or not lines else lines


def _render(columns: Sequence[str], rows: Sequence[tuple[str, list[str]]]) -> str:
    """A fixed-width table of (label, cells) rows: labels wrap at commas (continuation lines
    indented), headers at "_"/"-" over as many lines as the longest needs."""
    label_width = min(LABEL_WIDTH, max(len(label) for label, _ in rows))
    label_width = max(label_width, len(columns[0]))
    lo, hi = COLUMN_WIDTH
    widths = [max(lo, min(hi, max(map(len, re.split(r"(?<=[_-])", name)))),
                  *(len(cells[i]) for _, cells in rows))
              for i, name in enumerate(columns[1:])]
    headers = [_wrap(columns[0], label_width, ",")] + [_wrap(c, w, "_-") for c, w in zip(columns[1:], widths)]
    lines = []
    for i in range(max(map(len, headers))):
        parts = [(h[i] if i < len(h) else "").ljust(w) for h, w in zip(headers, [label_width, *widths])]
        lines.append("  ".join(parts).rstrip())
    lines.append("  ".join("-" * w for w in [label_width, *widths]))
    for label, cells in rows:
        first, *rest = _wrap(label, label_width, ",") if len(label) <= label_width else \
            _wrap(label, label_width - 2, ",")
        lines.append("  ".join([first.ljust(label_width), *(c.rjust(w) for c, w in zip(cells, widths))]))
        lines += ["  " + line for line in rest]
    return "\n".join(lines)


__all__ = ["SweepProgress", "first_line", "results_table", "unit_line"]

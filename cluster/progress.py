"""What a sweep run shows: a progress bar, one line per finished unit, a results table at the end.

`SweepProgress`: units done/total with ETA, the postfix counts failures, retries and units
running. On a terminal tqdm redraws the bar in place (at most every second) and unit lines are
printed above it. In a job log (`ray job logs`, a pipe: not a TTY) a redraw would only pile up
carriage returns on one line, so there every line is written whole: each finished unit's, and
the bar's own line at the first finished unit, then at most every `log_interval` seconds, and
at the end.

`results_table`: one row per config, one column per task, plus KL and compression ratio, from
the sweep's rows of `v_unit_results` (`store.queries.result_frame`).

`hide_third_party_output` / `quiet_env`: Python warnings, library logging below ERROR and
third-party progress bars (transformers' GGUF conversion, the HF hub's downloads) are hidden
unless `--verbose`; in the driver process by the former, in the Ray actors (separate processes,
whose libraries read these settings at import) by starting them with the latter.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, TextIO

from tqdm import tqdm

if TYPE_CHECKING:
    import pandas as pd


class _Nowhere:
    """Where tqdm draws when its redraws are not wanted (the bar's line is printed whole)."""

    encoding = "utf-8"

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class SweepProgress:
    def __init__(self, total: int, already_done: int = 0, *, desc: str = "sweep",
                 file: TextIO | None = None, enabled: bool = True, log_interval: float = 15.0):
        self.file = file or sys.stdout
        self.tty = bool(getattr(self.file, "isatty", lambda: False)())
        self.counts = {"done": 0, "failed": 0, "skipped": 0, "retried": 0, "running": 0}
        self.enabled = enabled
        self.log_interval = log_interval
        self._logged_at: float | None = None  # when the bar's line was last written (not a TTY)
        self.bar = tqdm(total=total, initial=already_done, desc=desc, unit="unit",
                        file=self.file if self.tty else _Nowhere(), mininterval=1.0,
                        dynamic_ncols=self.tty, disable=not enabled, smoothing=0.1,
                        ascii=not _writes_unicode(self.file))

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
        if line:
            self.note(line)
        if not self.tty:
            self._log_bar(force=False)

    def skipped(self, n: int = 1) -> None:
        """`n` units that this run will not start (another driver runs or ran them)."""
        if n:
            self.counts["skipped"] += n
            self.bar.update(n)
            self._postfix()

    def note(self, line: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.bar.write(line, file=self.file)  # clears the bar, prints, redraws it below
        else:
            print(line, file=self.file, flush=True)

    def _log_bar(self, *, force: bool) -> None:
        now = time.monotonic()
        due = self._logged_at is None or now - self._logged_at >= self.log_interval
        if self.enabled and (force or due):
            print(str(self.bar), file=self.file, flush=True)
            self._logged_at = now

    def close(self) -> None:
        if not self.tty:
            self._log_bar(force=True)
        self.bar.refresh()
        self.bar.close()


def _writes_unicode(file: TextIO) -> bool:
    return "utf" in (getattr(file, "encoding", None) or "").lower()


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


# --- third-party output ------------------------------------------------------------------------
# Read by the libraries when they are imported (tqdm, the HF hub) or first configure their
# logging (transformers, datasets, accelerate), so a process must start with them.
QUIET_ENV: dict[str, str] = {
    "PYTHONWARNINGS": "ignore",  # our own code reports through logging and printed lines
    "TRANSFORMERS_VERBOSITY": "error",
    "DATASETS_VERBOSITY": "error",
    "ACCELERATE_LOG_LEVEL": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",  # bars drawn with tqdm itself, e.g. "Converting and de-quantizing GGUF tensors"
}
THIRD_PARTY_LOGGERS = ("transformers", "datasets", "accelerate", "huggingface_hub", "ray", "torch",
                       "filelock", "fsspec", "urllib3")


def quiet_env() -> dict[str, str]:
    """`QUIET_ENV`, except where this process's environment sets a variable: the user's choice."""
    return {name: os.environ.get(name, value) for name, value in QUIET_ENV.items()}


def hide_third_party_output() -> None:
    """In this (driver) process and the processes it starts: third-party warnings, logging
    below ERROR and progress bars. Errors still show; our own bar does too (it sets `disable`)."""
    os.environ.update(quiet_env())  # a local Ray's processes inherit it
    warnings.simplefilter("ignore")
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


__all__ = ["QUIET_ENV", "SweepProgress", "first_line", "hide_third_party_output", "quiet_env",
           "results_table", "unit_line"]

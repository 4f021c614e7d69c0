"""How a RULER / needle-in-a-haystack cell and a LongBench v2 split are named in the store's
`task` column.

A cell is (RULER task, context length[, needle depth]); its results are stored under
'ruler_vt@ctx4096' or 'ruler_niah_single_1@ctx4096@depth50'. A LongBench v2 unit restricted
to a difficulty and/or length class is stored under 'longbench_v2@hard', 'longbench_v2@short'
or 'longbench_v2@hard@short'. The names are part of the stored data, so they are defined here,
where both the workers that write them and the dashboard (which reads only the store) find them.
"""

from __future__ import annotations

import re

RULER_PREFIX = "ruler_"
_CELL = re.compile(r"^(?P<task>ruler_[a-z0-9_]+)@ctx(?P<ctx>\d+)(?:@depth(?P<depth>\d+))?$")


def cell_name(task: str, context_length: int, depth: int | None = None) -> str:
    """The name results of a cell are stored under."""
    return f"{task}@ctx{context_length}" + (f"@depth{depth}" if depth is not None else "")


def parse_cell(name: str) -> tuple[str, int, int | None] | None:
    """(task, context_length, depth) of a `cell_name`; None for any other task name."""
    match = _CELL.match(name)
    if not match:
        return None
    return match["task"], int(match["ctx"]), int(match["depth"]) if match["depth"] is not None else None


_V2_SPLIT = re.compile(r"^(?P<task>longbench_v2)(?:@(?P<difficulty>easy|hard))?(?:@(?P<length>short|medium|long))?$")


def v2_split_name(task: str, difficulty: str | None = None, length: str | None = None) -> str:
    """The name results of a LongBench v2 unit of one difficulty and/or length class are stored under."""
    return task + "".join(f"@{v}" for v in (difficulty, length) if v is not None)


def parse_v2_split(name: str) -> tuple[str, str | None, str | None] | None:
    """(task, difficulty, length) of a `v2_split_name`; None for any other task name."""
    match = _V2_SPLIT.match(name)
    return None if not match else (match["task"], match["difficulty"], match["length"])

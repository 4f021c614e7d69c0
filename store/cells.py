"""How a RULER / needle-in-a-haystack cell is named in the store's `task` column.

A cell is (RULER task, context length[, needle depth]); its results are stored under
'ruler_vt@ctx4096' or 'ruler_niah_single_1@ctx4096@depth50'. The name is part of the stored
data, so it is defined here, where both the workers that write it and the dashboard (which
reads only the store) find it.
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

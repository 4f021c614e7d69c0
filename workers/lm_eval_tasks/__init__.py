"""The repository's offline lm-eval tasks (the YAML and JSONL files of this folder), and
`task_names`: the task and group names that task YAMLs define, read without importing lm-eval
(a sweep spec checks its lm-eval task names with it before any work is scheduled).

The YAMLs here read hand-written rows from this folder, so they run with no hub access:
- streamkv_facts_mc: 16 multiple-choice facts (loglikelihood requests; acc, acc_norm);
- streamkv_copy_gen: 16 "repeat the word given earlier" prompts (generate_until; exact_match).
"""

from __future__ import annotations

import importlib.util
import re
from functools import lru_cache
from pathlib import Path

TASK_DIR = Path(__file__).resolve().parent
# A task YAML names its task on a line of its own ("task: name"); groups say "group: name".
_NAME_LINE = re.compile(r"^(task|group):[ \t]*['\"]?([A-Za-z0-9_.\-]+)['\"]?[ \t]*(?:#.*)?$", re.M)


def lm_eval_task_dir() -> Path | None:
    """lm-eval's own task folder, found without importing lm-eval (None: not installed)."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "tasks"
    return folder if folder.is_dir() else None


@lru_cache(maxsize=8)
def _names_in(folder: str) -> tuple[frozenset[str], frozenset[str]]:
    tasks: set[str] = set()
    groups: set[str] = set()
    for path in Path(folder).rglob("*.yaml"):
        for kind, name in _NAME_LINE.findall(path.read_text(encoding="utf-8", errors="replace")):
            (tasks if kind == "task" else groups).add(name)
    return frozenset(tasks), frozenset(groups - tasks)


def task_names(include_path: str | Path | None = None) -> tuple[frozenset[str], frozenset[str]]:
    """(task names, group names) of lm-eval's built-in tasks, ours and `include_path`'s."""
    folders = [f for f in (lm_eval_task_dir(), TASK_DIR, include_path) if f is not None]
    tasks: set[str] = set()
    groups: set[str] = set()
    for folder in folders:
        t, g = _names_in(str(Path(folder).resolve()))
        tasks |= t
        groups |= g
    return frozenset(tasks), frozenset(groups - tasks)


__all__ = ["TASK_DIR", "lm_eval_task_dir", "task_names"]

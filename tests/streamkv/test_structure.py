"""The shape of the library: no import circle inside streamkv/ (function-level imports
included), and no branch on a method's name outside the methods' own files."""

from __future__ import annotations

import ast
from pathlib import Path

from streamkv import method_names

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "streamkv"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def streamkv_imports(path: Path, modules: set[str]) -> set[str]:
    """Every streamkv module `path` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "streamkv":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
    # Importing a submodule runs its packages' __init__ first, except the packages the importer
    # is itself inside (their __init__ is what is importing it).
    me = module_name(path)
    inside = {".".join(me.split(".")[:i]) for i in range(1, len(me.split(".")) + 1)}
    with_parents = set()
    for name in found & modules:
        parts = name.split(".")
        with_parents |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
    return (with_parents & modules) - inside


def test_no_import_circle_inside_streamkv():
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    graph = {module_name(f): streamkv_imports(f, modules) for f in files}
    graph["streamkv"] = set()  # its exports are lazy (importlib by name), never an import edge

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return path + [nxt]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [c for c in (cycle_from(m) for m in sorted(graph)) if c]
    assert not cycles, cycles[0]


def _method_name_comparisons(path: Path, names: set[str]) -> list[str]:
    hits = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        for side in [node.left, *node.comparators]:
            values = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
            for v in values:
                if isinstance(v, ast.Constant) and v.value in names:
                    hits.append(f"{path.relative_to(REPO)}:{node.lineno} compares with {v.value!r}")
    return hits


def test_no_branch_on_a_method_name_outside_the_methods():
    # A method's own file may know its name; everything else asks the method object.
    own_files = set((PACKAGE / "methods").glob("*.py")) | {REPO / "workers" / "hf_baselines.py"}
    names = set(method_names())
    hits = []
    for top in ("streamkv", "workers", "cluster", "store", "dashboard"):
        for path in sorted((REPO / top).rglob("*.py")):
            if path not in own_files:
                hits += _method_name_comparisons(path, names)
    assert not hits, hits


def _top_level_imports(path: Path) -> set[str]:
    """The top-level packages `path` imports, at any depth of the file (function-level too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_dependencies_point_one_way():
    # streamkv imports none of the service's packages; the dashboard reads only the store.
    ours = {"streamkv", "workers", "cluster", "store", "dashboard"}
    allowed = {"streamkv": {"streamkv"}, "dashboard": {"dashboard", "store"}}
    wrong = [f"{path.relative_to(REPO)} imports {sorted(bad)}"
             for top, ok in allowed.items() for path in sorted((REPO / top).rglob("*.py"))
             if (bad := (_top_level_imports(path) & ours) - ok)]
    assert not wrong, wrong

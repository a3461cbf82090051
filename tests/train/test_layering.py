"""tnl's layers import downwards only, and no tnl module imports itself back (lazy imports inside functions count).

Read from the source (the AST), so a lazy import that no test happens to run is seen too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TNL = Path(__file__).resolve().parents[2] / "tnl"

# layer -> the layers it must not import (the layers above it, and its peers it must not depend on)
FORBIDDEN = {
    "tnl.train": ("tnl.eval", "tnl.export", "tnl.commands", "tnl.cli"),
    "tnl.eval": ("tnl.export", "tnl.train", "tnl.commands", "tnl.cli", "tnl.compare"),
    "tnl.generate": ("tnl.train", "tnl.export", "tnl.data", "tnl.commands", "tnl.cli", "tnl.compare"),
    "tnl.compare": ("tnl.cli",),
    "tnl.export": ("tnl.train", "tnl.eval", "tnl.data", "tnl.commands", "tnl.cli"),
    "tnl.data": ("tnl.train", "tnl.eval", "tnl.export", "tnl.checkpoint", "tnl.commands", "tnl.cli"),
    "tnl.checkpoint": ("tnl.train", "tnl.eval", "tnl.export", "tnl.data", "tnl.commands", "tnl.cli"),
    "tnl.official": ("tnl.train", "tnl.eval", "tnl.export", "tnl.data", "tnl.checkpoint", "tnl.commands", "tnl.cli"),
    "tnl.model": ("tnl.train", "tnl.eval", "tnl.export", "tnl.data", "tnl.checkpoint", "tnl.commands", "tnl.cli"),
    "tnl.ops": ("tnl.model", "tnl.train", "tnl.eval", "tnl.export", "tnl.data", "tnl.checkpoint", "tnl.commands",
                "tnl.cli"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(TNL.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(name: str) -> bool:
    base = TNL.parent.joinpath(*name.split("."))
    return (base / "__init__.py").is_file() or base.with_suffix(".py").is_file()


def tnl_imports(path: Path) -> set[str]:
    """The tnl modules `path` imports anywhere in its body (a submodule where one is named, else the module)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "tnl"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            elif (node.module or "").split(".")[0] == "tnl":
                target = node.module
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if _exists(sub) else target)
    return found


def _sources() -> list[Path]:
    return sorted(TNL.rglob("*.py"))


def test_the_scan_sees_relative_lazy_and_absolute_imports():
    mod = TNL / "train" / "loop.py"  # known facts about one file, so the scan itself cannot silently see nothing
    found = tnl_imports(mod)
    assert {"tnl.checkpoint", "tnl.data", "tnl.train.config", "tnl.model"} <= found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_downwards_only(layer):
    bad = []
    for path in _sources():
        name = _module_name(path)
        if name != layer and not name.startswith(layer + "."):
            continue
        for target in sorted(tnl_imports(path)):
            if any(target == f or target.startswith(f + ".") for f in FORBIDDEN[layer]):
                bad.append(f"{path.relative_to(TNL.parent)} imports {target}")
    assert not bad, "\n".join(bad)


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Each import cycle of `graph` (module -> modules it imports) met by a depth-first walk, as "a -> b -> a"."""
    cycles: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt in graph and nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_cycle_finder_finds_a_lazy_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}) == ["a -> b -> c -> a"]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = find_cycles({_module_name(p): tnl_imports(p) for p in _sources()})
    assert not cycles, "\n".join(cycles)

"""The olmo_sam packages read top-down: no import cycle among its modules, counting the imports
inside functions too (a function-level import that closes a circle is still a circle)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

PKG = Path(__file__).resolve().parents[1] / "olmo_sam"


def _modules() -> Dict[str, Path]:
    mods = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _resolve(importer: str, is_package: bool, level: int, module: Optional[str]) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def import_graph() -> Dict[str, Set[str]]:
    """module -> olmo_sam modules it imports (anywhere in its body). ``from P import name`` counts
    as an import of ``P.name`` when that is a module, else of ``P``; the importer's own enclosing
    packages are left out (Python has started importing them already)."""
    mods = _modules()
    graph: Dict[str, Set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")))}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                src = _resolve(name, is_package, node.level, node.module)
                for a in node.names:
                    sub = f"{src}.{a.name}"
                    targets.append(sub if sub in mods else src)
            for t in targets:
                if t in mods and t != name and t not in ancestors:
                    graph[name].add(t)
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle as a list of modules (first == last), or None."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(m: str) -> Optional[List[str]]:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_detector_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    graph = import_graph()
    # function-level imports are edges: a job's context imports the stage registry inside a function
    assert "olmo_sam.study.stages" in graph["olmo_sam.study.context"]
    assert "olmo_sam.paper" in graph["olmo_sam.cfs.mix"]  # `from .. import paper`


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_tooling_is_outside_the_plugin():
    """``olmo_sam_tools`` (benchmarks, the GPU check) may import the plugin, never the reverse:
    ``import olmo_sam`` and every module under it load without the tooling (the ``bench``
    command is looked up by name, lazily, in ``olmo_sam.cli``)."""
    offenders = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "olmo_sam_tools"]
    assert not offenders, offenders
    assert not (PKG / "bench").exists() and not (PKG / "gpucheck").exists()

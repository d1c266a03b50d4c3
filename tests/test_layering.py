"""Imports only point down the layers (docs/ARCHITECTURE.md), there is no import cycle, and nothing
user-supplied is unpickled."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cdiff_cli"
# lower index = lower layer; a module may import its own layer or any layer below it
LAYERS = ["errors", "fileio", "console", "config", "data", "synthetic", "models", "diffusion", "train", "infer",
          "api", "app", "eval", "hub", "cli"]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.parts[-1] == "__init__" else rel.parts)


def layer_of(module: str) -> int | None:
    """The layer of a module is its top folder (or top-level module): no per-module exceptions."""
    parts = module.split(".")
    if parts[0] != "cdiff_cli" or len(parts) < 2:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def imports(path: Path) -> list[str]:
    """Every absolute import in the file, at module level and inside functions alike;
    ``from pkg import mod`` counts as an import of ``pkg.mod`` when that is a module."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found += [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES]
    return found


MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}


def test_every_module_belongs_to_a_layer() -> None:
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        if name in {"cdiff_cli", "cdiff_cli.__main__"}:
            continue
        assert layer_of(name) is not None, f"{name} is in no layer of {LAYERS}"


def test_imports_only_point_down() -> None:
    upward = []
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        own = layer_of(name)
        if own is None:
            continue
        for target in imports(path):
            layer = layer_of(target)
            if layer is not None and layer > own:
                upward.append(f"{name} imports {target}")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycle() -> None:
    """No module reaches itself through imports, lazy (function-level) ones included."""
    graph = {module_name(p): {t for t in imports(p) if t in MODULES and t != module_name(p)}
             for p in PACKAGE.rglob("*.py")}
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [node, nxt]))
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_unpickling_and_safe_yaml() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for bad in (r"pickle\.loads?\(", r"torch\.load\(", r"yaml\.load\(", r"allow_pickle\s*=\s*True",
                    r"(?<![.\w])eval\(", r"(?<![.\w])exec\("):
            if re.search(bad, text):
                offenders.append(f"{path.name}: {bad}")
    assert not offenders, offenders


def test_no_module_over_400_lines() -> None:
    """ARCHITECTURE.md's size rule: a module past ~400 lines is split along its seams."""
    long = [f"{p.relative_to(PACKAGE.parent)}: {n}" for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400]
    assert not long, "modules over 400 lines:\n" + "\n".join(long)

"""Imports only point down the layers (ARCHITECTURE.md), and nothing user-supplied is unpickled."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cdiff_cli"
# lower index = lower layer; a module may import its own layer or any layer below it
LAYERS = ["errors", "fileio", "console", "config", "data", "synthetic", "models", "diffusion", "train", "infer", "eval",
          "hub", "cli"]


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "cdiff_cli" or len(parts) < 2:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


def test_every_module_belongs_to_a_layer() -> None:
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name in {"cdiff_cli.__init__", "cdiff_cli.__main__"}:
            continue
        assert layer_of(name) is not None, f"{name} is in no layer of {LAYERS}"


def test_imports_only_point_down() -> None:
    upward = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        own = layer_of(name)
        if own is None:
            continue
        for target in imports(path):
            layer = layer_of(target)
            if layer is not None and layer > own:
                upward.append(f"{name} imports {target}")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_unpickling_and_safe_yaml() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for bad in (r"pickle\.loads?\(", r"torch\.load\(", r"yaml\.load\(", r"allow_pickle\s*=\s*True",
                    r"(?<![.\w])eval\(", r"(?<![.\w])exec\("):
            if re.search(bad, text):
                offenders.append(f"{path.name}: {bad}")
    assert not offenders, offenders

"""Benchmarks measure the package through its public API only: no ``_private`` name of the package
imported or read, no attribute of the package assigned (monkeypatched), so that a refactor inside
the package cannot silently change what a benchmark measures or break it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.py"))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _package_names(tree: ast.Module) -> dict[str, str]:
    """Local name -> the dotted package name it is bound to, for every import from ``cdiff_cli``."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "cdiff_cli":
                    bound[a.asname or "cdiff_cli"] = a.name if a.asname else "cdiff_cli"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "cdiff_cli":
            for a in node.names:
                bound[a.asname or a.name] = f"{node.module}.{a.name}"
    return bound


def _base(node: ast.expr) -> str | None:
    """The name an attribute chain ``a.b.c`` starts from, or None (a call, a subscript, ...)."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bound = _package_names(tree)
    found: list[tuple[int, str]] = []

    def say(node: ast.AST, what: str) -> None:
        found.append((getattr(node, "lineno", 0), what))

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("cdiff_cli"):
            parts = node.module.split(".") + [a.name for a in node.names]  # type: ignore[union-attr]
            for name in [p for p in parts if _private(p)]:
                say(node, f"imports the private {name} from {node.module}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("cdiff_cli") and any(_private(p) for p in a.name.split(".")):
                    say(node, f"imports the private module {a.name}")
        elif isinstance(node, ast.Attribute) and _private(node.attr) and _base(node) in bound:
            say(node, f"reads the private {node.attr} of {bound[_base(node)]}")  # type: ignore[index]
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            while any(isinstance(t, (ast.Tuple, ast.List)) for t in targets):  # a, b.c = ...
                targets = [e for t in targets for e in (t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t])]
            for t in targets:
                if isinstance(t, ast.Attribute) and _base(t) in bound:
                    say(node, f"assigns {t.attr} of {bound[_base(t)]}")  # type: ignore[index]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr"):
            target = node.args[0] if node.args else None
            if not (isinstance(target, ast.Name) and target.id == "self"):  # what it patches cannot be told statically
                say(node, f"calls {node.func.id}() on {ast.unparse(target) if target else '?'}")
    return [f"{path.name}:{line}: {what}" for line, what in sorted(found)]


def test_the_check_sees_what_it_forbids(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from cdiff_cli.eval.localize import _chunk_size\n"
                   "from cdiff_cli.diffusion import simplex as S\n"
                   "import cdiff_cli.data.images2d\n"
                   "S._padded_geometry.cache_clear()\n"
                   "S.simplex_noise = None\n"
                   "cdiff_cli.data.images2d.load_image_2d = print\n"
                   "setattr(S, 'simplex_noise', None)\n")
    lines = [v.split(": ", 1)[1] for v in violations(bad)]
    assert lines == ["imports the private _chunk_size from cdiff_cli.eval.localize",
                     "reads the private _padded_geometry of cdiff_cli.diffusion.simplex",
                     "assigns simplex_noise of cdiff_cli.diffusion.simplex",
                     "assigns load_image_2d of cdiff_cli",
                     "calls setattr() on S"], lines
    good = tmp_path / "good.py"
    good.write_text("from cdiff_cli.diffusion import simplex as S\nfrom cdiff_cli import __version__\n"
                    "S.clear_geometry_cache()\nclass T:\n    def __init__(self):\n        self._x = 1\n"
                    "        setattr(self, 'y', 2)\n")
    assert violations(good) == []


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.name for p in BENCHMARKS])
def test_benchmarks_use_only_the_public_api(path: Path) -> None:
    found = violations(path)
    assert not found, "benchmarks reach into the package:\n" + "\n".join(found)

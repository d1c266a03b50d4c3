"""The command line itself: instant help, examples everywhere, light imports, one-line recipe errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_train import run_cli

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["synthesize", "prepare", "pretrain-encoder", "train-diffusion", "reconstruct", "evaluate", "localize",
               "push"]
HEAVY = ["torch", "nibabel", "scipy", "matplotlib", "gradio", "pydantic"]
ENV = {**os.environ, "COLUMNS": "200", "CDIFF_PROGRESS": "0", "NO_COLOR": "1"}


def _cdiff(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdiff_cli", *args], cwd=ROOT, env=env or ENV,
                          capture_output=True, text=True, timeout=120, check=False)


def test_help_lists_every_subcommand() -> None:
    proc = _cdiff("--help")
    assert proc.returncode == 0, proc.stderr
    for name in SUBCOMMANDS:
        assert re.search(rf"\b{re.escape(name)}\b", proc.stdout), f"{name} missing from cdiff --help"


def test_help_loads_only_the_cli_and_its_error_kinds() -> None:
    """Why ``cdiff --help`` is instant, checked by what it loads, not by a clock (its time is measured in
    ``benchmarks/bench_cli.py``): no heavy library (pydantic included) and, of the package, only the
    command table and the method registry it lists."""
    code = ("import sys, json\nfrom cdiff_cli.cli.main import main\nsys.argv = ['cdiff', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('cdiff_cli') or m.split('.')[0] in "
            f"{HEAVY!r})), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = set(__import__("json").loads(proc.stderr.strip().splitlines()[-1]))
    registry = {m for m in loaded if m.startswith("cdiff_cli.config.methods")}  # plain data, for the method list
    assert registry and loaded - registry <= {"cdiff_cli", "cdiff_cli.cli", "cdiff_cli.cli.main", "cdiff_cli.errors",
                                              "cdiff_cli.config"}, loaded


def test_cli_module_imports_no_heavy_library() -> None:
    code = ("import sys, json; import cdiff_cli.cli.main; "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", f"heavy modules imported by cdiff_cli.cli.main: {proc.stdout.strip()}"


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_help_has_an_example(name: str) -> None:
    from typer.testing import CliRunner

    from cdiff_cli.cli.main import app

    result = CliRunner().invoke(app, [name, "--help"], terminal_width=200, env={"NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and f"cdiff {name}" in result.output


def test_unknown_recipe_key_is_one_line_with_did_you_mean(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(["prepare", str(ROOT / "recipes" / "quickstart.yaml"), "trian.steps=3"], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "did you mean" in err and "train" in err
    code, err = run_cli(["train-diffusion", str(ROOT / "recipes" / "quickstart.yaml"), "train.stpes=3"], capsys)
    assert code == 2 and err.strip().count("\n") == 0
    assert "did you mean train.steps" in err


def test_cdiff_debug_shows_the_traceback() -> None:
    args = ("prepare", str(ROOT / "recipes" / "quickstart.yaml"), "trian.steps=3")
    quiet = _cdiff(*args)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    loud = _cdiff(*args, env={**ENV, "CDIFF_DEBUG": "1"})
    assert loud.returncode != 0
    assert "Traceback (most recent call last)" in loud.stderr and "RecipeError" in loud.stderr
    assert "did you mean" in loud.stderr

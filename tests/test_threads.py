"""``--threads`` of ``cdiff reconstruct`` / ``cdiff localize`` and ``CDIFF_THREADS`` of the app: checked
in one line before anything is read, applied to torch, and winning over the recipe's ``infer.threads``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cdiff_cli.errors import CdiffError
from cdiff_cli.infer import threads
from conftest import run_cli


@pytest.fixture
def restore(monkeypatch: pytest.MonkeyPatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_chosen", None)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("command", ["reconstruct", "localize"])
@pytest.mark.parametrize("value", ["0", "-2"])
def test_bad_threads_is_one_line(command: str, value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str], restore: None) -> None:
    assert run_cli(monkeypatch, command, str(tmp_path / "missing.png"), f"--threads={value}") == 2
    err = capsys.readouterr().err.strip()
    assert err == f"cdiff: error: --threads {value}: must be a whole number of at least 1"
    assert threads.chosen_threads() is None


def test_threads_option_is_applied_before_the_inputs_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str],
                                                              restore: None) -> None:
    run_cli(monkeypatch, "reconstruct", str(tmp_path / "missing.png"), "--threads", "2",
             "--out", str(tmp_path / "o"))
    capsys.readouterr()
    assert threads.chosen_threads() == 2 and torch.get_num_threads() == 2


def test_chosen_threads_win_over_the_recipe(tiny_run: Path, monkeypatch: pytest.MonkeyPatch, restore: None) -> None:
    import json

    from cdiff_cli.infer.model import load_model

    config = tiny_run / "diffusion" / "config.json"
    doc = json.loads(config.read_text())
    doc["recipe"]["infer"]["threads"] = 3
    config.write_text(json.dumps(doc))
    load_model(tiny_run, torch.device("cpu"))
    assert torch.get_num_threads() == 3  # the recipe's, when nothing was chosen
    threads.set_threads(1)
    load_model(tiny_run, torch.device("cpu"))
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("raw", ["0", "two", "-1", "1.5"])
def test_bad_env_value_is_one_line(raw: str, monkeypatch: pytest.MonkeyPatch, restore: None) -> None:
    monkeypatch.setenv("CDIFF_THREADS", raw)
    with pytest.raises(CdiffError, match=f"CDIFF_THREADS='{raw}': expected a whole number of threads"):
        threads.threads_from_env()


def test_env_value_sets_torch(monkeypatch: pytest.MonkeyPatch, restore: None) -> None:
    monkeypatch.delenv("CDIFF_THREADS", raising=False)
    assert threads.threads_from_env() is None and threads.chosen_threads() is None
    monkeypatch.setenv("CDIFF_THREADS", " 2 ")
    assert threads.threads_from_env() == 2 and torch.get_num_threads() == 2

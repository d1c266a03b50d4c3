"""Crash safety of training: SIGKILL at random points, a failing disk, and Ctrl-C.

(a) ``python -m cdiff_cli train-diffusion`` is SIGKILLed three times (right after a checkpoint
    appears, while a checkpoint is being written, after a random delay) and resumed each time;
    the final weights equal those of an uninterrupted run bit for bit, and every ``step_N``
    folder ever seen is complete (temporary folders start with "." and are cleaned up).
(b) A write that fails (ENOSPC simulated in-process; an unwritable folder when not root) is one
    clear error line and leaves the earlier checkpoints and outputs intact; resuming afterwards
    still gives the uninterrupted run's weights.
(c) SIGINT (Ctrl-C) saves a checkpoint, exits with 130, and ``--resume`` completes.

Set ``CDIFF_CRASH_SEED`` to replay the random kill points of a failed run.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors.torch import load_file

from cdiff_cli.config import load_recipe
from cdiff_cli.train.run import train_stage
from test_train import run_cli
from conftest import HANG_S

pytestmark = pytest.mark.slow  # heavy: `make test` runs it, `make test-fast` leaves it out

COMMON = ["train.steps=6", "train.ckpt_every=1", "train.val_every=0", "train.log_every=1",
          "encoder.trainable_in_diffusion=false"]  # a frozen encoder: 46 MB checkpoints instead of 174 MB
FILES = {"model.safetensors", "ema.safetensors", "optimizer.safetensors", "optimizer.json", "state.json"}
ENV = {**os.environ, "CDIFF_PROGRESS": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SEED = int(os.environ.get("CDIFF_CRASH_SEED", random.SystemRandom().randrange(10**6)))


@pytest.fixture(scope="module")
def encoder_dir(tiny_prepared: Path, module_tmp: Callable[[str], Path]) -> Path:
    """The tiny stage-1 encoder, trained once (model.safetensors + config.json only)."""
    runs = module_tmp("enc")
    recipe = load_recipe(tiny_prepared, [f"runs_dir={runs}"])
    train_stage("encoder", recipe, "cpu")
    out = runs / "encoder_only"
    out.mkdir()
    for name in ("model.safetensors", "config.json"):
        shutil.copy2(recipe.run_dir / "encoder" / name, out / name)
    shutil.rmtree(recipe.run_dir)
    return out


def _new_run(encoder_dir: Path, runs: Path) -> Path:
    """``runs/tiny`` with the stage-1 encoder copied in; returns the diffusion folder."""
    shutil.copytree(encoder_dir, runs / "tiny" / "encoder")
    return runs / "tiny" / "diffusion"


@pytest.fixture(scope="module")
def reference(tiny_prepared: Path, encoder_dir: Path, module_tmp: Callable[[str], Path]) -> dict[str, Any]:
    """The uninterrupted run's final weights (in-process, one thread, as the subprocesses)."""
    runs = module_tmp("ref")
    folder = _new_run(encoder_dir, runs)
    train_stage("diffusion", load_recipe(tiny_prepared, [f"runs_dir={runs}", *COMMON]), "cpu")
    return load_file(str(folder / "model.safetensors"))


def _assert_same(reference: dict[str, Any], path: Path, why: str) -> None:
    got = load_file(str(path))
    assert got.keys() == reference.keys()
    differ = [k for k in reference if not torch.equal(reference[k], got[k])]
    assert not differ, f"{why}: {len(differ)} tensors differ from the uninterrupted run, e.g. {differ[0]}"


class Watcher:
    """Polls a checkpoints folder: every ``step_N`` folder seen must be complete."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.complete: set[str] = set()
        self.incomplete: list[tuple[str, list[str]]] = []
        self.temporary: set[str] = set()
        self.foreign: set[str] = set()

    def poll(self) -> None:
        try:
            entries = os.listdir(self.root)
        except FileNotFoundError:
            return
        for name in entries:
            if name.startswith("."):
                self.temporary.add(name)
            elif not re.fullmatch(r"step_\d{7}", name):
                self.foreign.add(name)
            else:
                try:
                    files = set(os.listdir(self.root / name))
                except FileNotFoundError:  # pruned (renamed away) between the two listings
                    continue
                if files == FILES:
                    self.complete.add(name)
                else:
                    self.incomplete.append((name, sorted(files)))

    def temps_now(self) -> list[str]:
        try:
            return [n for n in os.listdir(self.root) if n.startswith(".")]
        except FileNotFoundError:
            return []

    def check(self) -> None:
        assert not self.incomplete, f"incomplete checkpoint folders seen: {self.incomplete[:3]}"
        assert not self.foreign, f"unexpected entries: {self.foreign}"


def _spawn(recipe: Path, runs: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "cdiff_cli", "train-diffusion", str(recipe), f"runs_dir={runs}", *COMMON,
           "--device", "cpu", *extra]
    with log.open("ab") as f:
        return subprocess.Popen(cmd, env=ENV, stdout=f, stderr=subprocess.STDOUT)


def _kill_when(proc: subprocess.Popen[bytes], watch: Watcher, ready: Any, delay: float = 0.0,
               timeout: float = HANG_S) -> bool:
    """SIGKILL ``proc`` ``delay`` s after ``ready()`` holds; False when it exited on its own first."""
    deadline = time.monotonic() + timeout
    while not ready():
        watch.poll()
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.003)
    end = time.monotonic() + delay
    while time.monotonic() < end and proc.poll() is None:
        watch.poll()
        time.sleep(0.002)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    watch.poll()
    return True


def test_sigkill_at_random_points_then_resume_equals_uninterrupted(
        tiny_prepared: Path, encoder_dir: Path, reference: dict[str, Any], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(SEED)
    runs = tmp_path / "runs"
    folder = _new_run(encoder_dir, runs)
    ckpts = folder / "checkpoints"
    watch = Watcher(ckpts)
    log = tmp_path / "train.log"
    kills: list[str] = []

    def newest() -> int:
        return max((int(n[5:]) for n in watch.complete), default=0)

    # 1. right after a new checkpoint appears (step 1 or 2)
    first = rng.choice([1, 2])
    proc = _spawn(tiny_prepared, runs, log)
    if _kill_when(proc, watch, lambda: newest() >= first):
        kills.append(f"after step_{newest()} appeared")
    # 2. while a checkpoint folder is being written (a new temporary folder exists)
    stale = set(watch.temps_now())
    proc = _spawn(tiny_prepared, runs, log, "--resume")
    writing: list[str] = []

    def mid_write() -> bool:
        writing[:] = [n for n in watch.temps_now() if n not in stale and n.endswith(".tmp")]
        return bool(writing)

    if _kill_when(proc, watch, mid_write):
        kills.append(f"mid-write of {writing[0]}")
    # 3. a random delay after the next checkpoint
    seen = newest()
    delay = rng.uniform(0.0, 0.6)
    proc = _spawn(tiny_prepared, runs, log, "--resume")
    if _kill_when(proc, watch, lambda: newest() > seen, delay=delay):
        kills.append(f"{delay:.2f} s after step_{seen + 1}")
    watch.check()
    assert len(kills) >= 2, f"seed {SEED}: the run ended before it could be killed twice ({kills})\n{log.read_text()}"

    print(f"\nCDIFF_CRASH_SEED={SEED}: killed {kills}; temporary folders seen: {sorted(watch.temporary)}",
          file=sys.__stderr__)
    # resume to the end through the real entry point (in-process)
    code, err = run_cli(["train-diffusion", str(tiny_prepared), f"runs_dir={runs}", *COMMON, "--device", "cpu",
                         "--resume"], capsys)
    assert code == 0, err
    watch.poll()
    watch.check()
    _assert_same(reference, folder / "model.safetensors", f"seed {SEED}, kills {kills}")
    assert not [p for p in folder.rglob("*") if p.name.startswith(".")], "temporary folders left behind"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000004", "step_0000005", "step_0000006"]


# --------------------------------------------------------------------------------------- (b)


def _partial_run(tiny_prepared: Path, encoder_dir: Path, runs: Path, steps: int = 2) -> Path:
    from cdiff_cli.train.loop import TrainingInterrupted

    folder = _new_run(encoder_dir, runs)
    with pytest.raises(TrainingInterrupted):
        train_stage("diffusion", load_recipe(tiny_prepared, [f"runs_dir={runs}", *COMMON]), "cpu", stop_after=steps)
    return folder


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _error_line(err: str) -> str:
    """The run may print progress lines first; the error is the one ``cdiff: error`` line, last."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    errors = [ln for ln in lines if ln.startswith("cdiff: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


@pytest.mark.parametrize("where", ["checkpoint", "export"])
def test_disk_full_is_one_line_and_keeps_earlier_checkpoints(
        where: str, tiny_prepared: Path, encoder_dir: Path, reference: dict[str, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """ENOSPC from the safetensors writer (works as root too, where chmod does not stop writes)."""
    import cdiff_cli.train.checkpoint as ckpt_mod

    runs = tmp_path / "runs"
    folder = _partial_run(tiny_prepared, encoder_dir, runs, steps=2 if where == "checkpoint" else 6)
    assert not (folder / "model.safetensors").exists()  # stopped right after the last checkpoint, before the export
    before = _tree(folder / "checkpoints")
    real = ckpt_mod.save_file

    def full_disk(tensors: Any, filename: str, metadata: Any = None) -> None:
        is_export = Path(filename).parent == folder
        if (where == "export") == is_export:
            real(tensors, filename, metadata=metadata)  # write part of it, then run out of space
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(ckpt_mod, "save_file", full_disk)
    args = ["train-diffusion", str(tiny_prepared), f"runs_dir={runs}", *COMMON, "--device", "cpu", "--resume"]
    code, err = run_cli(args, capsys)
    line = _error_line(err)
    assert code == 2
    want = r"step_0000003" if where == "checkpoint" else r"diffusion/model\.safetensors"
    assert re.fullmatch(rf"cdiff: error: cannot write \S*{want}: No space left on device", line), line
    after = _tree(folder / "checkpoints")
    if where == "checkpoint":
        assert after == before, "earlier checkpoints changed"
    else:  # the final checkpoint is rewritten identically before the export
        assert after.keys() == before.keys()
        assert after["step_0000006/model.safetensors"] == before["step_0000006/model.safetensors"]
    assert not (folder / "model.safetensors").exists()
    assert not [p for p in folder.rglob("*") if p.name.startswith(".")], "temporary files left behind"

    monkeypatch.setattr(ckpt_mod, "save_file", real)  # space again: resuming finishes the same run
    code, err = run_cli(args, capsys)
    assert code == 0, err
    _assert_same(reference, folder / "model.safetensors", f"after a failed {where} write")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions; ENOSPC is simulated above instead")
def test_unwritable_checkpoint_folder_is_one_line(tiny_prepared: Path, encoder_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    folder = _partial_run(tiny_prepared, encoder_dir, runs)
    before = _tree(folder / "checkpoints")
    (folder / "checkpoints").chmod(0o500)
    try:
        code, err = run_cli(["train-diffusion", str(tiny_prepared), f"runs_dir={runs}", *COMMON, "--device", "cpu",
                             "--resume"], capsys)
    finally:
        (folder / "checkpoints").chmod(0o755)
    line = _error_line(err)
    assert code == 2 and re.search(r"cannot write \S*step_0000003: Permission denied", line), line
    assert _tree(folder / "checkpoints") == before
    assert not (folder / "model.safetensors").exists()


# --------------------------------------------------------------------------------------- (c)


def test_ctrl_c_saves_a_checkpoint_exits_130_and_resume_completes(
        tiny_prepared: Path, encoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    folder = _new_run(encoder_dir, runs)
    log = tmp_path / "train.log"
    long = ["train.steps=100000", "train.ckpt_every=100000"]
    proc = _spawn(tiny_prepared, runs, log, *long)
    deadline = time.monotonic() + HANG_S
    while "step 2 train loss" not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(HANG_S) == 130, log.read_text()
    last = log.read_text().strip().splitlines()[-1]
    m = re.fullmatch(r"cdiff: diffusion stopped at step (\d+); checkpoint (\S+); continue with --resume", last)
    assert m, last
    step = int(m.group(1))
    assert Path(m.group(2)) == folder / "checkpoints" / f"step_{step:07d}"
    assert {p.name for p in Path(m.group(2)).iterdir()} == FILES
    assert "Traceback" not in log.read_text()

    code, err = run_cli(["train-diffusion", str(tiny_prepared), f"runs_dir={runs}", *COMMON, f"train.steps={step + 1}",
                         "--device", "cpu", "--resume"], capsys)
    assert code == 0, err
    flat = re.sub(r"\s+", "", err)  # rich wraps long lines at 80 columns
    assert f"resumingfrom{folder / 'checkpoints' / f'step_{step:07d}'}" in flat, err
    assert (folder / "model.safetensors").is_file()
    assert (folder / "checkpoints" / f"step_{step + 1:07d}").is_dir()

"""Training: both stages end to end on the tiny benchmark, exact resume, DDP, and user errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cdiff_cli.config import load_recipe
from cdiff_cli.errors import CheckpointError, CdiffError
from cdiff_cli.train.loop import Budget, TrainingInterrupted
from cdiff_cli.train.run import train_stage


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run ``cdiff ARGS`` in-process through the real entry point; return (exit code, stderr)."""
    from cdiff_cli.cli.main import main

    old = sys.argv
    sys.argv = ["cdiff", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = old
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def trained(tiny_prepared: Path, module_tmp: Callable[[str], Path]) -> Path:
    """A run directory with both stages trained for a few steps (shared by the tests below)."""
    runs = module_tmp("runs")
    recipe = load_recipe(tiny_prepared, [f"runs_dir={runs}"])
    enc = train_stage("encoder", recipe, "cpu")
    diff = train_stage("diffusion", recipe, "cpu")
    assert enc["steps"] == recipe.encoder_train.steps and diff["steps"] == recipe.train.steps
    return recipe.run_dir


def test_run_directory_layout(trained: Path) -> None:
    for stage in ("encoder", "diffusion"):
        folder = trained / stage
        assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
        assert (folder / "log.csv").read_text().startswith("step,split,loss")
        ckpts = sorted((folder / "checkpoints").iterdir())
        assert ckpts and all((c / "state.json").is_file() for c in ckpts)
        assert not [p for p in folder.rglob("*") if p.name.startswith(".")], "temporary files left behind"
    assert (trained / "recipe.yaml").is_file()
    weights = load_file(str(trained / "diffusion" / "model.safetensors"))
    assert any(k.startswith("unet.") for k in weights) and any(k.startswith("encoder.") for k in weights)
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_trained_model_loads_strictly_and_reconstructs_deterministically(trained: Path) -> None:
    import numpy as np

    from cdiff_cli.infer.model import load_model
    from cdiff_cli.infer.reconstruct import reconstruct_slices

    model = load_model(trained, torch.device("cpu"))
    x = np.random.default_rng(0).random((3, 1, 32, 32)).astype(np.float32)
    a = reconstruct_slices(model, x, seed=1)
    b = reconstruct_slices(model, x, seed=1)
    c = reconstruct_slices(model, x, seed=2)
    assert a.shape == x.shape and np.array_equal(a, b) and not np.array_equal(a, c)
    # the exported encoder equals the one inside the diffusion folder only if frozen; here it trained jointly
    enc = load_file(str(trained / "encoder" / "model.safetensors"))
    joint = {k.removeprefix("encoder."): v for k, v in load_file(str(trained / "diffusion" / "model.safetensors")).items()
             if k.startswith("encoder.")}
    assert set(enc) == set(joint)


def _copy_encoder(src_run: Path, dst_run: Path) -> None:
    shutil.copytree(src_run / "encoder", dst_run / "encoder")


def test_interrupted_and_resumed_run_equals_uninterrupted(trained: Path, tiny_prepared: Path, tmp_path: Path) -> None:
    base = ["train.steps=5", "train.ckpt_every=100", "train.val_every=0"]
    full = load_recipe(tiny_prepared, [f"runs_dir={tmp_path / 'full'}", *base])
    _copy_encoder(trained, full.run_dir)
    train_stage("diffusion", full, "cpu")

    part = load_recipe(tiny_prepared, [f"runs_dir={tmp_path / 'part'}", *base])
    _copy_encoder(trained, part.run_dir)
    with pytest.raises(TrainingInterrupted, match="stopped at step 2"):
        train_stage("diffusion", part, "cpu", stop_after=2)
    with pytest.raises(CdiffError, match="--resume"):
        train_stage("diffusion", part, "cpu")  # refuses to overwrite without --resume
    # resuming may change schedule-only settings (here the checkpoint interval)
    part = load_recipe(tiny_prepared, [f"runs_dir={tmp_path / 'part'}", *base[:1], "train.ckpt_every=3",
                                       "train.val_every=0"])
    train_stage("diffusion", part, "cpu", resume=True)

    a = load_file(str(full.run_dir / "diffusion" / "model.safetensors"))
    b = load_file(str(part.run_dir / "diffusion" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"


def test_a_spent_budget_exports_the_model_and_a_resume_continues_exactly(trained: Path, tiny_prepared: Path,
                                                                          tmp_path: Path) -> None:
    """A budget (here a fake clock that ticks once per check, so it is spent after 3 steps whatever the
    load) ends the run with the model exported; resuming without it trains on to the recipe's steps
    and gives the weights of an uninterrupted run."""
    base = ["train.steps=5", "train.ckpt_every=100", "train.val_every=0"]
    full = load_recipe(tiny_prepared, [f"runs_dir={tmp_path / 'full'}", *base])
    _copy_encoder(trained, full.run_dir)
    train_stage("diffusion", full, "cpu")

    ticks = iter(range(100))
    part = load_recipe(tiny_prepared, [f"runs_dir={tmp_path / 'part'}", *base])
    _copy_encoder(trained, part.run_dir)
    result = train_stage("diffusion", part, "cpu", budget=Budget(seconds=3, clock=lambda: float(next(ticks))))
    assert (result["steps"], result["stopped_by"]) == (3, "budget")
    assert (part.run_dir / "diffusion" / "model.safetensors").is_file()
    again = train_stage("diffusion", part, "cpu", resume=True, budget=Budget(steps=1))  # one more step
    assert (again["steps"], again["stopped_by"]) == (4, "budget")
    last = train_stage("diffusion", part, "cpu", resume=True)
    assert (last["steps"], last["stopped_by"]) == (5, "steps")
    a = load_file(str(full.run_dir / "diffusion" / "model.safetensors"))
    b = load_file(str(part.run_dir / "diffusion" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), "weights after budgets differ from the uninterrupted run"
    stop_at_2 = load_recipe(tiny_prepared, [f"runs_dir={tmp_path / 'cb'}", *base])
    _copy_encoder(trained, stop_at_2.run_dir)
    assert train_stage("diffusion", stop_at_2, "cpu", budget=Budget(stop=lambda step: step >= 2))["steps"] == 2
    with pytest.raises(ValueError, match="at least 1"):
        Budget(steps=0)


def test_resume_with_another_architecture_is_refused(trained: Path, tiny_prepared: Path, tmp_path: Path) -> None:
    r = load_recipe(tiny_prepared, [f"runs_dir={tmp_path}", "train.steps=3"])
    _copy_encoder(trained, r.run_dir)
    with pytest.raises(TrainingInterrupted):
        train_stage("diffusion", r, "cpu", stop_after=1)
    wider = load_recipe(tiny_prepared, [f"runs_dir={tmp_path}", "train.steps=3", "unet.base_channels=32"])
    with pytest.raises(CheckpointError, match="different recipe"):
        train_stage("diffusion", wider, "cpu", resume=True)


def test_missing_stage1_encoder_is_one_clear_line(tiny_prepared: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(["train-diffusion", str(tiny_prepared), f"runs_dir={tmp_path}"], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and "stage-1 encoder not found" in err and "pretrain-encoder" in err


def test_encoder_of_another_architecture_is_one_clear_line(trained: Path, tiny_prepared: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    _copy_encoder(trained, tmp_path / "tiny")
    code, err = run_cli(["train-diffusion", str(tiny_prepared), f"runs_dir={tmp_path}", "encoder.arch=resnet34"],
                        capsys)
    assert code == 2 and err.strip().count("\n") == 0
    assert "does not match the recipe's architecture" in err


@pytest.mark.slow  # two torchrun processes
def test_ddp_two_processes_match_one_process_with_the_same_global_batch(
        trained: Path, tiny_prepared: Path, tmp_path: Path) -> None:
    """torchrun with 2 gloo processes of batch 2 == 1 process of batch 4 (frozen encoder, no BN drift)."""
    common = ["train.steps=3", "train.ckpt_every=100", "train.val_every=0", "encoder.trainable_in_diffusion=false"]
    single = load_recipe(tiny_prepared, [f"runs_dir={tmp_path / 'one'}", "train.batch_size=4", *common])
    _copy_encoder(trained, single.run_dir)
    train_stage("diffusion", single, "cpu")

    _copy_encoder(trained, tmp_path / "two" / "tiny")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CDIFF_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cdiff_cli",
           "train-diffusion", str(tiny_prepared), f"runs_dir={tmp_path / 'two'}", "train.batch_size=2", *common,
           "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (tmp_path / "two" / "tiny" / "diffusion" / "log.jsonl").read_text()
    assert '"step": 3' in log
    a = load_file(str(single.run_dir / "diffusion" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "tiny" / "diffusion" / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-4, f"DDP result differs from single process by {worst}"
    moved = max(float((a[k].float() - v.float()).abs().max()) for k, v in
                load_file(str(trained / "diffusion" / "model.safetensors")).items() if k.startswith("unet."))
    assert moved > 0  # the comparison is not vacuous: training changed the weights


def test_ema_carries_batchnorm_buffers_with_the_weights() -> None:
    """The exported running statistics of a jointly trained encoder are averaged like its weights
    (not the live ones of the last step), and a checkpoint's EMA restores them."""
    from cdiff_cli.train.loop import EMA

    torch.manual_seed(0)
    net = torch.nn.Module()
    net.encoder = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    net.train()
    decay = 0.8
    ema = EMA(net, ("encoder.",), decay, warmup=False)
    assert {"encoder.1.running_mean", "encoder.1.running_var", "encoder.1.num_batches_tracked"} <= set(ema.shadow)
    expect = net.encoder[1].running_mean.clone()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for step in range(5):
        x = torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(step)) * (step + 1) + step
        net.encoder(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        ema.update(step)
        expect += (1 - decay) * (net.encoder[1].running_mean - expect)
    out = ema.apply_to(net.state_dict())
    torch.testing.assert_close(out["encoder.1.running_mean"], expect)
    assert not torch.allclose(out["encoder.1.running_mean"], net.encoder[1].running_mean)  # not the live one
    assert int(out["encoder.1.num_batches_tracked"]) == 5
    # a checkpoint's EMA restores the buffers; one written before buffers had an EMA falls back to the net's
    fresh = EMA(net, ("encoder.",), decay)
    fresh.load(dict(ema.shadow))
    torch.testing.assert_close(fresh.shadow["encoder.1.running_var"], ema.shadow["encoder.1.running_var"])
    old = EMA(net, ("encoder.",), decay)
    old.load({k: v for k, v in ema.shadow.items() if "running" not in k and "num_batches" not in k})
    torch.testing.assert_close(old.shadow["encoder.1.running_mean"], net.encoder[1].running_mean)
    with pytest.raises(CdiffError, match="checkpoint EMA lacks encoder.0.weight"):
        EMA(net, ("encoder.",), decay).load({})


def test_ema_warmup_leaves_no_share_of_the_initial_weights() -> None:
    """A constant decay of 0.999 exports mostly the random initial weights after a short run; with the
    warm-up (the default) the average holds only trained weights: here, after 50 updates of a weight
    that jumps from 0 to 1 at the first step, the warm-up EMA is 1 - 9! 50! / 59! and the constant one
    1 - 0.999 ** 50."""
    import math

    from cdiff_cli.train.loop import EMA

    net = torch.nn.Module()
    net.unet = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.unet.weight.zero_()
    warm, flat = EMA(net, ("unet.",), 0.999), EMA(net, ("unet.",), 0.999, warmup=False)
    with torch.no_grad():
        net.unet.weight.fill_(1.0)
    for step in range(50):
        warm.update(step)
        flat.update(step)
    init_share = math.factorial(9) * math.factorial(50) / math.factorial(59)
    assert float(warm.shadow["unet.weight"]) == pytest.approx(1 - init_share, abs=1e-6)
    assert float(warm.shadow["unet.weight"]) > 1 - 1e-6
    assert float(flat.shadow["unet.weight"]) == pytest.approx(1 - 0.999**50, rel=1e-5)  # 4.9 %: mostly the init
    assert [warm.decay_at(t) for t in (0, 90, 10**6)] == [pytest.approx(0.1), pytest.approx(0.91), 0.999]

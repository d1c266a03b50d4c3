"""The recipe's speed options (channels_last, torch.compile, threads): same training, weights that
save, load strictly and resume; compiled in place so parameter names stay as they are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cdiff_cli.config import load_recipe
from cdiff_cli.infer.model import load_model
from cdiff_cli.infer.reconstruct import reconstruct_slices
from cdiff_cli.train.loop import TrainingInterrupted
from cdiff_cli.train.run import train_stage


@pytest.fixture
def eager_compile(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``Module.compile`` with dynamo's eager backend: the same graph capture, no minutes of C++ builds."""
    compiled: list[str] = []
    original = torch.nn.Module.compile

    def compile_eager(self: torch.nn.Module, *args: object, **kw: object) -> None:
        compiled.append(type(self).__name__)
        original(self, *args, backend="eager", **kw)

    monkeypatch.setattr(torch.nn.Module, "compile", compile_eager)
    return compiled


@pytest.mark.slow  # trains, resumes and compiles
def test_channels_last_and_compile_train_save_resume_and_load(tiny_prepared: Path, tmp_path: Path,
                                                              eager_compile: list[str]) -> None:
    fast = ["train.channels_last=true", "train.compile=true", "encoder_train.channels_last=true",
            "train.steps=4", "train.ckpt_every=100", "train.val_every=2"]
    plain = load_recipe(tiny_prepared, [f"runs_dir={tmp_path / 'plain'}", "train.steps=4", "train.ckpt_every=100",
                                        "train.val_every=2"])
    train_stage("encoder", plain, "cpu")
    train_stage("diffusion", plain, "cpu")
    recipe = load_recipe(tiny_prepared, [f"runs_dir={tmp_path / 'fast'}", *fast])
    train_stage("encoder", recipe, "cpu")
    with pytest.raises(TrainingInterrupted):
        train_stage("diffusion", recipe, "cpu", stop_after=2)  # a channels_last checkpoint is written
    train_stage("diffusion", recipe, "cpu", resume=True)
    assert eager_compile == ["ConditionalUNet", "Encoder"] * 2  # the modules, never the stage net
    a = load_file(str(plain.run_dir / "diffusion" / "model.safetensors"))
    b = load_file(str(recipe.run_dir / "diffusion" / "model.safetensors"))
    assert a.keys() == b.keys()  # no ``_orig_mod.`` prefixes
    assert all(v.is_contiguous() for v in b.values())
    for k in a:  # the same training, up to float reassociation: within 1 % of each tensor's scale (the
        # BatchNorm statistics of the jointly trained encoder, over 4 images, move most)
        diff, scale = float((a[k].float() - b[k].float()).abs().max()), float(a[k].float().abs().max())
        assert diff <= 1e-3 + 1e-2 * scale, (k, diff, scale)
    model = load_model(recipe.run_dir, torch.device("cpu"))  # strict
    x = np.random.default_rng(0).random((2, 1, 32, 32)).astype(np.float32)
    ref = reconstruct_slices(load_model(plain.run_dir, torch.device("cpu")), x, seed=1)
    assert np.abs(reconstruct_slices(model, x, seed=1) - ref).max() < 1e-3


def test_inference_channels_last_gives_the_same_maps(tiny_run: Path) -> None:
    """NHWC at inference (the default) against NCHW (what models trained before it recorded)."""
    import json

    cfg_path = tiny_run / "diffusion" / "config.json"
    x = np.random.default_rng(0).random((3, 1, 32, 32)).astype(np.float32)
    cfg = json.loads(cfg_path.read_text())
    assert cfg["recipe"]["infer"]["channels_last"] is True  # the default
    model = load_model(tiny_run, torch.device("cpu"))
    assert next(p for p in model.unet.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    nhwc = reconstruct_slices(model, x, seed=1)
    cfg["recipe"]["infer"].update(channels_last=False, threads=1)
    cfg_path.write_text(json.dumps(cfg))
    model = load_model(tiny_run, torch.device("cpu"))
    assert next(p for p in model.unet.parameters() if p.dim() == 4).is_contiguous()
    assert torch.get_num_threads() == 1
    assert np.abs(reconstruct_slices(model, x, seed=1) - nhwc).max() < 1e-4


def test_bf16_autocast_on_the_cpu_only_when_asked() -> None:
    from cdiff_cli.train.loop import autocast_for

    cpu = torch.device("cpu")
    for amp, expect in (("bf16", torch.bfloat16), ("auto", torch.float32), ("off", torch.float32)):
        with autocast_for(cpu, amp):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == expect

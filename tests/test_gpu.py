"""CUDA-only checks (marker ``gpu``; skipped without a CUDA device): bf16 training of both stages,
the in-place compile, inference on the GPU against the CPU. ``benchmarks/gpu.sh`` runs them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_eps_info_nce_is_float32_under_cuda_autocast() -> None:
    from cdiff_cli.train.losses import eps_info_nce

    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(64, 128, generator=g).cuda(), torch.randn(64, 128, generator=g).cuda()
    full = eps_info_nce(z1, z2)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        mixed = eps_info_nce(z1, z2)
    assert mixed.dtype == torch.float32 and abs(mixed.item() - full.item()) < 1e-4


def test_both_stages_train_in_bf16_channels_last_and_match_the_cpu(tiny_prepared: Path, tmp_path: Path) -> None:
    from cdiff_cli.config import load_recipe
    from cdiff_cli.infer.model import load_model
    from cdiff_cli.infer.reconstruct import reconstruct_slices
    from cdiff_cli.train.run import train_stage

    recipe = load_recipe(tiny_prepared, [f"runs_dir={tmp_path}", "train.channels_last=true",
                                         "encoder_train.channels_last=true", "train.amp=bf16"])
    for kind in ("encoder", "diffusion"):
        result = train_stage(kind, recipe, "cuda")
        assert np.isfinite(result["final_loss"])
    gpu = load_model(recipe.run_dir, torch.device("cuda"))
    cpu = load_model(recipe.run_dir, torch.device("cpu"))
    x = np.random.default_rng(0).random((4, 1, 32, 32)).astype(np.float32)
    a, b = reconstruct_slices(gpu, x, seed=1), reconstruct_slices(cpu, x, seed=1)
    assert np.abs(a - b).mean() < 0.02  # bf16 on the GPU, fp32 on the CPU, the same noise


def test_compiled_modules_train_with_grad_and_keep_their_names() -> None:
    from cdiff_cli.config import recipe_from_dict
    from cdiff_cli.train.loop import speed_up
    from cdiff_cli.train.stages import DiffusionNet
    from conftest import tiny_recipe_dict

    recipe = recipe_from_dict(tiny_recipe_dict(train={"compile": True, "channels_last": True}))
    net = DiffusionNet(recipe).cuda().train()
    names = list(net.state_dict())
    speed_up(net, recipe.train)
    x, t = torch.rand(4, 1, 32, 32, device="cuda"), torch.randint(0, 1000, (4,), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, _ = net(x, t, torch.randn_like(x))
    assert loss.requires_grad and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in net.unet.parameters() if p.requires_grad)
    assert list(net.state_dict()) == names


def test_brain_mask_network_runs_on_the_gpu_as_on_the_cpu() -> None:
    """`auto` outlines the brain with the network on the diffusion model's device: same probabilities."""
    import numpy as np

    from cdiff_cli.infer.brain import brain_probability
    from cdiff_cli.synthetic.brainmask import nova_like_slices

    img = nova_like_slices(["mni152"], 1, seed=4242)[0][0]
    cpu, meta = brain_probability(img)
    gpu, meta_gpu = brain_probability(img, device="cuda")
    assert meta == meta_gpu and np.abs(cpu - gpu).max() < 1e-3

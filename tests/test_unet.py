"""The conditional U-Net: shapes, zero-init, conditioning on z and t, gradients, autocast."""

from __future__ import annotations

import pytest
import torch

from cdiff_cli.config import UNetConfig
from cdiff_cli.models.nn import AttentionBlock, timestep_embedding
from cdiff_cli.models.unet import ConditionalUNet

Z = 8



def tiny(cond_mode: str = "adagn", **kw) -> ConditionalUNet:
    cfg = UNetConfig(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, groups=8, num_heads=2, head_channels=-1,
                     attention_levels=(1,), time_embed_dim=32, cond_mode=cond_mode, **kw)
    torch.manual_seed(0)
    return ConditionalUNet(cfg, in_channels=1, out_channels=1, z_dim=Z)


def unzero(model: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    """Undo the zero-init (as a few training steps would) so that every path is live."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)) and not m.weight.any():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std)
    return model


def inputs(b: int = 2, hw: tuple[int, int] = (16, 16)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(b, 1, *hw, generator=g), torch.tensor([10, 700])[:b], torch.randn(b, Z, generator=g)


@pytest.mark.parametrize("mode", ["adagn", "concat", "none"])
def test_shapes_and_zero_output_at_init(mode: str) -> None:
    net = tiny(mode)
    x, t, z = inputs(2, (16, 24))  # non-square
    out = net(x, t, z if mode != "none" else None)
    assert out.shape == (2, 1, 16, 24)
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised output conv
    assert net.downsample_factor == 2


@pytest.mark.parametrize("mode", ["adagn", "concat"])
def test_z_changes_the_output(mode: str) -> None:
    net = unzero(tiny(mode)).eval()
    x, t, z = inputs()
    a, b = net(x, t, z), net(x, t, -z)
    assert (a - b).abs().max() > 1e-3
    assert torch.equal(net(x, t, z), a)  # deterministic in eval mode
    with pytest.raises(ValueError, match="pass z"):
        net(x, t, None)


def test_unconditional_ignores_z() -> None:
    net = unzero(tiny("none")).eval()
    x, t, z = inputs()
    assert torch.equal(net(x, t, z), net(x, t, None))
    assert net(x, t).abs().max() > 1e-3


def test_timestep_changes_the_output() -> None:
    net = unzero(tiny("adagn")).eval()
    x, _, z = inputs()
    assert (net(x, torch.tensor([10, 10]), z) - net(x, torch.tensor([900, 900]), z)).abs().max() > 1e-3
    e = timestep_embedding(torch.tensor([0, 1, 999]), 16)
    assert e.shape == (3, 16) and not torch.allclose(e[1], e[2])


@pytest.mark.parametrize("mode,proj", [("adagn", "z_layers"), ("concat", "z_embed")])
def test_gradient_reaches_the_z_projection_and_z(mode: str, proj: str) -> None:
    net = unzero(tiny(mode))
    x, t, z = inputs()
    z.requires_grad_(True)
    net(x, t, z).square().mean().backward()
    grads = [p.grad for n, p in net.named_parameters() if proj in n and n.endswith("weight")]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    assert z.grad is not None and z.grad.abs().sum() > 0  # the encoder can be trained through it


def test_zero_init_blocks_still_learn() -> None:
    net = tiny("adagn")
    x, t, z = inputs()
    net(x, t, z).sub(x).square().mean().backward()
    out_conv = net.out[-1]
    assert out_conv.weight.grad is not None and out_conv.weight.grad.abs().sum() > 0


def test_bad_size_and_attention_heads() -> None:
    net = tiny("adagn")
    x, t, z = inputs(2, (15, 16))
    with pytest.raises(ValueError, match="divisible"):
        net(x, t, z)
    assert AttentionBlock(64, groups=8, num_heads=4, head_channels=16).num_heads == 4
    assert AttentionBlock(64, groups=8, num_heads=3, head_channels=32).num_heads == 2  # head_channels wins


def test_attention_placement() -> None:
    net = tiny("adagn", mid_attention=True)
    n_attn = sum(isinstance(m, AttentionBlock) for m in net.modules())
    # level 1: 1 input block + 2 output blocks, plus the middle block
    assert n_attn == 4
    plain = tiny("adagn", mid_attention=False)
    assert sum(isinstance(m, AttentionBlock) for m in plain.modules()) == 3


def test_bf16_autocast_runs() -> None:
    net = unzero(tiny("concat"))
    x, t, z = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, t, z)
    assert out.shape == x.shape and torch.isfinite(out.float()).all()
    ref = net(x, t, z)
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max() + 1e-3


def test_reference_configuration() -> None:
    """The paper's U-Net: attention only in the middle (4 heads of 64), sinusoidal(128) -> 512."""
    net = ConditionalUNet(UNetConfig(), in_channels=1, out_channels=1, z_dim=128)
    attn = [(n, m) for n, m in net.named_modules() if isinstance(m, AttentionBlock)]
    assert [n for n, _ in attn] == ["middle_block.1"] and attn[0][1].num_heads == 4
    assert net.time_embed[0].in_features == 128 and net.time_embed[2].out_features == 512
    assert net.downsample_factor == 4
    assert sum(isinstance(m, torch.nn.GroupNorm) and m.num_groups == 32 for m in net.modules()) > 20

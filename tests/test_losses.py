"""epsilon-InfoNCE, the diffusion loss and the batched views."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cdiff_cli.config import ViewConfig
from cdiff_cli.train.losses import diffusion_loss, eps_info_nce
from cdiff_cli.train.views import class_invariant_view, erase_boxes, random_affine, train_augment


def _pairs(b: int = 6, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(b, d, generator=g, dtype=torch.float64)
    return z1, z1 + 0.5 * torch.randn(b, d, generator=g, dtype=torch.float64)


def _nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """Standard NT-Xent (SimCLR) via cross-entropy on the masked similarity matrix."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    sim = z @ z.T / tau
    sim.fill_diagonal_(float("-inf"))
    b = z1.shape[0]
    labels = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
    return F.cross_entropy(sim, labels)


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_eps_zero_is_nt_xent(tau: float) -> None:
    z1, z2 = _pairs()
    ours = eps_info_nce(z1, z2, eps=0.0, temperature=tau)
    assert ours.item() == pytest.approx(_nt_xent(z1, z2, tau).item(), abs=1e-6)


def test_margin_lowers_the_loss_and_matches_the_formula() -> None:
    z1, z2 = _pairs()
    losses = [eps_info_nce(z1, z2, eps=e, temperature=0.1).item() for e in (0.0, 0.5, 1.0, 2.0)]
    assert losses == sorted(losses, reverse=True) and losses[0] > losses[-1]
    # direct evaluation of l_i = -[s_ip - log(exp(s_ip - eps) + sum_{k != i,p} exp(s_ik))]
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    s = z @ z.T / 0.1
    b, eps, total = z1.shape[0], 0.5, 0.0
    for i in range(2 * b):
        p = (i + b) % (2 * b)
        others = sum(torch.exp(s[i, k]) for k in range(2 * b) if k not in (i, p))
        total += -(s[i, p] - torch.log(torch.exp(s[i, p] - eps) + others))
    assert losses[1] == pytest.approx((total / (2 * b)).item(), abs=1e-5)


def test_perfect_alignment_gives_a_low_loss_and_finite_gradients() -> None:
    z = torch.eye(8)[:4] * 3.0  # 4 orthogonal directions, pairs identical
    z1 = z.clone().requires_grad_(True)
    loss = eps_info_nce(z1, z.clone(), eps=0.5, temperature=0.07)
    assert loss.item() < 1e-4
    rnd1, rnd2 = _pairs(32, 8, seed=1)
    bad = eps_info_nce(rnd1.float(), rnd2.flip(0).float(), eps=0.5, temperature=0.07)
    assert bad.item() > 1.0  # mismatched pairs: high loss
    loss.backward()
    assert torch.isfinite(z1.grad).all()
    sharp = _pairs(16, 4)[0].float().requires_grad_(True)
    extreme = eps_info_nce(sharp, sharp.detach() * 1.01, eps=5.0, temperature=0.005)  # stable: logsumexp
    extreme.backward()
    assert torch.isfinite(extreme) and torch.isfinite(sharp.grad).all()


def test_eps_info_nce_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        eps_info_nce(torch.zeros(4, 3), torch.zeros(5, 3))


def test_diffusion_loss() -> None:
    a, b = torch.zeros(2, 1, 3, 3), torch.full((2, 1, 3, 3), 2.0)
    assert diffusion_loss(a, b, "l1").item() == pytest.approx(2.0)
    assert diffusion_loss(a, b, "l2").item() == pytest.approx(4.0)
    assert diffusion_loss(a.bfloat16(), b.bfloat16(), "l1").dtype == torch.float32
    with pytest.raises(ValueError):
        diffusion_loss(a, b, "huber")  # type: ignore[arg-type]


# ---- views ---------------------------------------------------------------------------------


def _slices(b: int = 6, h: int = 32, w: int = 40) -> torch.Tensor:
    return torch.rand(b, 1, h, w, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1


def test_views_are_deterministic_per_generator() -> None:
    x, cfg = _slices(), ViewConfig()
    a = class_invariant_view(x, cfg, torch.Generator().manual_seed(3))
    b = class_invariant_view(x, cfg, torch.Generator().manual_seed(3))
    c = class_invariant_view(x, cfg, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    aug = [train_augment(x, torch.Generator().manual_seed(1)) for _ in range(2)]
    assert torch.equal(aug[0], aug[1]) and not torch.equal(aug[0], x)


def test_erasing_zeroes_one_box_per_sample() -> None:
    x = torch.ones(64, 1, 30, 50)
    cfg = ViewConfig(erase_p=1.0, erase_w=(0.5, 0.3), erase_h=(0.2, 0.3))
    out, box = erase_boxes(x, torch.Generator().manual_seed(0), cfg)
    assert torch.equal(out == 0, box)
    for i in range(64):
        rows = box[i, 0].any(1).nonzero().squeeze(1)
        cols = box[i, 0].any(0).nonzero().squeeze(1)
        h, w = rows.numel(), cols.numel()
        assert h > 0 and w > 0
        assert box[i, 0].sum() == h * w  # a filled rectangle
        assert rows.diff().eq(1).all() and cols.diff().eq(1).all()  # contiguous
        assert round(0.2 * 50) <= w <= 50 and round(0.05 * 30) <= h <= round(0.5 * 30)
    widths = box[:, 0].any(1).sum(-1).float()
    assert 0.35 * 50 < widths.mean() < 0.65 * 50  # ~ 0.5 W on average
    none, nobox = erase_boxes(x, torch.Generator().manual_seed(0), ViewConfig(erase_p=0.0))
    assert torch.equal(none, x) and not nobox.any()
    some = erase_boxes(x, torch.Generator().manual_seed(0), ViewConfig(erase_p=0.5))[1].flatten(1).any(1)
    assert 0.2 < some.float().mean() < 0.8


def test_positive_view_contains_an_erased_box() -> None:
    x = _slices(4)
    cfg = ViewConfig(erase_p=1.0, noise_std=0.0)
    v = class_invariant_view(x, cfg, torch.Generator().manual_seed(0))
    assert ((v == 0).flatten(1).sum(1) >= 0.05 * 32 * 0.05 * 40).all()
    # without erasing, noise or gamma the view is only a mild affine copy
    plain = ViewConfig(erase_p=0.0, noise_std=0.0, gamma=(1.0, 1.0))
    mild = class_invariant_view(x, plain, torch.Generator().manual_seed(0))
    assert (mild - x).abs().mean() < 0.25


def test_identity_affine_and_flip() -> None:
    x = _slices(2)
    same = random_affine(x, torch.Generator().manual_seed(0), rotate_deg=0.0, scale=0.0, translate=0.0)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    x = _slices(8)
    flips = train_augment(x, torch.Generator().manual_seed(0), rotate_deg=0.0, scale=0.0, translate=0.0, flip=True)
    kept = [torch.allclose(flips[i], x[i], atol=1e-5) for i in range(8)]
    flipped = [torch.allclose(flips[i], x[i].flip(-1), atol=1e-5) for i in range(8)]
    assert all(k or f for k, f in zip(kept, flipped)) and any(kept) and any(flipped)
    assert (train_augment(x, rotate_deg=0.0, scale=0.0, translate=0.0) - x).abs().max() < 1e-5  # no flip by default


def test_eps_info_nce_is_float32_under_bf16_autocast() -> None:
    """bf16 autocast (the CUDA default) must not quantise the temperature-scaled similarities."""
    z1, z2 = (t.float() for t in _pairs(32, 128, seed=3))
    full = eps_info_nce(z1, z2, eps=0.5, temperature=0.07)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = eps_info_nce(z1, z2, eps=0.5, temperature=0.07)
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(full.item(), abs=1e-4)

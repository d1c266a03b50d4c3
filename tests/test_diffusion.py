"""The Gaussian diffusion schedule, conversions and the reverse step."""

from __future__ import annotations

import math

import pytest
import torch

from cdiff_cli.config import DiffusionConfig
from cdiff_cli.diffusion.schedule import GaussianDiffusion, from_model_range, to_model_range



def test_cosine_schedule_properties() -> None:
    d = GaussianDiffusion(DiffusionConfig())
    assert d.betas.shape == (1000,) and d.betas.dtype == torch.float32
    assert (d.betas > 0).all() and (d.betas <= 0.999).all()
    assert torch.isclose(d.betas[-1], torch.tensor(0.999))  # the clip is reached at the very end
    assert (d.alphas_cumprod[1:] < d.alphas_cumprod[:-1]).all()  # strictly decreasing
    assert 0.999 < d.alphas_cumprod[0] < 1 and d.alphas_cumprod[-1] < 1e-6
    torch.testing.assert_close(d.alphas_cumprod_prev[1:], d.alphas_cumprod[:-1])
    assert d.alphas_cumprod_prev[0] == 1


def _f(u: float) -> float:
    return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2


def test_cosine_alphas_cumprod_closed_form() -> None:
    d = GaussianDiffusion(DiffusionConfig(timesteps=1000, cosine_s=0.008))
    for t in (0, 250, 500, 750):
        assert d.alphas_cumprod[t].item() == pytest.approx(_f((t + 1) / 1000) / _f(0), rel=1e-5)


def test_linear_schedule() -> None:
    d = GaussianDiffusion(DiffusionConfig(schedule="linear", beta_start=1e-4, beta_end=0.02, timesteps=200))
    assert d.betas[0].item() == pytest.approx(1e-4) and d.betas[-1].item() == pytest.approx(0.02)
    assert (d.betas[1:] > d.betas[:-1]).all()


def test_q_sample_known_values() -> None:
    d = GaussianDiffusion(DiffusionConfig())
    x0 = torch.full((2, 1, 4, 4), 0.5)
    noise = torch.full((2, 1, 4, 4), -1.0)
    t = torch.tensor([0, 500])
    out = d.q_sample(x0, t, noise)
    for i, ti in enumerate(t.tolist()):
        ab = _f((ti + 1) / 1000) / _f(0)  # closed form, float64
        expect = math.sqrt(ab) * 0.5 - math.sqrt(1 - ab)
        torch.testing.assert_close(out[i], torch.full((1, 4, 4), expect, dtype=torch.float32), atol=1e-6, rtol=0)
    assert out[0].mean() > 0.45  # barely noised at t = 0
    assert out[1].mean() < 0  # mostly noise at t = 500


def test_x0_eps_round_trip() -> None:
    d = GaussianDiffusion(DiffusionConfig())
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(8, 1, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(8, 1, 8, 8, generator=g)
    t = torch.tensor([0, 1, 10, 100, 250, 500, 750, 900])
    x_t = d.q_sample(x0, t, eps)
    torch.testing.assert_close(d.predict_x0_from_eps(x_t, t, eps), x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(d.predict_eps_from_x0(x_t, t, x0), eps, atol=1e-5, rtol=1e-5)


def test_objectives_training_target_and_model_x0() -> None:
    x0, noise = torch.rand(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = torch.tensor([100, 600])
    dx = GaussianDiffusion(DiffusionConfig(objective="x0"))
    de = GaussianDiffusion(DiffusionConfig(objective="eps"))
    assert dx.training_target(x0, noise) is x0 and de.training_target(x0, noise) is noise
    x_t = dx.q_sample(x0, t, noise)
    assert torch.equal(dx.model_x0(x0, x_t, t), x0)  # x0 objective: the output is x0
    torch.testing.assert_close(de.model_x0(noise, x_t, t), x0, atol=1e-5, rtol=0)  # eps -> x0


def test_model_range_round_trip() -> None:
    x = torch.rand(3, 1, 5, 5)
    assert to_model_range(torch.zeros(1)).item() == -1 and to_model_range(torch.ones(1)).item() == 1
    torch.testing.assert_close(from_model_range(to_model_range(x)), x)


def test_sample_noise_follows_config_and_generator() -> None:
    dg = GaussianDiffusion(DiffusionConfig(noise="gaussian"))
    ds = GaussianDiffusion(DiffusionConfig(noise="simplex"))
    a = ds.sample_noise((2, 1, 16, 24), torch.Generator().manual_seed(1))
    b = ds.sample_noise((2, 1, 16, 24), torch.Generator().manual_seed(1))
    assert a.shape == (2, 1, 16, 24) and torch.equal(a, b)
    gauss = dg.sample_noise((4000,), torch.Generator().manual_seed(0))
    assert abs(gauss.std().item() - 1) < 0.05
    # simplex noise is spatially smooth, Gaussian noise is not
    smooth = (a[..., 1:] - a[..., :-1]).abs().mean() / a.std()
    rough = (gauss[1:] - gauss[:-1]).abs().mean() / gauss.std()
    assert smooth < 0.3 * rough
    t = ds.sample_timesteps(500, torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 999 and t.unique().numel() > 300


class _Oracle(torch.nn.Module):
    """Predicts the true x0 (objective x0)."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x0 = x0

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        return self.x0


def test_p_sample_step() -> None:
    d = GaussianDiffusion(DiffusionConfig(noise="gaussian"))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 1, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(2, 1, 8, 8, generator=g)
    model = _Oracle(x0)
    # t = 0: the posterior mean is x0 and no noise is added
    t0 = torch.zeros(2, dtype=torch.long)
    out, x0_hat = d.p_sample_step(model, d.q_sample(x0, t0, eps), t0)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(x0_hat, x0)
    # t > 0 with zero noise: exactly the posterior mean; with noise: its spread is the posterior std
    t = torch.full((2,), 300)
    x_t = d.q_sample(x0, t, eps)
    mean, _ = d.p_sample_step(model, x_t, t, noise=torch.zeros_like(x_t))
    expect = d.posterior_mean_coef1[300] * x0 + d.posterior_mean_coef2[300] * x_t
    torch.testing.assert_close(mean, expect)
    big = torch.randn(2, 1, 64, 64, generator=g)
    sample, _ = d.p_sample_step(_Oracle(torch.zeros_like(big)), big, t, generator=g)
    spread = (sample - d.posterior_mean_coef2[300] * big).std()
    assert spread.item() == pytest.approx(d.posterior_variance[300].sqrt().item(), rel=0.05)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_p_sample_step_variance(variance: str) -> None:
    d = GaussianDiffusion(DiffusionConfig(noise="gaussian", schedule="linear"))
    x_t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    noise = torch.randn_like(x_t)
    model = _Oracle(torch.zeros_like(x_t))
    for step in (1, 100, 999):
        t = torch.full((2,), step)
        mean, _ = d.p_sample_step(model, x_t, t, noise=torch.zeros_like(x_t), variance=variance)
        sample, _ = d.p_sample_step(model, x_t, t, noise=noise, variance=variance)
        var = d.betas[step] if variance == "fixed_large" else d.posterior_variance[step]  # AnoDDPM: beta_t
        torch.testing.assert_close(sample - mean, var.sqrt() * noise, atol=1e-6, rtol=1e-4)
    assert d.betas[100] > d.posterior_variance[100]  # the two really differ


def test_to_device_keeps_schedule() -> None:
    d = GaussianDiffusion(DiffusionConfig()).to("cpu")
    assert isinstance(d, GaussianDiffusion) and d.alphas_cumprod.device.type == "cpu"
    if torch.cuda.is_available():
        d.to("cuda")
        x = torch.ones(2, 1, 4, 4, device="cuda")
        assert d.q_sample(x, torch.tensor([1, 2], device="cuda"), x).device.type == "cuda"

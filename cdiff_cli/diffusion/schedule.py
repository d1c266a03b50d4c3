"""The Gaussian diffusion process: schedule, forward noising, x0 / eps conversions, one
reverse step (guided-diffusion's ``gaussian_diffusion.py``, trimmed to what we use).

A plain class holding the schedule as tensors (computed in float64, stored in float32);
the network is passed in where one is needed. Images live in [-1, 1] inside the process:
use :func:`to_model_range` / :func:`from_model_range` at the boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cdiff_cli.config import DiffusionConfig, Variance
from cdiff_cli.diffusion.simplex import simplex_noise, simplex_noise_per_slice


@dataclass
class SliceNoise:
    """The randomness of one batch of slices: one generator per slice (seeded by the slice's index
    within its input) and a ``phase`` generator seeded by the call's seed alone."""

    generators: list[torch.Generator]
    phase: torch.Generator


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] intensities -> [-1, 1]."""
    return x * 2.0 - 1.0


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] intensities."""
    return (x + 1.0) * 0.5


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule: abar(t) = f(t) / f(0), f(t) = cos((t/T + s) / (1 + s) * pi/2)^2."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = 1 - f[1:] / f[:-1]
    return betas.clamp(max=max_beta)


def linear_betas(timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)


class GaussianDiffusion:
    """``GaussianDiffusion(cfg)``: the T-step process of ``cfg`` with its noise (simplex or Gaussian)."""

    def __init__(self, cfg: DiffusionConfig) -> None:
        self.cfg = cfg
        self.num_timesteps = cfg.timesteps
        if cfg.schedule == "cosine":
            betas = cosine_betas(cfg.timesteps, cfg.cosine_s)
        else:
            betas = linear_betas(cfg.timesteps, cfg.beta_start, cfg.beta_end)
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        buffers = {
            "betas": betas,
            "alphas_cumprod": abar,
            "alphas_cumprod_prev": abar_prev,
            "sqrt_alphas_cumprod": abar.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - abar).sqrt(),
            "sqrt_recip_alphas_cumprod": (1.0 / abar).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / abar - 1.0).sqrt(),
            "posterior_variance": posterior_variance,
            # the variance is 0 at t = 0: log-clip it with the next one, as guided-diffusion does
            "posterior_log_variance_clipped": torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]])),
            # guided-diffusion's "fixed large" variance, beta_t (AnoDDPM's reverse steps): same clip at t = 0
            "log_variance_fixed_large": torch.log(torch.cat([posterior_variance[1:2], betas[1:]])),
            "posterior_mean_coef1": betas * abar_prev.sqrt() / (1.0 - abar),
            "posterior_mean_coef2": (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
        }
        self._names = tuple(buffers)
        for name, value in buffers.items():
            setattr(self, name, value.float())
        self.device = torch.device("cpu")

    def to(self, device: torch.device | str) -> GaussianDiffusion:
        """Move the schedule tensors to ``device`` (in place); returns self."""
        self.device = torch.device(device)
        for name in self._names:
            setattr(self, name, getattr(self, name).to(self.device))
        return self

    @staticmethod
    def _extract(arr: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """arr[t] shaped (B, 1, ..., 1) to broadcast against ``like``."""
        out = arr.to(like.device)[t.long().to(like.device)]
        return out.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)

    # ---- noise and timesteps ------------------------------------------------------------
    def sample_noise(
        self,
        shape: tuple[int, ...] | torch.Size,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Noise of ``shape`` following ``cfg.noise``: a fresh simplex field per sample, or N(0, 1)."""
        device = torch.device(device) if device is not None else self.device
        if self.cfg.noise == "simplex":
            return simplex_noise(tuple(shape), self.cfg.simplex, generator, device=device, dtype=dtype)
        gdev = generator.device if generator is not None else torch.device("cpu")
        return torch.randn(tuple(shape), generator=generator, device=gdev, dtype=dtype).to(device)

    def sample_noise_per_slice(
        self,
        shape: tuple[int, ...] | torch.Size,
        noise: SliceNoise,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Noise of ``shape`` (R*B, ...) ordered (r, slice), slice b's R fields drawn from its own
        generator (``noise.generators[b]``): a slice's noise does not depend on the other slices of its
        batch. Simplex fields share one lattice placement per call (``noise.phase``), which keeps the
        batch one contraction per octave."""
        b = len(noise.generators)
        if b == 0 or shape[0] % b:
            raise ValueError(f"shape {tuple(shape)}: the leading size must be a multiple of {b} generators")
        device = torch.device(device) if device is not None else self.device
        if self.cfg.noise == "simplex":
            return simplex_noise_per_slice(tuple(shape), self.cfg.simplex, noise.generators, noise.phase,
                                           device=device, dtype=dtype)
        per = (shape[0] // b, *shape[1:])
        parts = [self.sample_noise(per, g, device=device, dtype=dtype) for g in noise.generators]  # B x (R, ...)
        return torch.stack(parts, 1).reshape(tuple(shape))  # (R, B, ...) -> (R*B, ...)

    def sample_timesteps(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """t ~ U{0, ..., T-1}, (B,) long."""
        gdev = generator.device if generator is not None else torch.device("cpu")
        t = torch.randint(0, self.num_timesteps, (batch,), generator=generator, device=gdev)
        return t.to(device if device is not None else self.device)

    # ---- forward process and conversions ------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        return self._extract(self.sqrt_alphas_cumprod, t, x0) * x0 + self._extract(
            self.sqrt_one_minus_alphas_cumprod, t, x0
        ) * noise

    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - self._extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        ) * eps

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / self._extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        )

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network learns to output: x0 (``objective: x0``) or the noise (``eps``)."""
        return x0 if self.cfg.objective == "x0" else noise

    def model_x0(self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's output converted to an x0 estimate, for either objective."""
        if self.cfg.objective == "x0":
            return model_out
        return self.predict_x0_from_eps(x_t, t, model_out)

    # ---- reverse process ----------------------------------------------------------------
    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                    variance: Variance = "fixed_small") -> tuple[torch.Tensor, torch.Tensor]:
        """Mean of q(x_{t-1} | x_t, x0) and the log-variance of a reverse step: the posterior's
        (``fixed_small``) or beta_t (``fixed_large``, AnoDDPM's)."""
        coef1 = self._extract(self.posterior_mean_coef1, t, x_t)
        coef2 = self._extract(self.posterior_mean_coef2, t, x_t)
        mean = coef1 * x0 + coef2 * x_t
        log_var = self.log_variance_fixed_large if variance == "fixed_large" else self.posterior_log_variance_clipped
        return mean, self._extract(log_var, t, x_t)

    @torch.no_grad()
    def p_sample_step(
        self,
        model: torch.nn.Module,
        x_t: torch.Tensor,
        t: torch.Tensor,
        z: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        clip_x0: bool = True,
        variance: Variance = "fixed_small",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One ancestral DDPM step x_t -> x_{t-1} with ``model(x_t, t, z)``; returns (x_{t-1}, x0_hat).

        The step's noise follows ``cfg.noise`` unless given (AnoDDPM uses simplex noise here),
        scaled by the ``variance`` of :meth:`q_posterior`; no noise is added at t = 0.
        """
        x0 = self.model_x0(model(x_t, t, z), x_t, t)
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        mean, log_var = self.q_posterior(x0, x_t, t, variance)
        if noise is None:
            noise = self.sample_noise(x_t.shape, generator, device=x_t.device, dtype=x_t.dtype)
        nonzero = (t != 0).to(x_t.dtype).view(-1, *([1] * (x_t.dim() - 1)))
        return mean + nonzero * torch.exp(0.5 * log_var) * noise, x0

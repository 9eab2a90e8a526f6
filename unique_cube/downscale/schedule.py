"""Denoising diffusion: noise schedules and samplers, kept apart from the network.

The network is any callable ``model(x_t, t, condition) -> predicted noise``; the schedule
holds the betas and their cumulative products; :func:`ddpm_sample` (ancestral, Ho et al. 2020)
and :func:`ddim_sample` (Song et al. 2021, few steps, ``eta`` 0 deterministic) write the
denoising loop out in a few lines. Seeded: the same generator seed gives the same sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "Denoiser",
    "NoiseSchedule",
    "cosine_betas",
    "ddim_sample",
    "ddpm_sample",
    "linear_betas",
]


Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def linear_betas(steps: int, start: float = 1e-4, end: float = 0.02) -> torch.Tensor:
    """Ho et al. (2020): betas rising linearly (defined for 1000 steps; scaled to ``steps``)."""
    scale = 1000 / steps
    return torch.linspace(scale * start, scale * end, steps, dtype=torch.float64)


def cosine_betas(steps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal (2021): ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2), betas capped at 0.999."""
    t = torch.linspace(0, steps, steps + 1, dtype=torch.float64) / steps
    alphas_cumprod = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    return torch.clip(1 - alphas_cumprod[1:] / alphas_cumprod[:-1], 0, 0.999)


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete forward process q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I), t = 0 … T-1."""

    betas: torch.Tensor

    @classmethod
    def make(cls, kind: str = "cosine", steps: int = 1000) -> NoiseSchedule:
        if kind == "cosine":
            return cls(cosine_betas(steps))
        if kind == "linear":
            return cls(linear_betas(steps))
        raise ValueError(f"unknown noise schedule {kind!r}; expected 'cosine' or 'linear'")

    @property
    def steps(self) -> int:
        return int(self.betas.shape[0])

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(1 - self.betas, dim=0)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t for clean ``x0`` at steps ``t`` (one per batch item) with ``noise``."""
        abar = self.alphas_cumprod.to(x0.device, x0.dtype)[t].view(-1, *([1] * (x0.ndim - 1)))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def _step_tensor(t: int, batch: int, device) -> torch.Tensor:
    return torch.full((batch,), t, dtype=torch.long, device=device)


@torch.no_grad()
def ddpm_sample(
    model: Denoiser,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    condition: torch.Tensor | None = None,
    *,
    clip: float | None = None,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Ancestral sampling through all T steps (posterior variance β̃_t). ``clip`` bounds the
    predicted x_0 at every step (what keeps an imperfect network's early steps finite)."""
    betas = schedule.betas.to(device, torch.float32)
    abar = schedule.alphas_cumprod.to(device, torch.float32)
    x = torch.randn(shape, generator=generator, device=device)
    for t in reversed(range(schedule.steps)):
        eps = model(x, _step_tensor(t, shape[0], device), condition)
        x0 = _predict_x0(x, eps, abar[t], clip)
        if t == 0:
            return x0
        abar_prev = abar[t - 1]
        # Mean of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 7).
        mean = (abar_prev.sqrt() * betas[t] * x0 + (1 - betas[t]).sqrt() * (1 - abar_prev) * x) / (
            1 - abar[t]
        )
        variance = betas[t] * (1 - abar_prev) / (1 - abar[t])
        x = mean + variance.sqrt() * torch.randn(shape, generator=generator, device=device)
    return x


def _predict_x0(x: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor, clip: float | None):
    x0 = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
    return x0 if clip is None else x0.clamp(-clip, clip)


@torch.no_grad()
def ddim_sample(
    model: Denoiser,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    condition: torch.Tensor | None = None,
    *,
    steps: int = 25,
    eta: float = 0.0,
    clip: float | None = None,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """DDIM on ``steps`` evenly spaced steps of the schedule (``eta`` 0: deterministic);
    ``clip`` bounds the predicted x_0 and the noise is re-derived from it."""
    abar = schedule.alphas_cumprod.to(device, torch.float32)
    times = torch.linspace(schedule.steps - 1, 0, steps).round().long().tolist()
    x = torch.randn(shape, generator=generator, device=device)
    for i, t in enumerate(times):
        eps = model(x, _step_tensor(t, shape[0], device), condition)
        x0 = _predict_x0(x, eps, abar[t], clip)
        if i == len(times) - 1:
            return x0
        if clip is not None:
            eps = (x - abar[t].sqrt() * x0) / (1 - abar[t]).sqrt()
        prev = abar[times[i + 1]]
        sigma = eta * ((1 - prev) / (1 - abar[t]) * (1 - abar[t] / prev)).sqrt()
        direction = (1 - prev - sigma**2).clamp(min=0).sqrt() * eps
        x = prev.sqrt() * x0 + direction
        if eta > 0:
            x = x + sigma * torch.randn(shape, generator=generator, device=device)
    return x

"""Noise schedules and samplers, checked numerically with an exact denoiser for Gaussian data."""

from __future__ import annotations

import pytest
import torch

from unique_cube.downscale.schedule import NoiseSchedule, ddim_sample, ddpm_sample

MEAN, STD = 2.0, 0.5


def gaussian_denoiser(schedule: NoiseSchedule):
    """E[ε | x_t] when x_0 ~ N(MEAN, STD²): the best any network could learn."""
    abar = schedule.alphas_cumprod.float()

    def model(x, t, condition):
        a = abar[t].view(-1, *([1] * (x.ndim - 1)))
        return (1 - a).sqrt() / (a * STD**2 + 1 - a) * (x - a.sqrt() * MEAN)

    return model


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_schedules_run_from_data_to_noise(kind: str) -> None:
    schedule = NoiseSchedule.make(kind, 1000)
    abar = schedule.alphas_cumprod
    assert schedule.steps == 1000
    assert abar[0] > 0.99 and abar[-1] < 1e-3
    assert bool((abar[1:] < abar[:-1]).all())
    with pytest.raises(ValueError, match="unknown noise schedule"):
        NoiseSchedule.make("quadratic")


def test_q_sample_has_the_forward_marginals() -> None:
    schedule = NoiseSchedule.make("cosine", 100)
    x0 = torch.full((20_000, 1), MEAN)
    t = torch.full((20_000,), 50)
    xt = schedule.q_sample(
        x0, t, torch.randn(20_000, 1, generator=torch.Generator().manual_seed(0))
    )
    abar = float(schedule.alphas_cumprod[50])
    assert float(xt.mean()) == pytest.approx(abar**0.5 * MEAN, abs=0.02)
    assert float(xt.std()) == pytest.approx((1 - abar) ** 0.5, abs=0.02)


def test_ddpm_and_ddim_recover_the_data_distribution() -> None:
    schedule = NoiseSchedule.make("cosine", 200)
    model = gaussian_denoiser(schedule)
    shape = (20_000, 1)

    def seeded():
        return torch.Generator().manual_seed(1)

    full = ddpm_sample(model, schedule, shape, generator=seeded())
    assert float(full.mean()) == pytest.approx(MEAN, abs=0.03)
    assert float(full.std()) == pytest.approx(STD, rel=0.03)
    # DDIM is an ODE solver: its error shrinks with the number of steps.
    errors = []
    for steps in (10, 20, 50, 200):
        fast = ddim_sample(model, schedule, shape, steps=steps, generator=seeded())
        assert float(fast.mean()) == pytest.approx(MEAN, abs=0.03)
        errors.append(abs(float(fast.std()) - STD))
    assert errors == sorted(errors, reverse=True)
    assert errors[1] < 0.1 * STD and errors[-1] < 0.02 * STD


def test_sampling_is_seeded() -> None:
    schedule = NoiseSchedule.make("cosine", 50)
    model = gaussian_denoiser(schedule)
    a = ddpm_sample(model, schedule, (4, 1, 8, 8), generator=torch.Generator().manual_seed(7))
    b = ddpm_sample(model, schedule, (4, 1, 8, 8), generator=torch.Generator().manual_seed(7))
    c = ddpm_sample(model, schedule, (4, 1, 8, 8), generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    d = ddim_sample(model, schedule, (4, 1, 8, 8), steps=10, eta=0.5,
                    generator=torch.Generator().manual_seed(7))  # fmt: skip
    e = ddim_sample(model, schedule, (4, 1, 8, 8), steps=10, eta=0.5,
                    generator=torch.Generator().manual_seed(7))  # fmt: skip
    assert torch.equal(d, e)

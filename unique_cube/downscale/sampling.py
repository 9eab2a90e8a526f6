"""Sampling the downscaler: a tile's ensemble members, and a whole map from its tiles.

The network predicts the clean residual x_0 (clipped to ±``RESIDUAL_CLIP``), which
:func:`as_noise_predictor` turns into the noise prediction the DDIM sampler takes; an untrained
network (zero output layer) returns the bilinear map. Every tile has its own generator, seeded
by the seed and its place in the grid's plan, so the same seed gives the same map; K members
give the ensemble mean and the per-pixel spread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from unique_cube.downscale.checkpoint import Checkpoint
from unique_cube.downscale.conditions import RESIDUAL_CLIP, validate_condition
from unique_cube.downscale.schedule import NoiseSchedule, ddim_sample
from unique_cube.downscale.tiling import blend_tiles, tile_plan

__all__ = ["as_noise_predictor", "downscale", "sample_tile", "torch_threads"]


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's CPU threads set to ``threads`` for the block, then restored: a thread count
    set by the pipeline, never inherited from the machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def as_noise_predictor(model, schedule: NoiseSchedule, prediction: str):
    """The samplers take ε-predictors; an x_0-predicting network is converted on the fly."""
    if prediction == "epsilon":
        return model
    abar = schedule.alphas_cumprod.float()

    def predict_noise(x, t, condition):
        a = abar.to(x.device)[t].view(-1, *([1] * (x.ndim - 1)))
        x0 = model(x, t, condition).clamp(-RESIDUAL_CLIP, RESIDUAL_CLIP)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    return predict_noise


@torch.no_grad()
def sample_tile(
    ckpt: Checkpoint,
    condition_tile: np.ndarray,
    *,
    samples: int,
    ddim_steps: int,
    seed: int,
    ty: int,
    tx: int,
    device: str = "cpu",
) -> np.ndarray:
    """Residual members (K, h, w) for one tile's conditions (C, h, w), in network units.

    The generator is seeded from ``seed`` and the tile's grid position only, so a tile gives
    the same residual wherever and whenever it is sampled."""
    _, tile_h, tile_w = condition_tile.shape
    denoiser = as_noise_predictor(ckpt.model.to(device), ckpt.schedule, ckpt.prediction)
    cond = torch.from_numpy(condition_tile).to(device)[None].expand(samples, -1, -1, -1)
    generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + ty * 1009 + tx)
    return ddim_sample(
        denoiser, ckpt.schedule, (samples, 1, tile_h, tile_w), cond,
        steps=ddim_steps, clip=RESIDUAL_CLIP, generator=generator, device=device,
    )[:, 0].cpu().numpy()  # fmt: skip


def downscale(
    ckpt: Checkpoint,
    condition: np.ndarray,
    *,
    samples: int = 4,
    ddim_steps: int = 25,
    tile: int = 128,
    overlap: int = 32,
    seed: int = 0,
    device: str = "cpu",
) -> np.ndarray:
    """``samples`` ensemble members (K, H, W) of 30 m GPP (gC m-2 d-1) for one condition
    stack (C, H, W): overlapping tiles blended with a raised-cosine window."""
    validate_condition(condition, ckpt.model.config["cond_channels"], ckpt.scheme)
    plan = tile_plan(condition.shape[1], condition.shape[2], tile=tile, overlap=overlap)
    residuals = [
        sample_tile(ckpt, condition[(slice(None), *t.window)], samples=samples,
                    ddim_steps=ddim_steps, seed=seed, ty=t.ty, tx=t.tx, device=device)
        for t in plan
    ]  # fmt: skip
    return blend_tiles(condition, plan, residuals, overlap=overlap, **ckpt.blend_options)

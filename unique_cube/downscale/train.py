"""``unique-cube train-downscaler``: the diffusion downscaler (S1, S2) or the pure-pixel baseline.

:func:`train` is the training loop: random patches of (condition, GPP_L) pairs, the loss masked
where GPP_L is missing (clouds), the network predicting the clean residual of GPP_L over the
bilinear GPP_M. :func:`train_downscaler` is the command: the pipeline's training pairs
(:mod:`unique_cube.downscale.pairs`), static layers for S2, a checkpoint written at the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import dask
import numpy as np
import torch

from unique_cube.config.pipeline import Pipeline
from unique_cube.downscale.checkpoint import Checkpoint, save_checkpoint
from unique_cube.downscale.conditions import GPP_SCALE, normalise_static
from unique_cube.downscale.network import ConditionalUNet
from unique_cube.downscale.pairs import Pairs, cached_pairs, pair_conditions, static_and_types
from unique_cube.downscale.pure_pixel import PurePixelModel
from unique_cube.downscale.sampling import torch_threads
from unique_cube.downscale.schedule import NoiseSchedule
from unique_cube.errors import DownscaleError
from unique_cube.gpp.features import FEATURES
from unique_cube.inputs.search import open_catalog

__all__ = ["train", "train_downscaler"]


def train(
    conditions: np.ndarray,
    targets: np.ndarray,
    *,
    scheme: str,
    static_info: dict,
    steps: int = 1500,
    batch: int = 8,
    patch: int = 64,
    base: int = 24,
    mults: tuple[int, ...] = (1, 2, 2),
    schedule_steps: int = 1000,
    lr: float = 2e-3,
    seed: int = 0,
    min_valid: float = 0.5,
    progress: Callable[[str], None] | None = None,
) -> tuple[Checkpoint, list[float]]:
    """Train on random patches of (condition, target) pairs.

    ``conditions`` (N, C, H, W) from :func:`condition_stack`; ``targets`` (N, H, W) GPP_L in
    gC m-2 d-1, NaN where missing. Patches with less than ``min_valid`` of their target
    present are redrawn. Returns the checkpoint and the loss history.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n, channels, height, width = conditions.shape
    if targets.shape != (n, height, width):
        raise DownscaleError(f"targets {targets.shape} do not match conditions {conditions.shape}")
    if patch > min(height, width):
        patch = min(height, width)
    residual = (targets / GPP_SCALE - conditions[:, 0]).astype("float32")
    valid = np.isfinite(residual)
    residual = np.where(valid, residual, 0.0).astype("float32")
    schedule = NoiseSchedule.make("cosine", schedule_steps)
    model = ConditionalUNet(channels, base=base, mults=mults)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    losses: list[float] = []
    started = time.perf_counter()
    for step in range(steps):
        xs, cs, ms = [], [], []
        while len(xs) < batch:
            i = int(rng.integers(n))
            y0 = int(rng.integers(height - patch + 1))
            x0 = int(rng.integers(width - patch + 1))
            window = (slice(y0, y0 + patch), slice(x0, x0 + patch))
            mask = valid[i][window]
            if mask.mean() < min_valid:
                continue
            flip = rng.random() < 0.5
            sample = residual[i][window], conditions[i][(slice(None), *window)], mask
            if flip:  # mirror east-west (aspect's sine flips with it in S2; a small bias)
                sample = tuple(np.ascontiguousarray(a[..., ::-1]) for a in sample)
            xs.append(sample[0])
            cs.append(sample[1])
            ms.append(sample[2])
        x0_t = torch.from_numpy(np.stack(xs))[:, None]
        cond = torch.from_numpy(np.stack(cs))
        mask_t = torch.from_numpy(np.stack(ms).astype("float32"))[:, None]
        t = torch.randint(0, schedule.steps, (batch,))
        noise = torch.randn_like(x0_t)
        # The network predicts the clean residual (x_0), not the noise: at high noise levels
        # an ε-error is amplified by 1/√ᾱ into x_0, an x_0-error is not.
        predicted = model(schedule.q_sample(x0_t, t, noise), t, cond)
        loss = (((predicted - x0_t) ** 2) * mask_t).sum() / mask_t.sum().clamp(min=1)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        scheduler.step()
        losses.append(float(loss))
        if progress and (step + 1) % max(1, steps // 10) == 0:
            progress(f"step {step + 1}/{steps}: loss {np.mean(losses[-50:]):.4f} "
                     f"({time.perf_counter() - started:.0f} s)")  # fmt: skip
    model.eval()
    meta = {"steps": steps, "batch": batch, "patch": patch, "lr": lr, "seed": seed,
            "train_pairs": int(n), "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    return Checkpoint(model, schedule, scheme, static_info, meta), losses


log = logging.getLogger(__name__)


def train_downscaler(pipeline: Pipeline, scheme: str, say: Callable[[str], None] = log.info):
    """Train one scheme (``s1``, ``s2`` or the ``pure_pixel`` baseline) on the GPP model's
    training period; writes the checkpoint."""
    pipeline.require("grid", "downscale", command="unique-cube train-downscaler")
    spec = pipeline.downscale
    output = Path(spec.output)
    output.mkdir(parents=True, exist_ok=True)
    with open_catalog(pipeline) as catalog, dask.config.set(num_workers=pipeline.gpp.threads):
        raw, names, types = static_and_types(catalog, pipeline.grid.geobox)
        period = spec.train or pipeline.gpp.train
        pairs = cached_pairs(pipeline, catalog, period, say, types=types)
    if scheme == "pure_pixel":
        return _train_pure_pixel(pairs, spec, output, say)
    static, info = None, {}
    if scheme == "s2":
        static, info = normalise_static(raw, names)
    valid = ~np.isnan(pairs.gpp_m_30m).all(axis=(1, 2))
    conditions = pair_conditions(pairs, static, scheme)[valid]
    say(f"training {scheme} on {int(valid.sum())} pairs ({spec.steps} steps)")
    with torch_threads(spec.threads):
        ckpt, losses = train(
            conditions, pairs.target[valid], scheme=scheme, static_info=info,
            steps=spec.steps, batch=spec.batch, patch=spec.patch, base=spec.base,
            seed=spec.seed, progress=say,
        )  # fmt: skip
    path = output / f"downscaler_{scheme}.pt"
    save_checkpoint(path, ckpt)
    say(f"wrote {path} (final loss {np.mean(losses[-100:]):.4f})")
    return path


def _train_pure_pixel(pairs: Pairs, spec, output: Path, say) -> Path:
    if pairs.rows is None or len(pairs.rows.gpp) == 0:
        raise DownscaleError("no pure-pixel training rows (no vegetated pure coarse pixel)")
    say(f"training the pure-pixel DNN on {len(pairs.rows.gpp)} pure coarse pixels "
        f"{pairs.rows.counts()}")  # fmt: skip
    model = PurePixelModel(FEATURES, np.unique(pairs.rows.types))
    model.fit(pairs.rows, seed=spec.seed)
    path = output / "pure_pixel.pt"
    model.save(path)
    say(f"wrote {path}")
    return path

"""The diffusion downscaler's training loop, shared by S1/S2 and the fusion residual.

:func:`train` draws random patches of (condition, target) pairs, masks the loss where the
target is missing (clouds), and has the network predict the clean residual of the target over
the base field of the conditions (layer 0, in network units of ``scale``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from unique_cube.downscale.checkpoint import Checkpoint
from unique_cube.downscale.conditions import GPP_SCALE
from unique_cube.downscale.network import ConditionalUNet
from unique_cube.downscale.schedule import NoiseSchedule
from unique_cube.errors import DownscaleError
from unique_cube.files import write_atomic

__all__ = ["TrainingPaused", "train"]


class TrainingPaused(Exception):
    """Training stopped at its time limit; its state is saved for the next run to go on."""

    def __init__(self, step: int, steps: int, path: Path) -> None:
        super().__init__(f"training paused at step {step} of {steps}: its state is in {path}; "
                         "run the same command again to go on from there")  # fmt: skip
        self.step, self.steps, self.path = step, steps, path


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
    scale: float = GPP_SCALE,
    progress: Callable[[str], None] | None = None,
    state_path: Path | None = None,
    max_seconds: float | None = None,
) -> tuple[Checkpoint, list[float]]:
    """Train on random patches of (condition, target) pairs.

    ``conditions`` (N, C, H, W) from :func:`condition_stack`; ``targets`` (N, H, W) GPP_L in
    gC m-2 d-1, NaN where missing. Patches with less than ``min_valid`` of their target
    present are redrawn. The network learns ``targets / scale - conditions[:, 0]`` (layer 0
    is the base field in network units). Returns the checkpoint and the loss history.

    Resumable: with ``state_path``, a run that has trained ``max_seconds`` saves its state
    there (weights, optimiser, learning-rate schedule, random generators, step) and raises
    :class:`TrainingPaused`; the next call with the same data and settings continues from
    that step as if it had never stopped (a state of other data or settings is not taken).
    The caller removes the state once the checkpoint is written.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n, channels, height, width = conditions.shape
    if targets.shape != (n, height, width):
        raise DownscaleError(f"targets {targets.shape} do not match conditions {conditions.shape}")
    if patch > min(height, width):
        patch = min(height, width)
    residual = (targets / scale - conditions[:, 0]).astype("float32")
    valid = np.isfinite(residual)
    residual = np.where(valid, residual, 0.0).astype("float32")
    schedule = NoiseSchedule.make("cosine", schedule_steps)
    model = ConditionalUNet(channels, base=base, mults=mults)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    losses: list[float] = []
    started = time.perf_counter()
    settings = {"scheme": scheme, "steps": steps, "batch": batch, "patch": patch, "base": base,
                "mults": list(mults), "lr": lr, "seed": seed, "scale": f"{scale:.6g}",
                "data": _fingerprint(conditions, targets)}  # fmt: skip
    first = 0
    if state_path is not None and Path(state_path).exists():
        first, losses = _resume(state_path, settings, model, optimiser, scheduler, rng)
        if progress and first:
            progress(f"resuming at step {first + 1}/{steps} from {state_path}")
        elif progress:
            progress(f"{state_path} was saved for other data or settings: starting over")
    for step in range(first, steps):
        if (
            max_seconds is not None
            and step > first
            and (time.perf_counter() - started > max_seconds)
        ):
            _save_state(state_path, settings, step, losses, model, optimiser, scheduler, rng)
            raise TrainingPaused(step, steps, Path(state_path))
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
        losses.append(loss.item())
        if progress and (step + 1) % max(1, steps // 10) == 0:
            progress(f"step {step + 1}/{steps}: loss {np.mean(losses[-50:]):.4f} "
                     f"({time.perf_counter() - started:.0f} s)")  # fmt: skip
    model.eval()
    meta = {"steps": steps, "batch": batch, "patch": patch, "lr": lr, "seed": seed,
            "train_pairs": int(n), "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    return Checkpoint(model, schedule, scheme, static_info, meta), losses


_STATE_FORMAT = "unique-cube-training-state-1"


def _save_state(path, settings: dict, step: int, losses: list[float], model, optimiser,
                scheduler, rng) -> None:  # fmt: skip
    """Everything the loop needs to go on at ``step``, as tensors, numbers and strings."""
    if path is None:
        raise ValueError("max_seconds needs a state_path to save the training state to")
    state = {"format": _STATE_FORMAT, "settings": json.dumps(settings, sort_keys=True),
             "step": step, "losses": torch.tensor(losses, dtype=torch.float64),
             "model": model.state_dict(), "optimiser": optimiser.state_dict(),
             "scheduler": json.dumps(scheduler.state_dict(), default=float),
             "numpy_rng": json.dumps(rng.bit_generator.state),
             "torch_rng": torch.get_rng_state()}  # fmt: skip
    with write_atomic(Path(path)) as partial:
        torch.save(state, partial)


def _resume(path, settings: dict, model, optimiser, scheduler, rng) -> tuple[int, list[float]]:
    """The step and losses of a saved state, loaded into the loop's objects; ``(0, [])`` for
    a state of other settings or data (training starts over)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != _STATE_FORMAT or state.get("settings") != json.dumps(
        settings, sort_keys=True
    ):
        return 0, []
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    scheduler.load_state_dict(json.loads(state["scheduler"]))
    rng.bit_generator.state = json.loads(state["numpy_rng"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), state["losses"].tolist()


def _fingerprint(conditions: np.ndarray, targets: np.ndarray) -> str:
    """A hash of the training data's shape and a regular sample of its values (cheap on a
    large stack; what tells a state saved for other data)."""
    digest = hashlib.sha256(json.dumps([conditions.shape, targets.shape]).encode())
    for array in (conditions, targets):
        digest.update(np.ascontiguousarray(array[..., ::7, ::7]).tobytes())
    return digest.hexdigest()[:16]

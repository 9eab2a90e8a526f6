"""Step 2 of UNIQUE: conditional diffusion downscaling of GPP_M (480 m) to GPP_L-like 30 m maps.

The diffusion model learns the **residual** of GPP_L over bilinearly upsampled GPP_M (in units
of :data:`GPP_SCALE`): the coarse field is given, the network only generates the 30 m detail.
The network predicts the clean residual x_0 (clipped to ±:data:`RESIDUAL_CLIP`), which the
samplers turn into a noise prediction; an untrained network (zero output layer) returns the
bilinear map. Conditions per 30 m
pixel: bilinear GPP_M (S1), plus elevation, slope, aspect (sine, cosine) and land-cover
fractions (S2). The loss is masked where GPP_L is missing (clouds). Normalisation and the
network's shape travel with the checkpoint, which is plain tensors and numbers: it loads with
``torch.load(weights_only=True)``.

Inference tiles the region with overlaps and blends the seams with a raised-cosine window;
every tile has its own seeded generator, so the same seed gives the same map; K samples give
the ensemble mean and the per-pixel spread.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .diffusion import NoiseSchedule, ddim_sample
from .errors import UniqueCubeError, UnsafeCheckpointError
from .unet import ConditionalUNet

__all__ = [
    "Checkpoint",
    "DownscaleError",
    "Tile",
    "apply_static_normalisation",
    "blend_tiles",
    "condition_stack",
    "downscale",
    "load_checkpoint",
    "sample_tile",
    "save_checkpoint",
    "tile_plan",
    "train",
    "upsample_bilinear",
    "validate_condition",
]

GPP_SCALE = 5.0  # gC m-2 d-1 per unit of the network's target
RESIDUAL_CLIP = 4.0  # |GPP_L - bilinear GPP_M| never exceeds 20 gC m-2 d-1
SCHEMES = ("s1", "s2")


class DownscaleError(UniqueCubeError):
    """A checkpoint or input the downscaler cannot use."""

    exit_code = 3


def upsample_bilinear(coarse: np.ndarray, factor: int) -> np.ndarray:
    """Bilinear upsampling of (..., cy, cx) by an integer factor (pixel-area aligned grids,
    edges clamped: ``align_corners=False``).

    NaN pixels (no coarse data) are filled from their neighbours before upsampling, so the
    holes do not spread; a map with no data at all stays NaN. Rows, then columns, with weights
    from each fine pixel's own index: a part of the map upsampled with one more coarse pixel
    around it equals that part of the whole upsampled map, to the bit."""
    array = np.asarray(coarse, dtype="float32")
    lead = array.shape[:-2]
    flat = array.reshape(-1, *array.shape[-2:])
    rows, cols = (
        _bilinear_weights(array.shape[-2], factor),
        _bilinear_weights(array.shape[-1], factor),
    )
    out = np.full((flat.shape[0], array.shape[-2] * factor, array.shape[-1] * factor), np.nan,
                  dtype="float32")  # fmt: skip
    for i, grid in enumerate(flat):
        if not np.isfinite(grid).any():
            continue
        filled = _fill_nearest(grid)
        upper, lower, w = rows
        tall = filled[upper] * (1 - w)[:, None] + filled[lower] * w[:, None]
        left, right, v = cols
        out[i] = tall[:, left] * (1 - v) + tall[:, right] * v
    return out.reshape(*lead, *out.shape[-2:])


def _bilinear_weights(size: int, factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``size * factor`` fine pixels: its two coarse neighbours and the weight of
    the second."""
    centre = np.maximum((np.arange(size * factor) + 0.5) / factor - 0.5, 0.0)
    first = np.floor(centre).astype("int64")
    weight = (centre - first).astype("float32")
    first = np.minimum(first, size - 1)
    return first, np.minimum(first + 1, size - 1), weight


def _fill_nearest(grid: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    missing = ~np.isfinite(grid)
    if not missing.any():
        return grid
    index = ndimage.distance_transform_edt(missing, return_distances=False, return_indices=True)
    return grid[tuple(index)]


def condition_stack(gpp_m_30m: np.ndarray, static: np.ndarray | None, scheme: str) -> np.ndarray:
    """Conditions (C, H, W): bilinear GPP_M scaled, plus the normalised static layers for S2."""
    if scheme not in SCHEMES:
        raise DownscaleError(f"unknown scheme {scheme!r}; expected one of {SCHEMES}")
    layers = [np.nan_to_num(gpp_m_30m / GPP_SCALE)[None]]
    if scheme == "s2":
        if static is None:
            raise DownscaleError("scheme s2 needs the static layers (DEM, land cover)")
        layers.append(np.nan_to_num(static))
    return np.concatenate(layers).astype("float32")


def normalise_static(static: np.ndarray, names: list[str]) -> tuple[np.ndarray, dict]:
    """Zero-mean unit-variance static layers and the statistics used (kept in checkpoints)."""
    mean = np.nanmean(static, axis=(1, 2))
    std = np.nanstd(static, axis=(1, 2))
    std[std == 0] = 1.0
    info = {"names": names, "mean": mean.tolist(), "std": std.tolist()}
    return apply_static_normalisation(static, info), info


def apply_static_normalisation(static: np.ndarray, info: dict) -> np.ndarray:
    """Static layers normalised with the statistics of :func:`normalise_static` (a checkpoint's
    ``static``), so inference sees them as training did."""
    mean = np.asarray(info["mean"])[:, None, None]
    std = np.asarray(info["std"])[:, None, None]
    return ((static - mean) / std).astype("float32")


@dataclass
class Checkpoint:
    model: ConditionalUNet
    schedule: NoiseSchedule
    scheme: str
    static: dict
    """Names, means and standard deviations of the static layers (S2)."""
    meta: dict
    prediction: str = "x0"
    """What the network predicts: the clean residual ("x0") or the noise ("epsilon")."""


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    """Tensors, numbers, strings and lists only: loadable with ``weights_only=True``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": "unique-cube-downscaler-1",
            "state_dict": ckpt.model.state_dict(),
            "unet": ckpt.model.config,
            "betas": ckpt.schedule.betas,
            "scheme": ckpt.scheme,
            "prediction": ckpt.prediction,
            "gpp_scale": GPP_SCALE,
            "static": ckpt.static,
            "meta": ckpt.meta,
        },
        path,
    )


def load_weights_only(
    path: Path, format_tag: str, owner: str, noun: str, error: type[Exception]
) -> dict:
    """A saved dict of tensors, numbers and strings, read with ``torch.load(weights_only=True)``
    so that no code in the file runs.

    A file that would import anything a file of weights never needs (``os.system``, a class
    of some module) is refused with :class:`~unique_cube.errors.UnsafeCheckpointError`, naming
    what it imports. ``error`` names the path when the file is missing, damaged, or not a
    ``format_tag`` file (an ``owner`` ``noun``)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise error(f"{path}: no such {noun}") from err
    except Exception as err:
        imports = _code_imported(path, err)
        if imports:
            raise UnsafeCheckpointError(
                f"{path}: refused to unpickle this {noun}: it would import "
                f"{', '.join(imports)}, which is code, not weights (not a weights-only {noun}); "
                f"nothing in it was run. A unique-cube {owner} {noun} holds only tensors, "
                "numbers and strings: find out where this file came from, and retrain "
                "(`unique-cube train-downscaler`) or restore it from a trusted copy"
            ) from err
        raise error(
            f"{path}: not a weights-only {noun}: the file is damaged or not a PyTorch file "
            f"(refused to unpickle it: {_load_problem(err)})"
        ) from err
    if not isinstance(data, dict) or data.get("format") != format_tag:
        raise error(f"{path}: not a unique-cube {owner} {noun} ({format_tag})")
    return data


# Modules whose names a file written by torch.save of plain tensors and dicts imports.
_WEIGHTS_MODULES = ("torch.", "collections.OrderedDict")
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING",
               "BINSTRING", "SHORT_BINSTRING"}  # fmt: skip


def _code_imported(path: Path, err: Exception) -> list[str]:
    """What a refused file would import that weights never need: the global PyTorch's
    weights-only unpickler stopped at, and the imports found by reading the pickle's opcodes
    (never executing them; PyTorch stops at the first opcode it does not know)."""
    import pickletools
    import zipfile

    blocked = re.findall(r"GLOBAL ([\w.]+)", str(err))
    try:
        if zipfile.is_zipfile(path):  # torch.save's format: the pickle is <name>/data.pkl
            with zipfile.ZipFile(path) as archive:
                pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
                payload = archive.read(pickles[0]) if pickles else b""
        else:
            payload = Path(path).read_bytes()
    except (OSError, zipfile.BadZipFile):
        payload = b""
    found: list[str] = []
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(payload):
            if opcode.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL":  # module and name are the last two strings
                found.append(".".join(strings[-2:]))
            elif opcode.name in _STRING_OPS:
                strings.append(str(arg))
    except Exception:  # pickletools raises ValueError on bytes that are no pickle (any more)
        pass
    foreign = [name for name in found if not name.startswith(_WEIGHTS_MODULES)]
    return list(dict.fromkeys(blocked + foreign))


def _load_problem(err: Exception) -> str:
    """The useful part of torch.load's error (not its advice to retry with weights_only=False)."""
    text = str(err)
    detail = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\n|$)", text, re.S)
    text = detail.group(1) if detail else (text.strip().splitlines() or [""])[0]
    text = " ".join(text.split()).split(". ")[0]  # the first sentence
    return f"{type(err).__name__}: {text}" if text else f"{type(err).__name__} (empty or cut short)"


def load_checkpoint(path: str | Path, scheme: str | None = None) -> Checkpoint:
    """Load a checkpoint without executing any code from it (``weights_only=True``)."""
    path = Path(path)
    data = load_weights_only(path, "unique-cube-downscaler-1", "downscaler", "checkpoint",
                             DownscaleError)  # fmt: skip
    try:
        if scheme is not None and data["scheme"] != scheme:
            raise DownscaleError(f"{path}: a checkpoint of scheme {data['scheme']}, not {scheme}")
        config = dict(data["unet"])
        model = ConditionalUNet(
            config["cond_channels"], base=config["base"], mults=tuple(config["mults"]),
            time_dim=config["time_dim"],
        )  # fmt: skip
        model.load_state_dict(data["state_dict"])
        ckpt = Checkpoint(model, NoiseSchedule(data["betas"]), data["scheme"], data["static"],
                          data["meta"], data.get("prediction", "x0"))  # fmt: skip
    except RuntimeError as err:
        raise DownscaleError(
            f"{path}: weights do not fit the network it describes ({err})"
        ) from err
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise DownscaleError(f"{path}: a damaged downscaler checkpoint ({err!r})") from err
    model.eval()
    return ckpt


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


def _blend_window(size: int, overlap: int) -> np.ndarray:
    ramp = np.ones(size, dtype="float64")
    if overlap > 0:
        edge = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap)
        ramp[:overlap] = edge
        ramp[-overlap:] = edge[::-1]
    return np.outer(ramp, ramp)


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return sorted(set(starts))


@dataclass(frozen=True)
class Tile:
    """One inference tile of a (H, W) grid."""

    ty: int
    """Row of the tile in the tile grid (part of its generator seed)."""
    tx: int
    """Column of the tile in the tile grid (part of its generator seed)."""
    y0: int
    """First row of the tile, in pixels."""
    x0: int
    """First column of the tile, in pixels."""
    h: int
    """Height in pixels (the same for every tile of a plan)."""
    w: int
    """Width in pixels (the same for every tile of a plan)."""

    @property
    def window(self) -> tuple[slice, slice]:
        """The tile's (rows, columns) in the full grid."""
        return slice(self.y0, self.y0 + self.h), slice(self.x0, self.x0 + self.w)


def tile_plan(height: int, width: int, *, tile: int = 128, overlap: int = 32) -> list[Tile]:
    """Overlapping tiles covering a (height, width) grid, row by row; the last row and column
    of tiles end at the grid's edge."""
    tile_h, tile_w = min(tile, height), min(tile, width)
    return [
        Tile(ty, tx, y0, x0, tile_h, tile_w)
        for ty, y0 in enumerate(_tile_starts(height, tile_h, overlap))
        for tx, x0 in enumerate(_tile_starts(width, tile_w, overlap))
    ]


def validate_condition(condition: np.ndarray, channels: int, scheme: str) -> None:
    """Raise :class:`DownscaleError` unless ``condition`` (C, H, W) has the ``channels`` a
    checkpoint of ``scheme`` takes and only finite values."""
    if condition.ndim != 3 or condition.shape[0] != channels:
        got = condition.shape[0] if condition.ndim == 3 else f"an array of shape {condition.shape}"
        raise DownscaleError(
            f"the checkpoint ({scheme}) takes {channels} condition layers, got {got}"
        )
    if not np.isfinite(condition).all():
        raise DownscaleError("the condition stack has NaN or infinite values")


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


def blend_tiles(
    condition: np.ndarray, plan: list[Tile], residuals: list[np.ndarray], *, overlap: int
) -> np.ndarray:
    """Members (K, H, W) of 30 m GPP (gC m-2 d-1): the tiles' residuals (aligned with
    ``plan``) blended with a raised-cosine window and added to the bilinear GPP_M of
    ``condition`` (C, H, W). Accumulates in plan order, so the result does not depend on the
    order the tiles were sampled in."""
    _, height, width = condition.shape
    tile_h, tile_w = plan[0].h, plan[0].w
    total = np.zeros((residuals[0].shape[0], height, width))
    weight = np.zeros((height, width))
    window_weight = _blend_window(max(tile_h, tile_w), min(overlap, min(tile_h, tile_w) // 2))
    w = window_weight[:tile_h, :tile_w]
    for tile, residual in zip(plan, residuals, strict=True):
        total[(slice(None), *tile.window)] += residual * w
        weight[tile.window] += w
    residual = total / weight
    return np.maximum((condition[0][None] + residual) * GPP_SCALE, 0.0).astype("float32")


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
    return blend_tiles(condition, plan, residuals, overlap=overlap)


def coarse_consistency(fine: np.ndarray, coarse: np.ndarray, factor: int) -> np.ndarray:
    """Shift each coarse block of ``fine`` so that its mean equals the coarse value, GPP kept
    non-negative: the shift ``s`` solving mean(max(x + s, 0)) = coarse, found by bisection
    (the left side grows monotonically with ``s``), exact for any coarse value >= 0."""
    cy, cx = coarse.shape
    blocks = fine[: cy * factor, : cx * factor].reshape(cy, factor, cx, factor).astype("float64")
    known = np.isfinite(coarse)[:, None, :, None] & np.isfinite(blocks).any(
        axis=(1, 3), keepdims=True
    )
    target = np.where(known, np.maximum(np.nan_to_num(coarse), 0.0)[:, None, :, None], 0.0)
    blocks = np.where(known, blocks, np.where(np.isfinite(blocks), blocks, 0.0))
    low = -np.nanmax(blocks, axis=(1, 3), keepdims=True)  # every pixel at 0: mean 0
    high = target - np.nanmin(blocks, axis=(1, 3), keepdims=True)  # mean >= target
    for _ in range(40):
        middle = 0.5 * (low + high)
        above = np.nanmean(np.maximum(blocks + middle, 0.0), axis=(1, 3), keepdims=True) > target
        high = np.where(above, middle, high)
        low = np.where(above, low, middle)
    shift = np.where(known, 0.5 * (low + high), 0.0)
    original = fine[: cy * factor, : cx * factor].reshape(cy, factor, cx, factor)
    return (
        np.where(known, np.maximum(blocks + shift, 0.0), original)
        .reshape(cy * factor, cx * factor)
        .astype("float32")
    )


def crps_ensemble(members: np.ndarray, observed: np.ndarray) -> float:
    """Mean CRPS of an ensemble (K, …) against observations (…), the energy form."""
    k = members.shape[0]
    term1 = np.nanmean(np.abs(members - observed[None]), axis=0)
    term2 = np.abs(members[:, None] - members[None]).sum(axis=(0, 1)) / (2 * k * k)
    return float(np.nanmean(term1 - term2))

"""Training the fusion downscaler: a regression mean, a diffusion residual, a calibrated spread.

CorrDiff's split, on the fusion features of :mod:`unique_cube.downscale.fusion`:

1. **Samples that look like product days** (:func:`fusion_stacks`): every HLS date of the
   training period with clear pixels, its reference built from the earlier dates only, so
   reference ages follow the real distribution (and the first dates have none).
2. **The mean**: a per-pixel LightGBM (:class:`~.fusion.FusionMean`). The residual the
   diffusion learns is taken over **out-of-fold** means (dates in chronological folds), so it
   is as large as it will be on new days, not the in-sample leftovers.
3. **The residual**: the conditional UNet on (GPP_L − mean) / σ_r — unit variance, so the
   noise schedule's levels mean what they say — conditioned on the mean and the normalised
   features.
4. **The calibration**: one date in ``1 / calibration_fraction``, spread over the period, is
   kept out of the UNet's training; members sampled there fix the weight of the residuals'
   ensemble mean (0 when it only adds noise) and the factor by which member deviations are
   scaled so that the (K+1)/K-corrected spread/RMSE is 1.

:func:`fusion_condition` and :func:`calibrate` are what inference shares with training.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import dask
import numpy as np

from unique_cube.config.pipeline import Pipeline
from unique_cube.downscale.checkpoint import GPP_NORMALISATION, Checkpoint, save_checkpoint
from unique_cube.downscale.fit import train
from unique_cube.downscale.fusion import FusionMean, fusion_features, terrain_features
from unique_cube.downscale.pairs import Pairs, cached_pairs
from unique_cube.downscale.reference import references_before
from unique_cube.downscale.regions import TrainingSet, training_set
from unique_cube.downscale.sampling import downscale, torch_threads
from unique_cube.errors import DownscaleError
from unique_cube.grid import COARSE_FACTOR, fill_nearest, grid_latitude, upsample_bilinear
from unique_cube.inputs.search import open_catalog
from unique_cube.scores import spread_rmse_ratio

__all__ = [
    "calibrate",
    "fit_fusion",
    "fusion_condition",
    "fusion_stacks",
    "out_of_range",
    "reference_history",
    "reference_pairs",
    "train_fusion",
    "training_settings",
    "training_stacks",
    "window_stacks",
]

log = logging.getLogger(__name__)


def fusion_stacks(
    days: Sequence[dt.date],
    gpp_m: np.ndarray,
    gpp_m_30m: np.ndarray,
    history: tuple[Sequence[dt.date], np.ndarray, np.ndarray],
    static: np.ndarray,
    static_names: Sequence[str],
    latitude: float,
    max_days: int,
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The fusion features (N, F, H, W) of ``days`` (their coarse GPP_M (N, cy, cx) and its
    bilinear 30 m map), each from the references of ``history`` (HLS dates, GPP_L NaN where
    not clear, bilinear GPP_M) before it; their names; each day's reference ages (N, H, W)."""
    dates, gpp_l, history_m = history
    if list(days) != sorted(days):
        raise DownscaleError("fusion_stacks: the days must be in date order")
    stacks, ages, names = [], [], []
    for i, (day, ref) in enumerate(references_before(dates, gpp_l, history_m, days, max_days)):
        terrain, terrain_names = terrain_features(static, static_names, day, latitude)
        block = np.repeat(np.repeat(gpp_m[i], COARSE_FACTOR, 0), COARSE_FACTOR, 1)
        block = block[: gpp_m_30m.shape[1], : gpp_m_30m.shape[2]]
        stack, names = fusion_features(day, gpp_m_30m[i], block, ref, terrain, terrain_names)
        stacks.append(stack)
        ages.append(ref.age(day))
    return np.stack(stacks), names, np.stack(ages)


def reference_history(pairs: Pairs) -> tuple[list[dt.date], np.ndarray, np.ndarray]:
    """The HLS dates of ``pairs``, their GPP_L and their GPP_M gap-free (nearest coarse pixel)
    and upsampled: what references are folded from, as the product's reference store gives
    them (:meth:`unique_cube.product.reference.ReferenceStore.state`)."""
    filled = np.stack([fill_nearest(m) if np.isfinite(m).any() else m for m in pairs.gpp_m])
    return ([d.date() for d in pairs.dates], pairs.target,
            upsample_bilinear(filled, COARSE_FACTOR))  # fmt: skip


def fusion_condition(ckpt: Checkpoint, stack: np.ndarray, names: Sequence[str],
                     mean: np.ndarray) -> np.ndarray:  # fmt: skip
    """The residual network's conditions (C, H, W): the mean in network units, the features
    normalised with the training statistics (clipped at ±6, missing as 0) and whether a
    reference exists."""
    if ckpt.fusion is None:
        raise DownscaleError(f"a {ckpt.scheme} checkpoint is not a fusion checkpoint")
    return _condition(ckpt.fusion, float(ckpt.normalisation["scale"]), stack, names, mean)


def _condition(info: dict, scale: float, stack: np.ndarray, names: Sequence[str],
               mean: np.ndarray) -> np.ndarray:  # fmt: skip
    if list(names) != list(info["features"]):
        raise DownscaleError(f"the fusion checkpoint takes the features {info['features']}; "
                             f"the pipeline gives {list(names)}")  # fmt: skip
    centre = np.asarray(info["feature_mean"], "float32")[:, None, None]
    spread = np.asarray(info["feature_std"], "float32")[:, None, None]
    z = np.nan_to_num(np.clip((stack - centre) / spread, -6, 6))
    seen = np.isfinite(stack[list(names).index("ref_gpp")])[None]
    base = np.nan_to_num(mean / scale)[None]
    return np.concatenate([base, z, seen]).astype("float32")


def out_of_range(ckpt: Checkpoint, stack: np.ndarray) -> np.ndarray:
    """Pixels (H, W) with a feature outside the range it had in training (QA flag)."""
    low, high = (np.asarray(v, "float32")[:, None, None] for v in zip(*ckpt.fusion["ranges"],
                                                                      strict=True))  # fmt: skip
    with np.errstate(invalid="ignore"):
        return ((stack < low) | (stack > high)).any(axis=0)


def calibrate(members: np.ndarray, mean: np.ndarray, info: dict,
              non_negative: bool = True) -> np.ndarray:  # fmt: skip
    """Members (K, H, W) of mean + residual, calibrated: the residuals' ensemble mean kept
    with the weight ``residual_weight`` (what it was worth on the calibration dates: 0 when
    it only added noise) and the deviations from it scaled by ``spread_scale``."""
    centre = members.mean(axis=0, keepdims=True)
    weight, scale = float(info["residual_weight"]), float(info["spread_scale"])
    out = mean + weight * (centre - mean) + scale * (members - centre)
    return (np.maximum(out, 0.0) if non_negative else out).astype("float32")


def _rows(stacks: np.ndarray, targets: np.ndarray, limit: int, rng) -> tuple:
    x = np.moveaxis(stacks, 1, -1).reshape(-1, stacks.shape[1])
    y = targets.reshape(-1)
    keep = np.flatnonzero(np.isfinite(y) & np.isfinite(x[:, 0]))
    if len(keep) > limit:
        keep = np.sort(rng.choice(keep, limit, replace=False))
    return x[keep], y[keep]


def fit_fusion(
    stacks: np.ndarray,
    names: Sequence[str],
    targets: np.ndarray,
    *,
    max_days: int,
    calibration_fraction: float = 0.2,
    folds: int = 3,
    max_rows: int = 500_000,
    members: int = 4,
    threads: int = 1,
    unet: dict | None = None,
    sampling: dict | None = None,
    seed: int = 0,
    say: Callable[[str], None] = log.info,
    state_path: Path | None = None,
    max_seconds: float | None = None,
) -> tuple[Checkpoint, dict]:
    """The fusion checkpoint from ``stacks`` (N, F, H, W) of :func:`fusion_stacks` and GPP_L
    ``targets`` (N, H, W; NaN where not clear), dates in order. ``unet``: :func:`train`'s
    settings (steps, batch, patch, base); ``sampling``: the calibration's (ddim_steps, tile,
    overlap). Returns the checkpoint and what training measured."""
    n = len(stacks)
    if n < 2 or not np.isfinite(targets).any():
        raise DownscaleError(f"the fusion downscaler needs at least 2 dates with clear GPP_L, "
                             f"got {n}")  # fmt: skip
    rng = np.random.default_rng(seed)
    began = time.perf_counter()
    x, y = _rows(stacks, targets, max_rows, rng)
    mean = FusionMean.fit(x, y, names, threads=threads, seed=seed)
    say(f"fusion mean: LightGBM on {len(y)} clear pixels of {n} dates "
        f"({time.perf_counter() - began:.0f} s)")  # fmt: skip
    # Out-of-fold means: the residual is learnt as large as it is on dates the mean never saw.
    oof = np.full(targets.shape, np.nan, "float32")
    parts = np.array_split(np.arange(n), min(folds, n))
    for part in parts:
        rest = np.setdiff1d(np.arange(n), part)
        fx, fy = _rows(stacks[rest], targets[rest], max_rows // 2, rng)
        fold = FusionMean.fit(fx, fy, names, rounds=150, threads=threads, seed=seed)
        for i in part:
            oof[i] = fold.predict(stacks[i], names, threads)
    residual = targets - oof
    sigma = float(np.sqrt(np.nanmean(residual**2)))
    if not np.isfinite(sigma) or sigma <= 0:
        raise DownscaleError(f"the fusion mean's out-of-fold residual has no spread ({sigma}): "
                             "too few clear pixels to train its diffusion residual")  # fmt: skip
    flat = np.moveaxis(stacks, 1, 0).reshape(stacks.shape[1], -1)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # features missing on every pixel
        centre, spread = np.nanmean(flat, axis=1), np.nanstd(flat, axis=1)
        low, high = np.nanmin(flat, axis=1), np.nanmax(flat, axis=1)
    spread = np.where(np.isfinite(spread) & (spread > 0), spread, 1.0)
    ranges = zip(np.nan_to_num(low, nan=-np.inf), np.nan_to_num(high, nan=np.inf), strict=True)
    info = {"mean_model": mean.model_text, "features": list(names),
            "feature_mean": np.nan_to_num(centre).tolist(), "feature_std": spread.tolist(),
            "ranges": [[float(a), float(b)] for a, b in ranges], "residual_std": sigma,
            "spread_scale": 1.0, "residual_weight": 1.0,
            "reference_days": int(max_days)}  # fmt: skip
    normalisation = {**GPP_NORMALISATION, "scale": sigma}
    conditions = np.stack([_condition(info, sigma, s, names, m)
                           for s, m in zip(stacks, oof, strict=True)])  # fmt: skip
    kept = calibration_dates(n, calibration_fraction)
    held = len(kept)
    fit_dates = np.setdiff1d(np.arange(n), kept)
    say(f"fusion residual: σ_r {sigma:.3f} gC m-2 d-1 (out-of-fold mean); training the "
        f"diffusion on {len(fit_dates)} dates, {held} kept for the spread")  # fmt: skip
    ckpt, losses = train(conditions[fit_dates], targets[fit_dates], scheme="fusion",
                         static_info={}, scale=sigma, seed=seed, progress=say,
                         state_path=state_path, max_seconds=max_seconds,
                         **(unet or {}))  # fmt: skip
    ckpt.normalisation, ckpt.fusion = normalisation, info
    measured = {"dates": n, "mean_rows": len(y), "residual_std": sigma,
                "calibration_dates": held, "final_loss": float(np.mean(losses[-100:]))}  # fmt: skip
    if held:
        found = _calibration(ckpt, conditions[kept], targets[kept], members, seed,
                             sampling or {})  # fmt: skip
        info["residual_weight"], info["spread_scale"] = (found["residual_weight"],
                                                         found["spread_scale"])  # fmt: skip
        measured.update(found)
        say(f"on the {held} kept dates: residual mean weighted {found['residual_weight']:.2f}, "
            f"spread/RMSE {found['spread_rmse_before']:.2f} → member deviations scaled by "
            f"{found['spread_scale']:.2f}")  # fmt: skip
    ckpt.meta.update(measured, seconds_total=round(time.perf_counter() - began, 1))
    return ckpt, measured


def calibration_dates(n: int, fraction: float) -> np.ndarray:
    """Which of ``n`` dates (in order) calibrate the spread: one in every ``1 / fraction``,
    spread over the period so that every season has its say (none below 3 dates)."""
    if n < 3 or fraction <= 0:
        return np.array([], dtype=int)
    step = max(2, round(1 / fraction))
    return np.arange(n)[step // 2 :: step]


def _calibration(ckpt: Checkpoint, conditions: np.ndarray, targets: np.ndarray,
                 members: int, seed: int, sampling: dict) -> dict:  # fmt: skip
    """The residual weight and spread scale fitted on held-out dates (their conditions hold
    the out-of-fold mean in layer 0), and the spread/RMSE before."""
    scale = float(ckpt.normalisation["scale"])
    mean = conditions[:, 0] * scale
    maps = np.stack([downscale(ckpt, c, samples=max(2, members), seed=seed + i, **sampling)
                     for i, c in enumerate(conditions)])  # fmt: skip
    moved = np.moveaxis(maps, 1, 0)  # (K, N, H, W)
    before = spread_rmse_ratio(moved, targets)
    extra = maps.mean(axis=1) - mean
    ok = np.isfinite(targets) & np.isfinite(extra)
    denominator = float((extra[ok] ** 2).sum())
    weight = float((targets - mean)[ok] @ extra[ok]) / denominator if denominator > 0 else 0.0
    weight = float(np.clip(weight, 0.0, 1.0))
    info = {"residual_weight": weight, "spread_scale": 1.0}
    shrunk = np.stack([calibrate(m, mu, info) for m, mu in zip(maps, mean, strict=True)])
    ratio = spread_rmse_ratio(np.moveaxis(shrunk, 1, 0), targets)
    if np.isfinite(ratio) and ratio > 0:
        info["spread_scale"] = float(np.clip(1.0 / ratio, 0.25, 8.0))
    return {**info, "spread_rmse_before": before}


def reference_pairs(pipeline: Pipeline, catalog, period, say) -> Pairs:
    """GPP_L on every HLS date of ``period`` with ``downscale.reference_min_clear`` of the
    region clear: the fusion downscaler's references and targets (cached like the pairs)."""
    return cached_pairs(pipeline, catalog, period, say,
                        min_clear=pipeline.downscale.reference_min_clear)  # fmt: skip


def training_stacks(pipeline: Pipeline, pairs: Pairs, raw: np.ndarray, names: list[str],
                    geobox=None) -> tuple[np.ndarray, list[str]]:  # fmt: skip
    """The fusion features of every date of ``pairs`` (over the pipeline's grid, or
    ``geobox``, the window they were made on), referenced to the dates before it."""
    days = [d.date() for d in pairs.dates]
    stacks, features, _ = fusion_stacks(days, pairs.gpp_m, pairs.gpp_m_30m,
                                        reference_history(pairs), raw, names,
                                        grid_latitude(geobox or pipeline.grid.geobox),
                                        pipeline.downscale.reference_days)  # fmt: skip
    return stacks, features


def window_stacks(pipeline: Pipeline, data: TrainingSet) -> tuple[np.ndarray, list[str],
                                                                    np.ndarray]:  # fmt: skip
    """The fusion features (N, F, h, w) and GPP_L targets (N, h, w) of every date of every
    training window, each window referenced to its own earlier dates, all in date order (the
    mean's chronological folds and the calibration dates run over it)."""
    stacks, targets, days, features = [], [], [], []
    for window in data.windows:
        stack, features = training_stacks(pipeline, window.pairs, window.static, data.names,
                                          window.geobox)  # fmt: skip
        stacks.append(stack)
        targets.append(window.pairs.target)
        days += window.pairs.dates
    order = np.argsort(np.array(days, dtype="datetime64[ns]"), kind="stable")
    if len(stacks) == 1:
        return stacks[0], features, targets[0]
    return np.concatenate(stacks)[order], features, np.concatenate(targets)[order]


def training_settings(pipeline: Pipeline, *, members: int) -> dict:
    """:func:`fit_fusion`'s settings from the pipeline's ``downscale`` section."""
    spec = pipeline.downscale
    return {"max_days": spec.reference_days, "calibration_fraction": spec.calibration_fraction,
            "members": members, "seed": spec.seed,
            "unet": {"steps": spec.steps, "batch": spec.batch, "patch": spec.patch,
                     "base": spec.base},
            "sampling": {"ddim_steps": spec.ddim_steps, "tile": spec.tile,
                         "overlap": spec.overlap}}  # fmt: skip


def train_fusion(pipeline: Pipeline, output: Path, say, *, state_path: Path | None = None,
                 max_seconds: float | None = None) -> Path:  # fmt: skip
    """The fusion downscaler on every HLS date of the training period with clear pixels, each
    referenced to the dates before it (:mod:`unique_cube.downscale.fusion_train`)."""
    spec = pipeline.downscale
    with open_catalog(pipeline) as catalog, dask.config.set(num_workers=pipeline.gpp.threads):
        data = training_set(pipeline, catalog, spec.train or pipeline.gpp.train, say,
                            min_clear=spec.reference_min_clear)  # fmt: skip
    stacks, features, targets = window_stacks(pipeline, data)
    where = "" if data.whole else f" of {len(data.windows)} windows"
    say(f"training fusion on {len(stacks)} HLS dates{where} ({len(features)} features; the "
        f"mean, then the residual diffusion, {spec.steps} steps)")  # fmt: skip
    with torch_threads(spec.threads):
        ckpt, _ = fit_fusion(stacks, features, targets,
                             **training_settings(pipeline, members=max(4, spec.samples)),
                             threads=max(spec.threads, pipeline.gpp.threads), say=say,
                             state_path=state_path, max_seconds=max_seconds)  # fmt: skip
    path = output / "downscaler_fusion.pt"
    save_checkpoint(path, ckpt)
    if state_path is not None:
        state_path.unlink(missing_ok=True)  # the checkpoint is written: the state is done
    say(f"wrote {path}")
    return path

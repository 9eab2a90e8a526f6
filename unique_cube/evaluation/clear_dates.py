"""The downscalers on every clear HLS date of the test period, against GPP_L.

Every date with at least ``evaluation.min_clear_fraction`` of the region clear is scored (not
the clearest few): bilinear GPP_M, S1 and S2 (the mean of ``evaluation.members`` members) and
the pure-pixel regression as an **oracle** — it reads that date's own Landsat, which a daily
product does not have. Per date and pooled: RMSE, bias and r on the clear pixels; the
within-block RMSE (each 480 m block's mean removed) beside the plain one; the ensembles'
fair CRPS, rank histogram and spread/RMSE ratio; the same maps against the truth where the
world has one.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unique_cube.config.catalog import Catalog
from unique_cube.config.pipeline import Period, Pipeline
from unique_cube.downscale.checkpoint import Checkpoint
from unique_cube.downscale.conditions import apply_static_normalisation
from unique_cube.downscale.consistency import coarse_mismatch, make_consistent
from unique_cube.downscale.fusion import FusionMean
from unique_cube.downscale.fusion_train import (
    calibrate,
    fusion_condition,
    fusion_stacks,
    reference_history,
    reference_pairs,
)
from unique_cube.downscale.pairs import Pairs, cached_pairs, pair_conditions
from unique_cube.downscale.pure_pixel import PurePixelModel
from unique_cube.downscale.sampling import downscale, torch_threads
from unique_cube.evaluation.strata import AGE_BINS, Scoreboard, age_classes
from unique_cube.gpp.features import FEATURES
from unique_cube.gpp.predict import MapInputs, gpp_landsat
from unique_cube.grid import grid_latitude
from unique_cube.inputs.weather import weather_for
from unique_cube.scores import (
    Moments,
    crps_ensemble,
    fair_crps,
    metrics,
    rank_histogram,
    spread_rmse_ratio,
    within_block_rmse,
)

__all__ = [
    "ClearDates",
    "FusionInputs",
    "by_reference_age",
    "clear_dates",
    "ensemble_scores",
    "fusion_inputs",
    "fusion_members",
    "fusion_quicklook",
    "pooled_scores",
    "pure_pixel_maps",
    "quicklook",
    "sample_members",
    "score_clear_dates",
]

log = logging.getLogger(__name__)


@dataclass
class ClearDates:
    """The test period's clear dates: the pairs, each method's 30 m maps, the members."""

    pairs: Pairs
    maps: dict[str, np.ndarray]
    """(N, H, W) by method: ``bilinear``, ``s1``, ``s2`` (ensemble means),
    ``pure_pixel_oracle``."""
    members: dict[str, np.ndarray]
    """(N, K, H, W) by scheme."""
    truth: np.ndarray | None
    """The truth on the dates (N, H, W), when the world has one."""
    fusion: FusionInputs | None = None
    """The fusion downscaler's features on the dates (for the hold-out), when it is trained."""
    windows: list[str] = field(default_factory=list)
    """The evaluation window of each date (a windowed evaluation's: a large grid is scored on
    windows, their dates one after the other), else empty."""

    @classmethod
    def concat(cls, parts: Sequence[tuple[str, ClearDates]]) -> ClearDates:
        """The clear dates of several windows of one size (``(label, dates)``), one after the
        other: pooled scores are over all their pixels."""
        every = [d for _, d in parts]
        first = every[0]
        pairs = Pairs(
            dates=[day for d in every for day in d.pairs.dates],
            target=np.concatenate([d.pairs.target for d in every]),
            gpp_m=np.concatenate([d.pairs.gpp_m for d in every]),
            gpp_m_30m=np.concatenate([d.pairs.gpp_m_30m for d in every]),
            factor=first.pairs.factor,
        )
        fusion = None
        if first.fusion is not None:
            fusion = FusionInputs(np.concatenate([d.fusion.stacks for d in every]),
                                  first.fusion.names,
                                  np.concatenate([d.fusion.ages for d in every]))  # fmt: skip
        truth = None if first.truth is None else np.concatenate([d.truth for d in every])
        return cls(
            pairs,
            {k: np.concatenate([d.maps[k] for d in every]) for k in first.maps},
            {k: np.concatenate([d.members[k] for d in every]) for k in first.members},
            truth,
            fusion,
            [label for label, d in parts for _ in d.pairs.dates],
        )


@dataclass
class FusionInputs:
    """The fusion features of the clear dates and the references behind them."""

    stacks: np.ndarray
    """(N, F, H, W) features of :func:`~unique_cube.downscale.fusion_train.fusion_stacks`."""
    names: list[str]
    ages: np.ndarray
    """(N, H, W) days since each pixel's reference (NaN: none)."""


def sample_members(pipeline: Pipeline, checkpoints: dict[str, Checkpoint], raw: np.ndarray,
                   pairs: Pairs, members: int, say: Callable[[str], None], *,
                   threads: int) -> dict:  # fmt: skip
    """(N, K, H, W) members of each scheme on the pairs' dates, seeded per date, sampled with
    ``threads`` torch threads."""
    spec = pipeline.downscale
    out = {}
    with torch_threads(threads):
        for scheme, ckpt in checkpoints.items():
            if scheme == "fusion":  # its conditions need the references: fusion_members
                continue
            static = apply_static_normalisation(raw, ckpt.static) if scheme == "s2" else None
            conditions = pair_conditions(pairs, static, scheme)
            started = time.perf_counter()
            maps = []
            for i, c in enumerate(conditions):
                maps.append(
                    downscale(
                        ckpt,
                        c,
                        samples=members,
                        ddim_steps=spec.ddim_steps,
                        tile=spec.tile,
                        overlap=spec.overlap,
                        seed=spec.seed + i,
                    )
                )
                say(f"{scheme}: date {i + 1}/{len(conditions)} sampled")
            out[scheme] = np.stack(maps)
            say(
                f"{scheme}: {len(conditions)} dates x {members} members "
                f"({time.perf_counter() - started:.0f} s, {threads} torch threads)"
            )
    return out


def clear_dates(
    pipeline: Pipeline, catalog: Catalog, checkpoints: dict[str, Checkpoint], raw: np.ndarray,
    names: list[str], types: np.ndarray, truth, say, *, members: int, threads: int,
    pure: PurePixelModel | None = None, min_clear: float | None = None,
    clearest: int | None = None,
) -> ClearDates:  # fmt: skip
    """Pairs of the clear-enough test dates (``min_clear``, default the downscaler's own
    threshold; only the ``clearest`` few when given) and each method's maps on them (the
    pure-pixel oracle's when ``pure`` is given)."""
    spec = pipeline.downscale
    pairs = cached_pairs(pipeline, catalog, spec.test, say, min_clear=min_clear,
                         clearest=clearest)  # fmt: skip
    maps = {"bilinear": pairs.gpp_m_30m}
    ensembles = sample_members(pipeline, checkpoints, raw, pairs, members, say,
                               threads=threads)  # fmt: skip
    fusion = None
    if "fusion" in checkpoints:
        fusion = fusion_inputs(pipeline, catalog, pairs, raw, names, say)
        ensembles["fusion"], maps["fusion_mean"] = fusion_members(
            pipeline, checkpoints["fusion"], pairs, fusion, members, say, threads=threads
        )
    maps.update({scheme: m.mean(axis=1) for scheme, m in ensembles.items()})
    if pure is not None:
        maps["pure_pixel_oracle"] = pure_pixel_maps(pipeline, catalog, pairs, pure, types)
    observed = truth(pairs.dates) if truth is not None else None
    return ClearDates(pairs, maps, ensembles, observed, fusion)


def fusion_inputs(pipeline: Pipeline, catalog: Catalog, pairs: Pairs, raw: np.ndarray,
                  names: list[str], say) -> FusionInputs:  # fmt: skip
    """The fusion features of the pairs' dates, each referenced to the HLS dates before it —
    back to ``downscale.reference_days`` before the period — never to the date itself."""
    spec = pipeline.downscale
    first = min(pairs.dates).date()
    period = Period(first - dt.timedelta(days=spec.reference_days), max(pairs.dates).date())
    history = reference_pairs(pipeline, catalog, period, say)
    days = [d.date() for d in pairs.dates]
    stacks, features, ages = fusion_stacks(
        days, pairs.gpp_m, pairs.gpp_m_30m, reference_history(history), raw, names,
        grid_latitude(pipeline.grid.geobox), spec.reference_days,
    )  # fmt: skip
    return FusionInputs(stacks, features, ages)


def fusion_members(
    pipeline: Pipeline, ckpt: Checkpoint, pairs: Pairs, inputs: FusionInputs, members: int,
    say, *, threads: int,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(N, K, H, W) calibrated members of the fusion downscaler and its mean alone (N, H, W)
    on the pairs' dates."""
    spec = pipeline.downscale
    mean_model = FusionMean(ckpt.fusion["mean_model"], ckpt.fusion["features"])
    started = time.perf_counter()
    means, out = [], []
    with torch_threads(threads):
        for i, stack in enumerate(inputs.stacks):
            mean = mean_model.predict(stack, inputs.names, threads)
            condition = fusion_condition(ckpt, stack, inputs.names, mean)
            drawn = downscale(ckpt, condition, samples=members, ddim_steps=spec.ddim_steps,
                              tile=spec.tile, overlap=spec.overlap, seed=spec.seed + i)  # fmt: skip
            means.append(mean)
            out.append(calibrate(drawn, mean, ckpt.fusion))
    say(f"fusion: {len(means)} dates x {members} members "
        f"({time.perf_counter() - started:.0f} s, {threads} torch threads)")  # fmt: skip
    return np.stack(out), np.stack(means)


def pure_pixel_maps(pipeline: Pipeline, catalog: Catalog, pairs: Pairs, model: PurePixelModel,
                    types: np.ndarray) -> np.ndarray:  # fmt: skip
    """The pure-pixel DNN applied at 30 m on the pairs' dates — an oracle: it needs the dates'
    own Landsat inputs. Where a pixel is not clear or not vegetation, bilinear GPP_M stands
    in."""
    gpp = pipeline.gpp
    first, last = min(pairs.dates).date(), max(pairs.dates).date()
    daily = weather_for(catalog, gpp.weather, pipeline.grid.geobox, first, last,
                        gpp.utc_offset_hours)  # fmt: skip
    landsat = gpp_landsat(MapInputs.of(pipeline, catalog, "landsat", daily), f"{first}/{last}",
                          keep_features=True)  # fmt: skip
    days = landsat["time"].dt.floor("D").values
    index = [int(np.flatnonzero(days == np.datetime64(d, "ns"))[0]) for d in pairs.dates]
    features = landsat["features"].isel(time=index).sel(feature=list(FEATURES)).values
    maps = np.stack([model.predict(f, FEATURES, types) for f in features])
    return np.where(np.isfinite(maps), maps, pairs.gpp_m_30m).astype("float32")


def quicklook(dates: ClearDates, path: Path) -> None:
    """A PNG of the clearest date: GPP_M, each method's map, GPP_L and the truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = dates.pairs
    i = int(np.argmax(np.isfinite(pairs.target).mean(axis=(1, 2))))
    panels = [("GPP_M (480 m)", np.kron(pairs.gpp_m[i], np.ones((pairs.factor, pairs.factor))))]
    panels += [(name, values[i]) for name, values in dates.maps.items() if name != "bilinear"]
    panels.append(("GPP_L (30 m, clear)", pairs.target[i]))
    if dates.truth is not None:
        panels.append(("truth", dates.truth[i]))
    top = float(np.nanpercentile(pairs.target[i], 99)) if np.isfinite(pairs.target[i]).any() else 15
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), dpi=100)
    for ax, (title, image) in zip(np.atleast_1d(axes), panels, strict=True):
        shown = ax.imshow(image, vmin=0, vmax=top, cmap="YlGn")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.colorbar(shown, ax=axes, shrink=0.8, label="GPP (gC m$^{-2}$ d$^{-1}$)")
    fig.suptitle(f"{pairs.dates[i]:%Y-%m-%d}", fontsize=10)
    fig.savefig(path)
    plt.close(fig)


def ensemble_scores(members: np.ndarray, observed: np.ndarray) -> dict:
    """Fair CRPS, rank histogram and spread/RMSE ratio of (N, K, H, W) members against
    (N, H, W) observations, pooled over the dates."""
    k = members.shape[1]
    moved = np.moveaxis(members, 1, 0)  # (K, N, H, W)
    spread = members.std(axis=1)
    error = np.abs(members.mean(axis=1) - observed)
    ok = np.isfinite(error) & np.isfinite(spread)
    return {
        "members": int(k),
        "crps": fair_crps(moved, observed),
        "spread_rmse_ratio": spread_rmse_ratio(moved, observed),
        "rank_histogram": rank_histogram(moved, observed),
        # The figures of the earlier evaluation (dashboards read them): the plain CRPS, the
        # mean member spread, the RMSE of the mean and the spread-error correlation.
        "crps_plain": crps_ensemble(moved, observed),
        "mean_spread": float(spread[ok].mean()),
        "rmse_of_mean": float(np.sqrt((error[ok] ** 2).mean())),
        "spread_skill_correlation": float(np.corrcoef(spread[ok], error[ok])[0, 1]),
    }


def score_clear_dates(dates: ClearDates) -> dict:
    """Per-date and pooled scores of every method against GPP_L (and the truth), the
    ensembles' scores and the 480 m consistency of the schemes' means."""
    pairs, factor = dates.pairs, dates.pairs.factor
    target = pairs.target
    pooled = {name: Moments() for name in dates.maps}
    per_date = []
    for i, day in enumerate(pairs.dates):
        row = {"date": day.strftime("%Y-%m-%d"),
               "clear_fraction": float(np.isfinite(target[i]).mean())}  # fmt: skip
        if dates.windows:
            row["window"] = dates.windows[i]
        ok = np.isfinite(target[i])
        for values in dates.maps.values():
            ok &= np.isfinite(values[i])
        for name, values in dates.maps.items():
            scores = metrics(target[i][ok], values[i][ok])
            row[name] = {k: scores[k] for k in ("rmse", "bias", "r")}
            pooled[name].add(target[i][ok], values[i][ok])
        per_date.append(row)
    vs_gpp_l = {}
    for name, moments in pooled.items():
        scores = moments.scores()
        wb = [within_block_rmse(target[i], dates.maps[name][i], factor)
              for i in range(len(pairs.dates))]  # fmt: skip
        vs_gpp_l[name] = {**scores, "n_dates": len(pairs.dates),
                          "within_block_rmse": float(np.nanmean(wb))}  # fmt: skip
    out = {"dates": [d.strftime("%Y-%m-%d") for d in pairs.dates], "per_date": per_date,
           "vs_gpp_l": vs_gpp_l, "ensemble": {}}  # fmt: skip
    if dates.truth is not None:
        out["vs_truth"] = {
            name: {**pooled_scores(dates.truth, values, factor), "n_dates": len(pairs.dates)}
            for name, values in dates.maps.items()
        }
    for scheme, members in dates.members.items():
        scores = ensemble_scores(members, target)
        if dates.truth is not None:
            truth_scores = ensemble_scores(members, dates.truth)
            scores["vs_truth"] = {k: truth_scores[k] for k in ("crps", "spread_rmse_ratio")}
        out["ensemble"][scheme] = scores
    out["coarse_consistency"] = {
        scheme: _consistency(dates.maps[scheme], pairs) for scheme in dates.members
    }
    if dates.fusion is not None:
        out["by_reference_age"] = by_reference_age(dates)
    return out


def by_reference_age(dates: ClearDates) -> dict:
    """Every method against GPP_L on the clear dates by the age of the pixel's fusion
    reference (its last clear GPP_L before the date; ``never``: none within
    ``downscale.reference_days``), on the pixels where every method has a value."""
    board = Scoreboard()
    for i in range(len(dates.pairs.dates)):
        labels = {"age": age_classes(dates.fusion.ages[i])}
        board.add(labels, dates.pairs.target[i], {k: v[i] for k, v in dates.maps.items()})
    table = board.table().get("age", {})
    order = [label for _, label in AGE_BINS] + ["never"]
    return {label: table[label] for label in order if label in table}


def fusion_quicklook(dates: ClearDates, path: Path) -> None:
    """A PNG of the cloudiest clear date that has a truth: truth, bilinear GPP_M, S2 (when
    trained), the fusion mean of members, its spread, the reference age and GPP_L."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs, fusion = dates.pairs, dates.fusion
    clear = np.isfinite(pairs.target).mean(axis=(1, 2))
    i = int(np.argmin(np.where(clear > 0, clear, np.inf)))
    panels = []
    if dates.truth is not None:
        panels.append(("truth", dates.truth[i], "YlGn"))
    panels.append(("bilinear GPP_M", pairs.gpp_m_30m[i], "YlGn"))
    if "s2" in dates.maps:
        panels.append(("S2 (paper)", dates.maps["s2"][i], "YlGn"))
    panels += [("fusion (ensemble mean)", dates.maps["fusion"][i], "YlGn"),
               ("fusion spread (sd)", dates.members["fusion"][i].std(axis=0), "magma"),
               ("reference age (days)", fusion.ages[i], "viridis"),
               (f"GPP_L ({clear[i]:.0%} clear)", pairs.target[i], "YlGn")]  # fmt: skip
    top = float(np.nanpercentile(dates.maps["fusion"][i], 99.5)) or 1.0
    fig, axes = plt.subplots(2, 4, figsize=(14.4, 6.8), squeeze=False)
    for ax in axes.ravel()[len(panels) :]:
        ax.set_axis_off()
    for ax, (title, image, cmap) in zip(axes.ravel(), panels, strict=False):
        vmax = top if cmap == "YlGn" else float(np.nanpercentile(image, 99.5) or 1.0)
        shown = ax.imshow(image, vmin=0, vmax=vmax, cmap=cmap)
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
        fig.colorbar(shown, ax=ax, shrink=0.7)
    fig.suptitle(f"{pairs.dates[i]:%Y-%m-%d}: a cloudy test date (gC m$^{{-2}}$ d$^{{-1}}$)",
                 fontsize=11)  # fmt: skip
    fig.savefig(path, dpi=90)
    plt.close(fig)


def pooled_scores(observed: np.ndarray, predicted: np.ndarray, factor: int) -> dict:
    """RMSE, bias and r of (N, H, W) maps pooled over their finite pixels, and the mean over
    the N dates of the within-block RMSE (``factor`` px blocks' means removed)."""
    moments = Moments()
    moments.add(observed, predicted)
    within = [within_block_rmse(o, p, factor) for o, p in zip(observed, predicted, strict=True)]
    return {**moments.scores(), "within_block_rmse": float(np.nanmean(within))}


def _consistency(mean: np.ndarray, pairs: Pairs) -> dict:
    """The 480 m mismatch of a scheme's maps with GPP_M before and after the shift that
    removes it, and the shifted maps against GPP_L."""
    both = list(zip(mean, pairs.gpp_m, strict=True))
    fixed = np.stack([make_consistent(m, c, pairs.factor) for m, c in both])
    ok = np.isfinite(pairs.target) & np.isfinite(fixed)
    return {
        "before": float(np.mean([coarse_mismatch(m, c, pairs.factor) for m, c in both])),
        "after": float(np.mean([coarse_mismatch(m, c, pairs.factor)
                                for m, c in zip(fixed, pairs.gpp_m, strict=True)])),
        "vs_gpp_l_after": metrics(pairs.target[ok], fixed[ok]),
    }  # fmt: skip

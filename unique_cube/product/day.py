"""One product day, window by window: the per-day science of ``unique-cube run``.

:func:`plan_day` turns a day's GPP_M into what every window shares — GPP_M gap-free (the
nearest coarse pixel where it is missing), the coarse QA, the scheme after the fallbacks —
or skips the day (:class:`DaySkipped`). :func:`make_windows` then makes the 30 m arrays
window by window (:func:`window_arrays`: bilinear GPP_M, or the downscaler's ensemble blended
from the tiles of the whole grid's plan; the QA; the optional consistency shift) and hands
each to the store before the next is made.

Fallback chain when inputs are missing (each step sets its QA bit; see
:data:`unique_cube.product.variables.QA_FLAGS`):

1. MODIS observed the pixel that day → GPP_M as is.
2. Not that day (cloud, no granule) → indices interpolated in time between clear days at most
   the model card's ``gap_fill_days`` apart (``gpp_m_gap_filled``), or up to
   ``product.max_gap_days`` (``gpp_m_long_gap_filled``).
3. Still missing → the nearest coarse pixel's GPP_M (``gpp_m_neighbour_filled``), as long as
   at most ``product.max_missing_fraction`` of the grid inside the MODIS footprints needs it;
   else the day is skipped.
4. S2 without its static layers (no DEM or land-cover item) → S1, when its checkpoint exists.

Coarse pixels outside every MODIS item's footprint (``RunContext.outside``, found before the
run makes a day) have no GPP_M to fill from: they are left empty (NaN GPP, GPP_M and spread,
QA 0), never neighbour-filled.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from unique_cube.config.catalog import Catalog
from unique_cube.config.pipeline import Pipeline
from unique_cube.downscale.actors import TileRequest
from unique_cube.downscale.conditions import condition_stack, validate_condition
from unique_cube.downscale.consistency import coarse_errors, make_consistent
from unique_cube.downscale.tiling import (
    ResidualCache,
    Tile,
    blend_tiles,
    extent_of,
    local_plan,
    tile_plan,
    tiles_touching,
)
from unique_cube.errors import InputsLostError
from unique_cube.grid import (
    COARSE_FACTOR,
    Window,
    bilinear_window,
    blocks_window,
    day_windows,
    fill_nearest,
    fine_fraction,
)
from unique_cube.grid import COARSE_FACTOR as factor
from unique_cube.product.coarse import Lost, named_reads
from unique_cube.product.models import ProductModels
from unique_cube.product.static import StaticLayers, align_static
from unique_cube.product.store import QA_FLAGS

__all__ = [
    "DayPlan",
    "DaySkipped",
    "Layout",
    "RunContext",
    "Sampler",
    "day_layout",
    "day_seed",
    "gap_fill_span",
    "make_windows",
    "plan_day",
    "window_arrays",
]


log = logging.getLogger(__name__)


class DaySkipped(Exception):
    """A day that cannot be produced from the inputs at hand (its reason is recorded)."""


@dataclass
class Layout:
    """How every day of a run is cut: its windows, the tiles of the grid's plan touching each,
    and the extent those tiles cover (the window itself without a downscaler)."""

    windows: list[Window]
    tiles: list[list[Tile]]
    extents: list[Window]


def day_layout(pipeline: Pipeline) -> Layout:
    spec, shape = pipeline.product, pipeline.grid.geobox.shape
    windows = day_windows(shape, spec.window)
    if spec.scheme == "bilinear":
        return Layout(windows, [[] for _ in windows], windows)
    plan = tile_plan(*shape, tile=spec.tile, overlap=spec.overlap)
    tiles = [tiles_touching(window, plan) for window in windows]
    return Layout(windows, tiles, [extent_of(t) for t in tiles])


#: Samples tile residuals: (checkpoint, requests) → one (K, h, w) residual per request.
Sampler = Callable[..., list]


@dataclass(frozen=True)
class RunContext:
    """What every day of a run shares."""

    pipeline: Pipeline
    models: ProductModels
    """The checked GPP_M model and downscaler checkpoints (:func:`~.models.check_models`)."""
    static: StaticLayers
    """The DEM and land-cover layers of each window's extent, or why there are none."""
    layout: Layout
    """How each day is cut into windows and tiles."""
    sampler: Sampler | None = None
    """Samples downscaler tiles (the actor pool); ``None`` for a bilinear product."""
    catalog: Catalog | None = None
    """The inputs' catalog (``None`` when the run has no day to make)."""
    outside: np.ndarray | None = None
    """Coarse pixels outside every MODIS footprint (left empty); ``None``: none."""

    @property
    def gap_days(self) -> int:
        """:func:`gap_fill_span` of the run."""
        return gap_fill_span(self.pipeline, self.models.card)


def gap_fill_span(pipeline: Pipeline, card) -> int:
    """Index gaps of GPP_M are filled in time across up to this many days: the model card's
    ``gap_fill_days`` or ``product.max_gap_days`` (flagged beyond the card's)."""
    return max(card.gap_fill_days, pipeline.product.max_gap_days)


def day_seed(seed: int, day: dt.date) -> int:
    """Each day's sampling seed: the same day always gets the same maps."""
    return seed * 1_000_000 + day.toordinal()


@dataclass
class DayPlan:
    """What the windows of a day share: GPP_M as computed and gap-free, the coarse QA, the
    scheme (after the fallbacks) and what the day's item says of it."""

    day: dt.date
    gpp_m: np.ndarray
    filled: np.ndarray
    coarse_qa: np.ndarray
    lost: np.ndarray | None
    """Coarse pixels under input reads lost after their retries."""
    scheme: str
    details: dict
    outside: np.ndarray | None = None
    """Coarse pixels outside every MODIS footprint: left empty."""


def plan_day(
    run: RunContext,
    day: dt.date,
    gpp_m: np.ndarray,
    gap: np.ndarray,
    out_of_range: np.ndarray,
    lost: Lost | None = None,
) -> DayPlan:
    """A day's coarse part from its GPP_M; raises :class:`DaySkipped` when it cannot be
    made, and :class:`InputsLostError` when input reads lost after retries (``lost``, on the
    coarse grid) cover more of it than ``product.max_lost_fraction``."""
    spec = run.pipeline.product
    shape = run.pipeline.grid.geobox.shape
    lost_fraction = fine_fraction(lost.mask, COARSE_FACTOR, shape) if lost is not None else 0.0
    if lost_fraction > spec.max_lost_fraction:
        raise InputsLostError(
            f"{day}: input reads that failed after their retries cover {lost_fraction:.0%} of "
            f"the grid, more than product.max_lost_fraction ({spec.max_lost_fraction:.0%}): "
            f"{named_reads(lost.reads)}; the day is not written and the next run redoes it"
        )
    outside = run.outside if run.outside is not None else np.zeros(gpp_m.shape, dtype=bool)
    gpp_m = np.where(outside, np.nan, gpp_m)
    missing = ~np.isfinite(gpp_m) & ~outside
    if not np.isfinite(gpp_m).any():
        raise DaySkipped("no GPP_M at all on the grid")
    share = missing.sum() / (~outside).sum()
    if share > spec.max_missing_fraction:
        inside = " inside the MODIS footprints" if outside.any() else ""
        raise DaySkipped(
            f"GPP_M missing on {share:.0%} of the coarse grid{inside} (no clear MODIS within "
            f"{spec.max_gap_days} days); at most {spec.max_missing_fraction:.0%} is filled"
        )
    coarse_qa = np.zeros(gpp_m.shape, dtype="uint8")
    filled_in_time = np.isfinite(gpp_m) & (gap > 0)
    long_gap = filled_in_time & (gap > run.models.card.gap_fill_days)
    coarse_qa[filled_in_time & ~long_gap] |= QA_FLAGS["gpp_m_gap_filled"]
    coarse_qa[long_gap] |= QA_FLAGS["gpp_m_long_gap_filled"]
    coarse_qa[missing] |= QA_FLAGS["gpp_m_neighbour_filled"]
    coarse_qa[out_of_range] |= QA_FLAGS["gpp_m_out_of_range"]
    coarse_qa[outside] = 0

    scheme = spec.scheme
    if scheme == "s2" and run.static.problem:
        if "s1" not in run.models.checkpoints:
            raise DaySkipped(f"S2 needs its static layers: {run.static.problem}; no S1 fallback")
        scheme = "s1"
    details = {"scheme": scheme, "seed": day_seed(spec.seed, day), "samples": spec.samples,
               "ddim_steps": spec.ddim_steps}  # fmt: skip
    if lost is not None:
        details["lost_inputs"] = lost.reads
    details["qa_fractions"] = {
        "gpp_m_observed": float((gap == 0).mean()),
        "gpp_m_gap_filled": float((filled_in_time & ~long_gap).mean()),
        "gpp_m_long_gap_filled": float(long_gap.mean()),
        "gpp_m_neighbour_filled": float(missing.mean()),
        "gpp_m_out_of_range": float(out_of_range.mean()),
        "input_lost": lost_fraction,
        "outside_inputs": float(outside.mean()),
    }
    return DayPlan(day, gpp_m.astype("float32"), fill_nearest(gpp_m).astype("float32"),
                   coarse_qa, lost.mask if lost is not None else None, scheme, details,
                   outside if outside.any() else None)  # fmt: skip


def make_windows(run: RunContext, plan: DayPlan, write: Callable[..., None]) -> None:
    """The day's 30 m arrays window by window, each handed to ``write(window, gpp, gpp_sd,
    qa)`` before the next is made; the 480 m mismatch with GPP_M before and after the optional
    consistency shift goes into ``plan.details``."""
    layout = run.layout
    cache = ResidualCache(layout.tiles if plan.scheme != "bilinear" else [])
    errors = np.zeros((2, 2))  # (before, after) x (sum of squares, count)
    for number, (window, tiles, extent) in enumerate(
        zip(layout.windows, layout.tiles, layout.extents, strict=True), 1
    ):
        gpp, gpp_sd, qa, mismatch = window_arrays(run, plan, window, tiles, extent, cache)
        write(window, gpp, gpp_sd, qa)
        for row, differences in enumerate(mismatch):
            errors[row] += (np.square(differences).sum(), differences.size)
        log.debug("%s: window %d of %d done (%d tile residuals kept)", plan.day, number,
                  len(layout.windows), len(cache))  # fmt: skip
    rmse = np.sqrt(errors[:, 0] / np.maximum(errors[:, 1], 1))
    rmse[errors[:, 1] == 0] = np.nan
    plan.details["coarse_mismatch_before"] = float(rmse[0])
    plan.details["coarse_mismatch_after"] = float(rmse[1])


def window_arrays(
    run: RunContext,
    plan: DayPlan,
    window: Window,
    tiles: list[Tile],
    extent: Window,
    cache: ResidualCache,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """One window's GPP, spread and QA, and the 480 m mismatch with GPP_M before and after
    the optional consistency shift: bilinear GPP_M, or the ensemble of the tiles touching the
    window, sampled on the conditions of their ``extent`` (those not in ``cache``)."""
    spec = run.pipeline.product
    if plan.scheme == "bilinear":
        gpp = bilinear_window(plan.filled, factor, window)
        spread = np.zeros_like(gpp)
    else:
        ckpt = run.models.checkpoints[plan.scheme]
        layers = align_static(run.static, extent, ckpt.static) if plan.scheme == "s2" else None
        condition = condition_stack(bilinear_window(plan.filled, factor, extent), layers,
                                    plan.scheme)  # fmt: skip
        validate_condition(condition, ckpt.model.config["cond_channels"], ckpt.scheme)

        def sample(missing: list[Tile]) -> list[np.ndarray]:
            return run.sampler(ckpt, [
                TileRequest(np.ascontiguousarray(condition[(slice(None), *t.window)]),
                            spec.samples, spec.ddim_steps, plan.details["seed"], t.ty, t.tx)
                for t in local_plan(missing, extent)
            ])  # fmt: skip

        members = blend_tiles(condition, local_plan(tiles, extent),
                              cache.residuals(tiles, sample), overlap=spec.overlap)  # fmt: skip
        members = members[(slice(None), *window.within(extent))]
        gpp, spread = members.mean(axis=0), members.std(axis=0)
    path = "bilinear" if plan.scheme == "bilinear" else f"ddpm_{plan.scheme}"
    qa = blocks_window(plan.coarse_qa, factor, window) | QA_FLAGS[path]
    if plan.lost is not None:
        qa[blocks_window(plan.lost, factor, window)] |= QA_FLAGS["input_lost"]
    if plan.outside is not None:  # no GPP_M there: the gap-free field only conditions tiles
        empty = blocks_window(plan.outside, factor, window)
        gpp, spread = np.where(empty, np.nan, gpp), np.where(empty, np.nan, spread)
        qa[empty] = 0
    # Windows start on 480 m block edges, so these are the window's own coarse pixels.
    coarse = plan.filled[window.y0 // factor : -(-window.y1 // factor),
                         window.x0 // factor : -(-window.x1 // factor)]  # fmt: skip
    before = coarse_errors(gpp, coarse, factor)
    if spec.coarse_consistency and plan.scheme != "bilinear":
        gpp = make_consistent(gpp, coarse, factor)
        qa |= QA_FLAGS["coarse_consistency_corrected"]
    after = coarse_errors(gpp, coarse, factor)
    return gpp.astype("float32"), spread.astype("float32"), qa, (before, after)

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
5. Fusion without static layers, or with no clear HLS date within its ``reference_days``
   before the day (a new region's first days) → S2, then S1, then bilinear (the item's
   ``fallback`` says why). Its reference state not brought up to date → the day fails (the
   next run retries it), never a fallback.

Coarse pixels outside every MODIS item's footprint (``RunContext.outside``, found before the
run makes a day) have no GPP_M to fill from: they are left empty (NaN GPP, GPP_M and spread,
QA 0), never neighbour-filled.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from unique_cube.config.catalog import Catalog
from unique_cube.config.pipeline import Pipeline
from unique_cube.downscale.actors import TileRequest
from unique_cube.downscale.conditions import condition_stack, validate_condition
from unique_cube.downscale.consistency import coarse_errors, make_consistent
from unique_cube.downscale.fusion import block_anomaly, fusion_features
from unique_cube.downscale.fusion_train import calibrate, fusion_condition, out_of_range
from unique_cube.downscale.tiling import (
    ResidualCache,
    Tile,
    blend_tiles,
    extent_of,
    local_plan,
    tile_plan,
    tiles_touching,
)
from unique_cube.errors import DownscaleError, InputsLostError, LockBusyError, StoreError
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
from unique_cube.product.modes import two_sided_reference
from unique_cube.product.reference import ReferenceStore
from unique_cube.product.static import StaticLayers, align_static, fusion_terrain
from unique_cube.product.store import QA_FLAGS, QA_PATH_MASK

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
    references: ReferenceStore | None = None
    """The HLS dates' GPP_L the fusion scheme folds into each day's reference state."""
    reference_error: Exception | None = None
    """Why the reference state could not be brought up to date: the fusion days fail (or,
    while another run holds its lock, are left to the next run)."""
    latitude: float = 0.0
    """The grid centre's latitude (the terrain illumination of the fusion features)."""

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
    mode: str = "final"
    """``nrt`` (inputs up to the day only) or ``final`` (:mod:`unique_cube.product.modes`)."""
    reference_dates: set = field(default_factory=set)
    """Fusion: the HLS dates that are some pixel's reference (the day's provenance)."""
    counts: dict = field(default_factory=dict)
    """Fusion: pixels per QA outcome, summed over the windows."""


def plan_day(
    run: RunContext,
    day: dt.date,
    gpp_m: np.ndarray,
    gap: np.ndarray,
    out_of_range: np.ndarray,
    lost: Lost | None = None,
    mode: str = "final",
) -> DayPlan:
    """A day's coarse part from its GPP_M; raises :class:`DaySkipped` when it cannot be
    made, and :class:`InputsLostError` when input reads lost after retries (``lost``, on the
    coarse grid) cover more of it than ``product.max_lost_fraction``. ``gap``: as
    :func:`~unique_cube.product.coarse.observation_gap` gives it for ``mode``."""
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
    coarse_qa = np.zeros(gpp_m.shape, dtype="uint16")
    filled_in_time = np.isfinite(gpp_m) & (gap > 0)
    long_gap = filled_in_time & (gap > run.models.card.gap_fill_days)
    coarse_qa[filled_in_time & ~long_gap] |= QA_FLAGS["gpp_m_gap_filled"]
    coarse_qa[long_gap] |= QA_FLAGS["gpp_m_long_gap_filled"]
    coarse_qa[missing] |= QA_FLAGS["gpp_m_neighbour_filled"]
    coarse_qa[out_of_range] |= QA_FLAGS["gpp_m_out_of_range"]
    # A final day's gap filled between two observations read a later one: an NRT day could not
    later = filled_in_time & np.isfinite(gap) if mode == "final" else np.zeros_like(missing)
    coarse_qa[later] |= QA_FLAGS["final_inputs_differ"]
    coarse_qa[outside] = 0

    scheme, fallback = spec.scheme, ""
    if scheme == "fusion":
        scheme, fallback = _fusion_fallback(run, day, mode)
    if scheme == "s2" and run.static.problem and fallback:
        scheme = "s1" if "s1" in run.models.checkpoints else "bilinear"
    if scheme == "s2" and run.static.problem:
        if "s1" not in run.models.checkpoints:
            raise DaySkipped(f"S2 needs its static layers: {run.static.problem}; no S1 fallback")
        scheme = "s1"
    details = {"mode": mode, "scheme": scheme, "seed": day_seed(spec.seed, day),
               "samples": spec.samples, "ddim_steps": spec.ddim_steps}  # fmt: skip
    if fallback:
        details["fallback"] = fallback
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
        "gpp_m_final_inputs_differ": float(later.mean()),
    }
    return DayPlan(day, gpp_m.astype("float32"), fill_nearest(gpp_m).astype("float32"),
                   coarse_qa, lost.mask if lost is not None else None, scheme, details,
                   outside if outside.any() else None, mode)  # fmt: skip


def _fusion_fallback(run: RunContext, day: dt.date, mode: str = "final") -> tuple[str, str]:
    """The fusion scheme, or the documented fallback (S2, then S1, then bilinear) and why:
    no static layers, or no clear HLS date within the checkpoint's ``reference_days`` before
    the day (a final day: or after it; a new region's first days). A reference state that
    could not be updated is no reason to fall back: the day fails (:class:`LockBusyError`
    while another run holds it)."""
    if isinstance(run.reference_error, LockBusyError):
        raise LockBusyError(f"the reference state is being updated by another run "
                            f"({run.reference_error}); the next run makes the day")  # fmt: skip
    if run.reference_error is not None or run.references is None:
        raise StoreError(f"the reference state could not be updated "
                         f"({run.reference_error or 'no reference store'}); the next run "
                         "retries the day")  # fmt: skip
    ckpt = run.models.checkpoints["fusion"]
    max_days = int(ckpt.fusion["reference_days"])
    both = two_sided_reference(run.pipeline, mode)
    why = ""
    if run.static.problem:
        why = f"the fusion needs the static layers: {run.static.problem}"
    elif not run.references.before(day, max_days, two_sided=both):
        side = "around" if both else "before"
        why = f"no clear HLS date in the {max_days} days {side} {day} (no reference yet)"
    if not why:
        return "fusion", ""
    checkpoints = run.models.checkpoints
    scheme = ("s2" if "s2" in checkpoints and not run.static.problem
              else "s1" if "s1" in checkpoints else "bilinear")  # fmt: skip
    return scheme, f"fusion → {scheme}: {why}"


def make_windows(run: RunContext, plan: DayPlan, write: Callable[..., None]) -> None:
    """The day's 30 m arrays window by window, each handed to ``write(window, gpp, gpp_sd,
    qa)`` before the next is made; the 480 m mismatch with GPP_M before and after the optional
    consistency shift, and the number of downscaler tiles sampled, go into ``plan.details``."""
    layout = run.layout
    uses = layout.tiles if plan.scheme != "bilinear" else []
    cache = ResidualCache(uses)
    plan.details["tiles"] = len({(t.ty, t.tx) for tiles in uses for t in tiles})  # each once
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
    fusion = None
    if plan.scheme == "bilinear":
        gpp = bilinear_window(plan.filled, factor, window)
        spread = np.zeros_like(gpp)
    else:
        ckpt = run.models.checkpoints[plan.scheme]
        base = bilinear_window(plan.filled, factor, extent)
        if plan.scheme == "fusion":
            condition, fusion = _fusion_condition(run, plan, ckpt, extent, base)
        else:
            layers = align_static(run.static, extent, ckpt.static) if plan.scheme == "s2" else None
            condition = condition_stack(base, layers, plan.scheme)
        validate_condition(condition, ckpt.model.config["cond_channels"], ckpt.scheme)

        def sample(missing: list[Tile]) -> list[np.ndarray]:
            return run.sampler(ckpt, [
                TileRequest(np.ascontiguousarray(condition[(slice(None), *t.window)]),
                            spec.samples, spec.ddim_steps, plan.details["seed"], t.ty, t.tx)
                for t in local_plan(missing, extent)
            ])  # fmt: skip

        members = blend_tiles(condition, local_plan(tiles, extent),
                              cache.residuals(tiles, sample), overlap=spec.overlap,
                              **ckpt.blend_options)  # fmt: skip
        if fusion is not None:
            members = calibrate(members, fusion["mean"], ckpt.fusion,
                                ckpt.blend_options["non_negative"])  # fmt: skip
        members = members[(slice(None), *window.within(extent))]
        gpp, spread = members.mean(axis=0), members.std(axis=0)
    path = "bilinear" if plan.scheme == "bilinear" else (
        "fusion" if plan.scheme == "fusion" else f"ddpm_{plan.scheme}")  # fmt: skip
    qa = blocks_window(plan.coarse_qa, factor, window) | QA_FLAGS[path]
    if fusion is not None:
        inner = fusion["inner"] = window.within(extent)
        qa[fusion["no_reference"][inner]] |= QA_FLAGS["no_reference"]
        qa[fusion["out_of_range"][inner]] |= QA_FLAGS["fusion_input_out_of_range"]
        qa[fusion["later_reference"][inner]] |= QA_FLAGS["final_inputs_differ"]
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
    if fusion is not None:
        gpp, spread = _own_clear_pixels(run, plan, window, gpp, spread, qa, fusion)
    after = coarse_errors(gpp, coarse, factor)
    return gpp.astype("float32"), spread.astype("float32"), qa, (before, after)


#: What a pixel that is the day's own clear GPP_L no longer has: the fusion's flags, a shift.
#: (Its value is the same in the day's NRT and final versions.)
_NOT_ON_CLEAR = (QA_PATH_MASK | QA_FLAGS["no_reference"] | QA_FLAGS["fusion_input_out_of_range"]
                 | QA_FLAGS["coarse_consistency_corrected"]
                 | QA_FLAGS["final_inputs_differ"])  # fmt: skip


def _own_clear_pixels(run: RunContext, plan: DayPlan, window: Window, gpp: np.ndarray,
                      spread: np.ndarray, qa: np.ndarray, fusion: dict) -> tuple:  # fmt: skip
    """On a day with a clear HLS overpass its clear pixels are that day's GPP_L (QA path
    ``gpp_l_clear``, spread 0, never shifted); counts for the day's item."""
    clear = run.references.clear(plan.day, window)
    seen = np.isfinite(clear) & np.isfinite(gpp) if clear is not None else np.zeros_like(qa, bool)
    if seen.any():
        gpp, spread = np.where(seen, clear, gpp), np.where(seen, 0.0, spread)
        qa[seen] = (qa[seen] & (0xFFFF ^ _NOT_ON_CLEAR)) | QA_FLAGS["gpp_l_clear"]
    inner = fusion["inner"]
    for name, mask in (("gpp_l_clear", seen), ("pixels", np.isfinite(gpp)),
                       ("no_reference", fusion["no_reference"][inner] & ~seen)):  # fmt: skip
        plan.counts[name] = plan.counts.get(name, 0) + int(mask.sum())
    return gpp, spread


def _fusion_condition(run: RunContext, plan: DayPlan, ckpt, extent: Window,
                      base: np.ndarray) -> tuple[np.ndarray, dict]:  # fmt: skip
    """The fusion conditions of ``extent`` on ``plan.day``: the reference state as of the day,
    the features, the regression mean; and what the QA needs (pixels without a reference,
    features outside the training range). The reference is read over the extent grown to
    whole 480 m blocks, so its within-block anomalies are those of training (the whole
    grid's blocks) wherever the extent starts."""
    max_days = int(ckpt.fusion["reference_days"])
    aligned = _block_aligned(extent, run.pipeline.grid.geobox.shape)
    grown = run.references.state(plan.day, aligned, max_days, plan.reference_dates,
                                 two_sided=two_sided_reference(run.pipeline,
                                                               plan.mode))  # fmt: skip
    inner = extent.within(aligned)
    anomaly = block_anomaly(grown.gpp, factor, offset=(aligned.y0, aligned.x0))[inner]
    reference = grown.window(*inner)
    terrain, names = fusion_terrain(run.static, extent, ckpt, plan.day, run.latitude)
    stack, features = fusion_features(plan.day, base, blocks_window(plan.filled, factor, extent),
                                      reference, terrain, names, anomaly=anomaly)  # fmt: skip
    try:
        mean = run.models.fusion_mean.predict(stack, features,
                                              threads=run.pipeline.product.cpu_threads)  # fmt: skip
    except DownscaleError:
        raise
    except Exception as err:  # LightGBM's own error type
        raise DownscaleError(f"the fusion mean failed on {extent}: {err}") from err
    condition = fusion_condition(ckpt, stack, features, mean)
    return condition, {"mean": mean, "no_reference": ~np.isfinite(reference.gpp),
                       "out_of_range": out_of_range(ckpt, stack),
                       "later_reference": reference.after(plan.day)}  # fmt: skip


def _block_aligned(extent: Window, shape: tuple[int, int]) -> Window:
    """``extent`` grown to whole ``factor`` blocks of the grid (cut at its edge)."""

    def edges(start: int, stop: int, size: int) -> tuple[int, int]:
        return start // factor * factor, min(-(-stop // factor) * factor, size)

    return Window(*edges(extent.y0, extent.y1, shape[0]), *edges(extent.x0, extent.x1, shape[1]))

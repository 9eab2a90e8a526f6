"""``unique-cube run``: the daily 30 m GPP product, one day or a backfill.

For each day: GPP_M on the coarse grid (the MODIS model; index gaps filled in time), then the
downscaler's ensemble at 30 m (mean = the product, spread = its uncertainty), an optional
coarse-consistency shift, a QA layer, and the outputs of :mod:`unique_cube.store`.

Fallback chain when inputs are missing (each step sets its QA bit; see ``store.QA_FLAGS``):

1. MODIS observed the pixel that day → GPP_M as is.
2. Not that day (cloud, no granule) → indices interpolated in time between clear days at most
   the model card's ``gap_fill_days`` apart (``gpp_m_gap_filled``).
3. Still missing → the nearest coarse pixel's GPP_M (``gpp_m_neighbour_filled``), as long as
   at most ``product.max_missing_fraction`` of the grid needs it; else the day is skipped.
4. S2 without its static layers (no DEM or land-cover item) → S1, when its checkpoint exists.

A skipped day is recorded with its reason in the run log and the STAC collection; it never
stops a backfill. A day is done only when its completion marker is written, so a run that
dies mid-day leaves it to the next run; the day lock keeps two runs of one day apart.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import resource
import time
import uuid
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ConfigError, LoadError, UniqueCubeError
from .pipeline import Pipeline
from .windows import Window, day_windows, extent_of, tiles_touching

if TYPE_CHECKING:
    from .downscale import Tile

__all__ = ["DaySkipped", "parse_day", "product_days", "run"]

log = logging.getLogger(__name__)


class DaySkipped(Exception):
    """A day that cannot be produced from the inputs at hand (its reason is recorded)."""


class InputsLostError(LoadError):
    """Input reads that failed after their retries cover too much of a day's grid."""


class MissingModelError(ConfigError):
    """The pipeline names a model that has not been trained."""


def parse_day(text: str, time_zone: str = "UTC", option: str | None = None) -> dt.date:
    """``YYYY-MM-DD``, ``today`` or ``yesterday`` (in ``time_zone``, computed now); an error
    names ``option`` (``--date``) when given, and tells an impossible day (``2023-02-30``)
    from a date in another format."""
    today = dt.datetime.now(zoneinfo.ZoneInfo(time_zone)).date()
    if text == "today":
        return today
    if text == "yesterday":
        return today - dt.timedelta(days=1)
    try:
        return dt.date.fromisoformat(text)
    except ValueError as why:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):  # the form is right, the day is not
            where = f"{option} " if option else ""
            raise ConfigError(f"{where}{text}: no such day ({why})") from None
        where = f"{option}: " if option else ""
        raise ConfigError(
            f"{where}unknown date {text!r}: expected YYYY-MM-DD, 'today' or 'yesterday'"
        ) from None


def product_days(start: dt.date, end: dt.date) -> list[dt.date]:
    if end < start:
        raise ConfigError(f"--end {end} is before --start {start}")
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    """Resident memory now. For Dask workers: their ru_maxrss starts at the peak of the
    process they were forked from, so it says nothing of their own peak."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


@dataclass
class _Models:
    card: dict
    card_path: Path
    hashes: dict[str, str]
    checkpoints: dict  # scheme -> Checkpoint
    paths: dict = field(default_factory=dict)  # scheme -> checkpoint file


def check_models(pipeline: Pipeline) -> _Models:
    """The GPP_M model and the downscaler(s) the product needs, or a clear error."""
    from .downscale import DownscaleError, load_checkpoint
    from .store import sha256_file

    spec = pipeline.product
    models = Path(pipeline.gpp.output)
    card_path, model_path = models / "gpp_modis.card.json", models / "gpp_modis.model"
    for path in (card_path, model_path):
        if not path.exists():
            raise MissingModelError(
                f"{pipeline.path}: gpp.output names {models}, which has no {path.name}; "
                f"run `unique-cube train-gpp {pipeline.path}` first"
            )
    hashes = {"gpp_modis": sha256_file(model_path)}
    checkpoints, paths = {}, {}
    if spec.scheme != "bilinear":
        if pipeline.downscale is None or pipeline.grid is None:
            raise ConfigError(f"{pipeline.path}: product.scheme {spec.scheme} needs the grid "
                              "and downscale sections")  # fmt: skip
        folder = Path(pipeline.downscale.output)
        wanted = ["s2", "s1"] if spec.scheme == "s2" else ["s1"]
        for scheme in wanted:
            path = folder / f"downscaler_{scheme}.pt"
            if not path.exists():
                if scheme == spec.scheme:
                    raise MissingModelError(
                        f"{pipeline.path}: product.scheme is {scheme} but {path} does not "
                        f"exist; run `unique-cube train-downscaler {pipeline.path} "
                        f"--scheme {scheme}` first"
                    )
                continue  # the S1 fallback is optional
            try:
                checkpoints[scheme] = load_checkpoint(path, scheme)
            except DownscaleError as err:
                raise MissingModelError(str(err)) from err
            hashes[f"downscaler_{scheme}"] = sha256_file(path)
            paths[scheme] = path
    return _Models(json.loads(card_path.read_text()), card_path, hashes, checkpoints, paths)


@dataclass
class DayResult:
    day: dt.date
    status: str
    """``done``, ``already done``, ``skipped`` or ``failed``."""
    reason: str = ""
    seconds: float = 0.0
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"day": self.day.isoformat(), "status": self.status, "reason": self.reason,
                "seconds": round(self.seconds, 2), **self.details}  # fmt: skip


@dataclass
class _Coarse:
    """GPP_M of some days on the coarse grid, and what went into it."""

    days: list[dt.date]
    gpp: np.ndarray
    gap: np.ndarray
    """Days between the clear MODIS observations around each pixel-day (0: observed)."""
    out_of_range: np.ndarray
    skipped: dict[dt.date, str]
    modis_items: list[tuple[dt.date, str]]
    weather_items: list[str]
    lost: dict[dt.date, Lost] = field(default_factory=dict)
    """Per day: the MODIS reads of that day lost after their retries, and their footprint."""


@dataclass
class Lost:
    """Input reads lost after their retries: which, and the pixels of a grid they covered."""

    mask: np.ndarray
    reads: list[dict]

    def merged(self, other: Lost | None) -> Lost:
        """Both losses: the union of their pixels, and all their reads."""
        if other is None:
            return self
        return Lost(self.mask | other.mask, self.reads + other.reads)


def _read_owners(items) -> dict[str, tuple]:
    """Asset href (without query) → (item, asset key), to name a lost read by its item."""
    from .reads import strip_query

    return {strip_query(asset.href): (item, key) for item in items
            for key, asset in item.assets.items()}  # fmt: skip


def _lost_read(event: dict, owners: dict[str, tuple]) -> dict:
    """A lost read as provenance: item id, asset key, attempts, reason (no URL)."""
    item, key = owners.get(event["href"], (None, None))
    return {"item": item.id if item is not None else None, "asset": key,
            "attempts": event["attempts"], "reason": event["reason"]}  # fmt: skip


def _named(reads: list[dict]) -> str:
    return ", ".join(sorted({f"{r['item']}/{r['asset']}" for r in reads}))


def lost_inputs(events: list[dict], items, geobox) -> dict[str | None, Lost]:
    """Lost reads (from :func:`unique_cube.reads.lost_reads`) by the item they belong to,
    grouped by the item's solar day (``None`` for items without a date): their footprints on
    ``geobox`` and what was lost (item id, asset, attempts, reason; no URL)."""
    from odc.geo.geom import Geometry
    from odc.geo.xr import rasterize

    owners = _read_owners(items)
    out: dict = {}
    for event in events:
        item = owners.get(event["href"], (None, None))[0]
        read = _lost_read(event, owners)
        if item is None:  # not one of these items: its whole grid is in doubt
            mask = np.ones(geobox.shape, dtype=bool)
            day = None
        else:
            footprint = Geometry(item.geometry, "EPSG:4326").to_crs(geobox.crs)
            mask = rasterize(footprint, geobox, all_touched=True).values.astype(bool)
            when = item.datetime or item.common_metadata.start_datetime
            day = when.date() if when is not None else None
        out[day] = Lost(mask, [read]).merged(out.get(day))
    return out


def observation_gap(observed: np.ndarray) -> np.ndarray:
    """For daily (T, …) observation flags: 0 where observed, else the days between the
    observations before and after (inf when there is none on one side)."""
    t = np.arange(observed.shape[0]).reshape(-1, *([1] * (observed.ndim - 1)))
    before = np.maximum.accumulate(np.where(observed, t, -1), axis=0).astype("float64")
    after = np.minimum.accumulate(np.where(observed, t, 1 << 30)[::-1], axis=0)[::-1]
    after = after.astype("float64")
    gap = np.where((before < 0) | (after >= 1 << 30), np.inf, after - before)
    return np.where(observed, 0.0, gap)


def gpp_m_block(pipeline: Pipeline, catalog, card_path: Path, days: list[dt.date]) -> _Coarse:
    """GPP_M for consecutive days, computed at once (one MODIS load for the block)."""
    import dask
    import pandas as pd

    from .catalog import search
    from .errors import EmptySearchError
    from .maps import coarse_geobox, gpp_modis, lonlat_bbox, weather_for, weather_items
    from .reads import lost_reads, use_read_policy

    gpp = pipeline.gpp
    geobox = pipeline.grid.geobox
    card_gap = int(json.loads(card_path.read_text()).get("gap_fill_days", 16))
    gap = max(card_gap, pipeline.product.max_gap_days)
    first, last = days[0] - dt.timedelta(days=gap), days[-1] + dt.timedelta(days=gap)
    empty = _Coarse([], np.empty(0), np.empty(0), np.empty(0), {}, [], [])
    try:
        w_items = weather_items(catalog, gpp.weather, geobox, first, last)
    except EmptySearchError:
        empty.skipped = {d: f"no {gpp.weather} item for {first}..{last}" for d in days}
        return empty
    daily = weather_for(catalog, gpp.weather, geobox, first, last, gpp.utc_offset_hours,
                        items=w_items)  # fmt: skip
    have = {pd.Timestamp(t).date() for t in daily["time"].values}
    skipped = {d: f"no complete day of {gpp.weather} reanalysis" for d in days if d not in have}
    todo = [d for d in days if d in have]
    if not todo:
        empty.skipped = skipped
        return empty
    window = sorted(d for d in have if first <= d <= last)
    period = f"{window[0]}/{window[-1]}"
    try:
        m_items = search(gpp.modis.source, lonlat_bbox(geobox), period, catalog=catalog)
    except EmptySearchError:
        skipped.update({d: f"no {gpp.modis.source} item within {gap} days" for d in todo})
        empty.skipped = skipped
        return empty
    ledger = f"gpp-m-{uuid.uuid4().hex}"
    with use_read_policy(retries=pipeline.product.read_retries, ledger=ledger):
        result = gpp_modis(catalog, gpp.modis.source, card_path, geobox, period, daily,
                           items=m_items, every_day=True, gap_fill_days=gap)  # fmt: skip
    chosen = [np.datetime64(d, "ns") for d in todo]
    values, observed, oor = dask.compute(
        result["gpp"].sel(time=chosen), result["clear"], result["out_of_range"].sel(time=chosen)
    )
    lost = lost_inputs(lost_reads(ledger), m_items, coarse_geobox(geobox))
    if None in lost:  # a read of no dated item: every day of the block is in doubt
        lost = {d: lost[None].merged(lost.get(d)) for d in todo}
    gaps = observation_gap(observed.values.astype(bool))
    index = observed.get_index("time").get_indexer(pd.DatetimeIndex(chosen))
    return _Coarse(
        days=todo,
        gpp=values.values.astype("float32"),
        gap=gaps[index],
        out_of_range=oor.values.astype(bool),
        skipped=skipped,
        modis_items=[
            ((item.datetime or item.common_metadata.start_datetime).date(), item.id)
            for item in m_items
        ],
        weather_items=[item.id for item in w_items],
        lost=lost,
    )


@dataclass
class _Static:
    """The DEM and land-cover layers of each window's extent, prepared once and kept on disk
    (a window's worth in memory at a time); or why there are none (the S1 fallback)."""

    files: dict[Window, Path]
    items: dict[str, list[str]]
    problem: str = ""

    def layers(self, extent: Window) -> tuple[np.ndarray, list[str]]:
        with np.load(self.files[extent]) as saved:
            return saved["layers"], [str(name) for name in saved["names"]]


#: Bump when what :func:`_static_for` keeps changes, so that old files are not taken.
_STATIC_VERSION = 1


def _static_for(catalog, geobox, extents: list[Window], folder: Path, retries: int = 3) -> _Static:
    """The static layers of every extent, loaded window by window (each grown by a pixel, so
    slopes at its edges are those of the whole grid) into ``folder``; files made from the
    same items for the same grid are reused."""
    from .downscaling import static_items, static_layers
    from .errors import CatalogError, LoadError
    from .reads import lost_reads, use_read_policy

    items: dict[str, list[str]] = {}
    try:
        searched = static_items(catalog, geobox, provenance=items)
    except CatalogError as err:
        return _Static({}, items, f"static layers unavailable ({err})")
    key = json.dumps({"grid": [str(geobox.crs), list(geobox.shape), list(geobox.transform)[:6]],
                      "items": items, "version": _STATIC_VERSION}, sort_keys=True)  # fmt: skip
    folder = folder / hashlib.sha256(key.encode()).hexdigest()[:16]
    owners = _read_owners([item for found in searched for item in found])
    files: dict[Window, Path] = {}
    for extent in dict.fromkeys(extents):
        path = folder / f"{extent.y0}-{extent.y1}_{extent.x0}-{extent.x1}.npz"
        if not path.exists():
            grown = extent.grown(1, geobox.shape)
            ledger = f"static-{uuid.uuid4().hex}"
            try:
                with use_read_policy(retries=retries, ledger=ledger):
                    layers, names = static_layers(catalog, geobox[grown.slices], searched=searched)
            except (CatalogError, LoadError) as err:
                return _Static({}, items, f"static layers unavailable ({err})")
            lost = [_lost_read(event, owners) for event in lost_reads(ledger)]
            if lost:  # holes in the DEM or land cover: the days take the S1 fallback (QA bits)
                why = f"static layers incomplete (reads lost: {_named(lost)})"
                return _Static({}, items, why)
            _save_layers(path, layers[(slice(None), *extent.within(grown))], names)
        files[extent] = path
    return _Static(files, items)


def _save_layers(path: Path, layers: np.ndarray, names: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with partial.open("wb") as file:
            np.savez(file, layers=layers, names=np.array(names))
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def _align_static(static: _Static, extent: Window, info: dict) -> np.ndarray:
    """The static layers of ``extent`` in the checkpoint's order; a land-cover class absent
    there is 0."""
    from .downscale import DownscaleError, apply_static_normalisation

    layers, names = static.layers(extent)
    by_name = dict(zip(names, layers, strict=True))
    missing = [n for n in info["names"] if n not in by_name and not n.startswith("lc_")]
    if missing:
        raise DownscaleError(f"conditioning layer(s) {missing} missing from the static layers")
    extra = [n for n in names if n not in info["names"]]
    if extra:
        log.warning("land-cover classes %s were not in the downscaler's training region; "
                    "they are left out of its conditions", extra)  # fmt: skip
    zeros = np.zeros(layers.shape[1:], dtype="float32")
    stack = np.stack([by_name.get(n, zeros) for n in info["names"]])
    return apply_static_normalisation(stack, info)


@dataclass
class _Layout:
    """How every day of a run is cut: its windows, the tiles of the grid's plan touching each,
    and the extent those tiles cover (the window itself without a downscaler)."""

    windows: list[Window]
    tiles: list[list[Tile]]
    extents: list[Window]


def _layout(pipeline: Pipeline) -> _Layout:
    from .downscale import tile_plan

    spec, shape = pipeline.product, pipeline.grid.geobox.shape
    windows = day_windows(shape, spec.window)
    if spec.scheme == "bilinear":
        return _Layout(windows, [[] for _ in windows], windows)
    plan = tile_plan(*shape, tile=spec.tile, overlap=spec.overlap)
    tiles = [tiles_touching(window, plan) for window in windows]
    return _Layout(windows, tiles, [extent_of(t) for t in tiles])


#: Samples tile residuals: (checkpoint, requests) → one (K, h, w) residual per request.
Sampler = Callable[..., list]


def day_seed(seed: int, day: dt.date) -> int:
    """Each day's sampling seed: the same day always gets the same maps."""
    return seed * 1_000_000 + day.toordinal()


@dataclass
class _DayPlan:
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


def plan_day(
    pipeline: Pipeline,
    models: _Models,
    static: _Static,
    day: dt.date,
    gpp_m: np.ndarray,
    gap: np.ndarray,
    out_of_range: np.ndarray,
    lost: Lost | None = None,
) -> _DayPlan:
    """A day's coarse part from its GPP_M; raises :class:`DaySkipped` when it cannot be
    made, and :class:`InputsLostError` when input reads lost after retries (``lost``, on the
    coarse grid) cover more of it than ``product.max_lost_fraction``."""
    from .downscale import _fill_nearest
    from .maps import COARSE_FACTOR
    from .store import QA_FLAGS
    from .windows import fine_fraction

    spec = pipeline.product
    shape = pipeline.grid.geobox.shape
    lost_fraction = fine_fraction(lost.mask, COARSE_FACTOR, shape) if lost is not None else 0.0
    if lost_fraction > spec.max_lost_fraction:
        raise InputsLostError(
            f"{day}: input reads that failed after their retries cover {lost_fraction:.0%} of "
            f"the grid, more than product.max_lost_fraction ({spec.max_lost_fraction:.0%}): "
            f"{_named(lost.reads)}; the day is not written and the next run redoes it"
        )
    missing = ~np.isfinite(gpp_m)
    if missing.all():
        raise DaySkipped("no GPP_M at all on the grid")
    if missing.mean() > spec.max_missing_fraction:
        raise DaySkipped(
            f"GPP_M missing on {missing.mean():.0%} of the coarse grid (no clear MODIS within "
            f"{spec.max_gap_days} days); at most {spec.max_missing_fraction:.0%} is filled"
        )
    coarse_qa = np.zeros(gpp_m.shape, dtype="uint8")
    filled_in_time = np.isfinite(gpp_m) & (gap > 0)
    long_gap = filled_in_time & (gap > models.card.get("gap_fill_days", 16))
    coarse_qa[filled_in_time & ~long_gap] |= QA_FLAGS["gpp_m_gap_filled"]
    coarse_qa[long_gap] |= QA_FLAGS["gpp_m_long_gap_filled"]
    coarse_qa[missing] |= QA_FLAGS["gpp_m_neighbour_filled"]
    coarse_qa[out_of_range] |= QA_FLAGS["gpp_m_out_of_range"]

    scheme = spec.scheme
    if scheme == "s2" and static.problem:
        if "s1" not in models.checkpoints:
            raise DaySkipped(f"S2 needs its static layers: {static.problem}; no S1 fallback")
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
    }
    return _DayPlan(day, gpp_m.astype("float32"), _fill_nearest(gpp_m).astype("float32"),
                    coarse_qa, lost.mask if lost is not None else None, scheme,
                    details)  # fmt: skip


def make_windows(
    pipeline: Pipeline,
    models: _Models,
    static: _Static,
    plan: _DayPlan,
    layout: _Layout,
    sampler: Sampler | None,
    write: Callable[..., None],
) -> None:
    """The day's 30 m arrays window by window, each handed to ``write(window, gpp, gpp_sd,
    qa)`` before the next is made; the 480 m mismatch with GPP_M before and after the optional
    consistency shift goes into ``plan.details``."""
    from .windows import ResidualCache

    cache = ResidualCache(layout.tiles if plan.scheme != "bilinear" else [])
    errors = np.zeros((2, 2))  # (before, after) x (sum of squares, count)
    for number, (window, tiles, extent) in enumerate(
        zip(layout.windows, layout.tiles, layout.extents, strict=True), 1
    ):
        gpp, gpp_sd, qa, mismatch = _window_arrays(pipeline, models, static, plan, window,
                                                   tiles, extent, sampler, cache)  # fmt: skip
        write(window, gpp, gpp_sd, qa)
        for row, differences in enumerate(mismatch):
            errors[row] += (np.square(differences).sum(), differences.size)
        log.debug("%s: window %d of %d done (%d tile residuals kept)", plan.day, number,
                  len(layout.windows), len(cache))  # fmt: skip
    rmse = np.sqrt(errors[:, 0] / np.maximum(errors[:, 1], 1))
    rmse[errors[:, 1] == 0] = np.nan
    plan.details["coarse_mismatch_before"] = float(rmse[0])
    plan.details["coarse_mismatch_after"] = float(rmse[1])


def _window_arrays(pipeline, models, static, plan: _DayPlan, window: Window, tiles, extent,
                   sampler, cache):  # fmt: skip
    from .distributed import TileRequest
    from .downscale import blend_tiles, condition_stack, validate_condition
    from .downscaling import coarse_errors, make_consistent
    from .maps import COARSE_FACTOR as factor
    from .store import QA_FLAGS
    from .windows import bilinear_window, blocks_window, local_plan

    spec = pipeline.product
    if plan.scheme == "bilinear":
        gpp = bilinear_window(plan.filled, factor, window)
        spread = np.zeros_like(gpp)
    else:
        ckpt = models.checkpoints[plan.scheme]
        layers = _align_static(static, extent, ckpt.static) if plan.scheme == "s2" else None
        condition = condition_stack(bilinear_window(plan.filled, factor, extent), layers,
                                    plan.scheme)  # fmt: skip
        validate_condition(condition, ckpt.model.config["cond_channels"], ckpt.scheme)

        def sample(missing: list[Tile]) -> list[np.ndarray]:
            return sampler(ckpt, [
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
    # Windows start on 480 m block edges, so these are the window's own coarse pixels.
    coarse = plan.filled[window.y0 // factor : -(-window.y1 // factor),
                         window.x0 // factor : -(-window.x1 // factor)]  # fmt: skip
    before = coarse_errors(gpp, coarse, factor)
    if spec.coarse_consistency and plan.scheme != "bilinear":
        gpp = make_consistent(gpp, coarse, factor)
        qa |= QA_FLAGS["coarse_consistency_corrected"]
    after = coarse_errors(gpp, coarse, factor)
    return gpp.astype("float32"), spread.astype("float32"), qa, (before, after)


def _day_item(pipeline, store, day, cogs, provenance: dict, details: dict, hashes: dict) -> dict:
    """The day's STAC item: assets with checksums, processing and provenance; no asset URL
    of the inputs (they may be signed), only their item ids."""
    from . import __version__
    from .store import COARSE_VARIABLES, COG_TYPE, COLLECTION_ID, VARIABLES, file_checksum

    geobox, coarse = store.geobox, store.coarse
    extent = geobox.extent.to_crs("EPSG:4326")
    offset = dt.timedelta(hours=pipeline.gpp.utc_offset_hours)
    start = dt.datetime.combine(day, dt.time()) - offset
    item_dir = store.item_path(day).parent
    assets = {}
    for name, path in cogs.items():
        grid = coarse if name == "gpp_m" else geobox
        assets[name] = {
            "href": os.path.relpath(path, item_dir),
            "type": COG_TYPE,
            "roles": ["data"] if name != "qa" else ["metadata", "data-mask"],
            "title": {**VARIABLES, **COARSE_VARIABLES}[name][2]["long_name"],
            "file:checksum": file_checksum(path),
            "file:size": path.stat().st_size,
            "proj:shape": list(grid.shape),
            "proj:transform": list(grid.transform)[:6],
        }
    assets["datacube"] = {
        "href": os.path.relpath(store.zarr, item_dir),
        "type": "application/vnd+zarr",
        "roles": ["data"],
        "title": "Zarr v3 datacube of all days (this day is one time step)",
    }
    crs = str(geobox.crs)
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
            "https://stac-extensions.github.io/file/v2.1.0/schema.json",
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
        ],
        "id": f"{COLLECTION_ID}-{day.isoformat()}",
        "collection": COLLECTION_ID,
        "geometry": extent.json,
        "bbox": [round(v, 6) for v in extent.boundingbox],
        "properties": {
            "datetime": None,
            "start_datetime": f"{start:%Y-%m-%dT%H:%M:%SZ}",
            "end_datetime": f"{start + dt.timedelta(days=1, seconds=-1):%Y-%m-%dT%H:%M:%SZ}",
            "unique_cube:local_day": day.isoformat(),
            "processing:level": "L4",
            "processing:software": {"unique-cube": __version__},
            "processing:datetime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "processing:lineage": (
                "GPP_M: LightGBM on MODIS indices and reanalysis weather (480 m); "
                f"30 m: {details['scheme']} conditional diffusion ensemble of "
                f"{pipeline.product.samples}, mean and spread"
            ),
            **{f"unique_cube:{k}": v for k, v in details.items()},
            "unique_cube:inputs": provenance,
            "unique_cube:models": {name: {"sha256": digest} for name, digest in hashes.items()},
            **({"proj:epsg": geobox.crs.epsg} if geobox.crs.epsg else {"proj:wkt2": crs}),
            "proj:shape": list(geobox.shape),
            "proj:transform": list(geobox.transform)[:6],
        },
        "assets": assets,
        "links": [
            {"rel": "root", "href": "../../catalog.json", "type": "application/json"},
            {"rel": "parent", "href": "../collection.json", "type": "application/json"},
            {"rel": "collection", "href": "../collection.json", "type": "application/json"},
            {"rel": "self", "href": f"./{day.isoformat()}.json", "type": "application/geo+json"},
        ],
    }


def run(
    pipeline: Pipeline,
    days: list[dt.date],
    *,
    force: bool = False,
    sampler: Sampler | None = None,
    say: Callable[[str], None] = log.info,
) -> dict:
    """Produce ``days``; a done day is kept unless ``force``. Returns the run log (also
    written to ``<output>/runs/``): each day's status, reason and seconds."""
    from .maps import coarse_geobox
    from .store import ProductStore
    from .training import open_catalog

    spec = pipeline.product
    if spec is None or pipeline.grid is None:
        raise ConfigError(f"{pipeline.path}: `unique-cube run` needs the grid and product sections")
    today = dt.datetime.now(zoneinfo.ZoneInfo(spec.time_zone)).date()
    future = [d for d in days if d >= today]
    if future:
        raise ConfigError(f"{future[0]} has not ended yet in {spec.time_zone}; its inputs "
                          "cannot exist (the latest day is yesterday)")  # fmt: skip
    models = check_models(pipeline)
    geobox = pipeline.grid.geobox
    store = ProductStore(spec.output, geobox, coarse_geobox(geobox),
                         lock_timeout=spec.lock_timeout_s)  # fmt: skip
    started = dt.datetime.now(dt.UTC)
    log_path = store.root / "runs" / f"{started:%Y%m%dT%H%M%S}-{os.getpid()}.json"
    results: list[DayResult] = []
    todo = [d for d in days if force or not store.is_done(d)]
    results += [DayResult(d, "already done") for d in days if d not in todo]
    if results:
        say(f"{len(results)} of {len(days)} days already done (kept; --force redoes them)")
    with contextlib.ExitStack() as stack:
        static = _Static({}, {})
        layout = _layout(pipeline)
        if todo:  # else nothing to make: no catalog, no cluster
            if sampler is None and spec.scheme != "bilinear":
                sampler = _actor_sampler(stack, models, say)
            catalog = stack.enter_context(open_catalog(pipeline))
            _check_coverage(pipeline, catalog, todo)
            if spec.scheme == "s2":
                static = _static_for(catalog, geobox, layout.extents,
                                     store.root / "cache" / "static",
                                     spec.read_retries)  # fmt: skip
        if static.problem:
            say(f"warning: {static.problem}; days fall back to S1")
        if len(layout.windows) > 1:
            say(f"each day in {len(layout.windows)} windows of at most {spec.window} px")
        for block_start in range(0, len(todo), spec.block_days):
            block = todo[block_start : block_start + spec.block_days]
            say(f"GPP_M for {block[0]}..{block[-1]}")
            try:
                coarse = gpp_m_block(pipeline, catalog, models.card_path, block)
            except UniqueCubeError as err:  # the block's days fail; the backfill goes on
                log.exception("GPP_M for %s..%s failed", block[0], block[-1])
                say(f"{block[0]}..{block[-1]}: failed: {err}")
                results += [DayResult(d, "failed", f"GPP_M: {err}") for d in block]
                _write_run_log(log_path, pipeline, started, results)
                continue
            for day in block:
                result = _one_day(pipeline, store, models, static, layout, coarse, day, force,
                                  sampler, say)  # fmt: skip
                results.append(result)
                _write_run_log(log_path, pipeline, started, results)
        client = getattr(sampler, "client", None)
        workers = client.run(_rss_mb) if client is not None else {}
    report = _write_run_log(log_path, pipeline, started, results, workers)
    counts = report["counts"]
    say(f"run log: {log_path} ({', '.join(f'{v} {k}' for k, v in counts.items())})")
    return report


def _actor_sampler(stack: contextlib.ExitStack, models: _Models, say) -> Sampler:
    """Tiles sampled by GPU-pinned Dask actors (one per GPU worker, supervised): the cluster
    named by ``$DASK_SCHEDULER_ADDRESS``, or a local one (its dashboard link is said)."""
    from .distributed import ActorPool, dask_client

    client = stack.enter_context(dask_client(cpu_threads=os.cpu_count() or 1, say=say))
    pools: dict[str, ActorPool] = {}

    def sample(ckpt, requests: list) -> list[np.ndarray]:
        if ckpt.scheme not in pools:
            pools[ckpt.scheme] = stack.enter_context(
                ActorPool(client, models.paths[ckpt.scheme], torch_threads=os.cpu_count())
            )
        return pools[ckpt.scheme].map(requests)

    sample.client = client  # type: ignore[attr-defined]
    return sample


def _check_coverage(pipeline: Pipeline, catalog, days: list[dt.date]) -> None:
    """A run whose days the reanalysis does not cover at all is a mistake, not a bad day."""
    from .errors import CatalogError, EmptySearchError
    from .maps import lonlat_bbox, weather_items

    try:
        weather_items(catalog, pipeline.gpp.weather, pipeline.grid.geobox, min(days), max(days))
    except EmptySearchError:
        bbox = [round(v, 3) for v in lonlat_bbox(pipeline.grid.geobox)]
        raise CatalogError(
            f"{min(days)}..{max(days)} over the grid (bbox {bbox}) is outside the inputs' "
            f"coverage: catalog {catalog.name} has no {pipeline.gpp.weather} reanalysis for "
            "these dates or this area"
        ) from None


def _one_day(pipeline, store, models, static, layout, coarse: _Coarse, day, force, sampler,
             say):  # fmt: skip
    from .store import LockBusyError

    began = time.perf_counter()
    if day in coarse.skipped:
        return _skip(store, day, coarse.skipped[day], say)
    i = coarse.days.index(day)
    window = dt.timedelta(
        days=max(int(models.card.get("gap_fill_days", 16)), pipeline.product.max_gap_days)
    )
    try:
        with store.day_lock(day):
            if store.is_done(day) and not force:
                return DayResult(day, "already done", "finished by another run meanwhile")
            store.forget(day)
            plan = plan_day(pipeline, models, static, day, coarse.gpp[i], coarse.gap[i],
                            coarse.out_of_range[i], coarse.lost.get(day))  # fmt: skip
            tags = {"date": day.isoformat(), "software": "unique-cube"}
            with store.open_day(day, tags) as writer:
                make_windows(pipeline, models, static, plan, layout, sampler, writer.write)
                cogs = writer.finish(plan.gpp_m)
            details = plan.details
            provenance = {
                pipeline.gpp.modis.source: sorted(
                    iid for when, iid in coarse.modis_items if abs(when - day) <= window
                ),
                pipeline.gpp.weather: coarse.weather_items,
                **static.items,
            }
            item = _day_item(pipeline, store, day, cogs, provenance, details, models.hashes)
            seconds = time.perf_counter() - began
            marker = {"day": day.isoformat(), "seconds": round(seconds, 2),
                      "finished": dt.datetime.now(dt.UTC).isoformat(),
                      "item": str(store.item_path(day).relative_to(store.root)),
                      "checksums": {k: a["file:checksum"] for k, a in item["assets"].items()
                                    if "file:checksum" in a}}  # fmt: skip
            store.commit(day, item, marker)
    except DaySkipped as why:
        return _skip(store, day, str(why), say)
    except LockBusyError as err:
        return _skip(store, day, str(err), say, record=False)
    except UniqueCubeError as err:
        log.exception("%s failed", day)
        say(f"{day}: failed: {err}")
        return DayResult(day, "failed", str(err), time.perf_counter() - began)
    seconds = time.perf_counter() - began
    before, after = details["coarse_mismatch_before"], details["coarse_mismatch_after"]
    say(f"{day}: done in {seconds:.1f} s ({details['scheme']}; 480 m mismatch with GPP_M "
        f"{before:.3f} → {after:.3f} gC m-2 d-1)")  # fmt: skip
    keep = ("scheme", "coarse_mismatch_before", "coarse_mismatch_after", "qa_fractions",
            "lost_inputs")  # fmt: skip
    return DayResult(day, "done", "", seconds, {k: details[k] for k in keep if k in details})


def _skip(store, day, reason: str, say, record: bool = True) -> DayResult:
    say(f"{day}: skipped: {reason}")
    if record:
        store.record_skip(day, reason)
    return DayResult(day, "skipped", reason)


def _write_run_log(
    path: Path, pipeline: Pipeline, started, results: list[DayResult], workers: dict | None = None
) -> dict:
    from . import __version__
    from .store import _write_json

    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    done = [r for r in results if r.status == "done"]
    report = {
        "pipeline": pipeline.path,
        "software": {"unique-cube": __version__},
        "started": started.isoformat(),
        "days": [r.as_dict() for r in sorted(results, key=lambda r: r.day)],
        "counts": counts,
        "seconds_per_day": round(float(np.mean([r.seconds for r in done])), 2) if done else None,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "worker_rss_mb": {k: round(v, 1) for k, v in (workers or {}).items()},
    }
    _write_json(path, report)
    return report

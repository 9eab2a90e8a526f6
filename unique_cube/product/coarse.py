"""GPP_M for a block of days: the coarse half of a product day.

:func:`gpp_m_block` computes the MODIS model's GPP_M on the coarse grid for consecutive days
at once (one MODIS load for the block, index gaps filled in time across up to
``product.max_gap_days``), with how far each pixel-day was from a clear observation
(:func:`observation_gap`), the items it read, and the reads lost after their retries
(:func:`lost_inputs`: their footprints, by day).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from unique_cube.config.pipeline import Pipeline
from unique_cube.errors import EmptySearchError
from unique_cube.gpp.predict import MapInputs, gpp_modis
from unique_cube.grid import COARSE_FACTOR, coarse_geobox, lonlat_bbox
from unique_cube.inputs.reads import lost_reads, strip_query, use_read_policy
from unique_cube.inputs.search import search
from unique_cube.inputs.terrain import computed_coarse_terrain
from unique_cube.inputs.weather import weather_for, weather_items

__all__ = [
    "BlockInputs",
    "CoarseDays",
    "Lost",
    "block_inputs",
    "gpp_m_block",
    "lost_inputs",
    "lost_read",
    "named_reads",
    "observation_gap",
    "read_owners",
]


@dataclass
class CoarseDays:
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


def read_owners(items) -> dict[str, tuple]:
    """Asset href (without query) → (item, asset key), to name a lost read by its item."""
    return {strip_query(asset.href): (item, key) for item in items
            for key, asset in item.assets.items()}  # fmt: skip


def lost_read(event: dict, owners: dict[str, tuple]) -> dict:
    """A lost read as provenance: item id, asset key, attempts, reason (no URL)."""
    item, key = owners.get(event["href"], (None, None))
    return {"item": item.id if item is not None else None, "asset": key,
            "attempts": event["attempts"], "reason": event["reason"]}  # fmt: skip


def named_reads(reads: list[dict]) -> str:
    return ", ".join(sorted({f"{r['item']}/{r['asset']}" for r in reads}))


def lost_inputs(events: list[dict], items, geobox) -> dict[str | None, Lost]:
    """Lost reads (from :func:`unique_cube.inputs.reads.lost_reads`) by the item they belong to,
    grouped by the item's solar day (``None`` for items without a date): their footprints on
    ``geobox`` and what was lost (item id, asset, attempts, reason; no URL)."""
    from odc.geo.geom import Geometry
    from odc.geo.xr import rasterize

    owners = read_owners(items)
    out: dict = {}
    for event in events:
        item = owners.get(event["href"], (None, None))[0]
        read = lost_read(event, owners)
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


def observation_gap(observed: np.ndarray, causal: bool = False) -> np.ndarray:
    """For daily (T, …) observation flags: 0 where observed, else the days between the
    observations before and after (inf when there is none on one side); ``causal``: the days
    since the last observation (inf when there is none), what a near-real-time day fills."""
    t = np.arange(observed.shape[0]).reshape(-1, *([1] * (observed.ndim - 1)))
    before = np.maximum.accumulate(np.where(observed, t, -1), axis=0).astype("float64")
    if causal:
        return np.where(observed, 0.0, np.where(before < 0, np.inf, t - before))
    after = np.minimum.accumulate(np.where(observed, t, 1 << 30)[::-1], axis=0)[::-1]
    after = after.astype("float64")
    gap = np.where((before < 0) | (after >= 1 << 30), np.inf, after - before)
    return np.where(observed, 0.0, gap)


@dataclass
class BlockInputs:
    """The inputs of a block of days, searched once for the block (:func:`block_inputs`)."""

    days: list[dt.date]
    """The days the inputs can make (the others are in ``skipped``)."""
    gap: int
    """Index gaps are filled in time across up to this many days."""
    mode: str = "final"
    """``nrt``: no input after the block's last day is read, and gaps are filled from earlier
    days only; ``final``: from both sides (:mod:`unique_cube.product.modes`)."""
    period: str = ""
    """The MODIS span read: the days ± ``gap``, within the reanalysis."""
    daily: xr.Dataset | None = None
    """The reanalysis' daily weather of the span (lazy)."""
    weather_items: list = field(default_factory=list)
    modis_items: list = field(default_factory=list)
    skipped: dict[dt.date, str] = field(default_factory=dict)


def block_inputs(pipeline: Pipeline, catalog, days: list[dt.date], gap: int,
                 mode: str = "final") -> BlockInputs:  # fmt: skip
    """The reanalysis and MODIS items of consecutive days (``gap`` days padded before, and
    after unless ``mode`` is ``nrt``) and the lazy daily weather; days without a complete
    reanalysis day or any MODIS item within ``gap`` days are skipped with their reason."""
    gpp, geobox = pipeline.gpp, pipeline.grid.geobox
    ahead = 0 if mode == "nrt" else gap
    first, last = days[0] - dt.timedelta(days=gap), days[-1] + dt.timedelta(days=ahead)
    try:
        w_items = weather_items(catalog, gpp.weather, geobox, first, last)
    except EmptySearchError:
        return BlockInputs([], gap, mode, skipped={
            d: f"no {gpp.weather} item for {first}..{last}" for d in days})  # fmt: skip
    daily = weather_for(catalog, gpp.weather, geobox, first, last, gpp.utc_offset_hours,
                        items=w_items)  # fmt: skip
    have = {pd.Timestamp(t).date() for t in daily["time"].values}
    skipped = {d: f"no complete day of {gpp.weather} reanalysis" for d in days if d not in have}
    todo = [d for d in days if d in have]
    if not todo:
        return BlockInputs([], gap, mode, skipped=skipped)
    window = sorted(d for d in have if first <= d <= last)
    period = f"{window[0]}/{window[-1]}"
    try:
        m_items = search(gpp.modis.source, lonlat_bbox(geobox), period, catalog=catalog)
    except EmptySearchError:
        skipped.update({d: f"no {gpp.modis.source} item within {gap} days" for d in todo})
        return BlockInputs([], gap, mode, skipped=skipped)
    return BlockInputs(todo, gap, mode, period, daily, w_items, m_items, skipped)


def gpp_m_block(pipeline: Pipeline, catalog, card_path: Path, inputs: BlockInputs) -> CoarseDays:
    """GPP_M for a block's days, computed at once (one MODIS load for the block)."""
    import dask

    todo = inputs.days
    if not todo:
        return CoarseDays([], np.empty(0), np.empty(0), np.empty(0), inputs.skipped, [], [])
    geobox = pipeline.grid.geobox
    ledger = f"gpp-m-{uuid.uuid4().hex}"
    # The DEM's reads have a ledger of their own: a lost one makes flat ground there (said
    # in the log), not a MODIS input lost for the block's days.
    with use_read_policy(retries=pipeline.product.read_retries, ledger=f"dem-{ledger}"):
        terrain = computed_coarse_terrain(catalog, geobox, inputs.daily, COARSE_FACTOR)
    with use_read_policy(retries=pipeline.product.read_retries, ledger=ledger):
        maps = MapInputs(catalog, pipeline.gpp.modis.source, card_path, geobox, inputs.daily,
                         terrain)  # fmt: skip
        result = gpp_modis(maps, inputs.period, items=inputs.modis_items, every_day=True,
                           gap_fill_days=inputs.gap, causal=inputs.mode == "nrt")  # fmt: skip
    chosen = [np.datetime64(d, "ns") for d in todo]
    values, observed, oor = dask.compute(
        result["gpp"].sel(time=chosen), result["clear"], result["out_of_range"].sel(time=chosen)
    )
    lost = lost_inputs(lost_reads(ledger), inputs.modis_items, coarse_geobox(geobox))
    if None in lost:  # a read of no dated item: every day of the block is in doubt
        lost = {d: lost[None].merged(lost.get(d)) for d in todo}
    gaps = observation_gap(observed.values.astype(bool), causal=inputs.mode == "nrt")
    index = observed.get_index("time").get_indexer(pd.DatetimeIndex(chosen))
    return CoarseDays(
        days=todo,
        gpp=values.values.astype("float32"),
        gap=gaps[index],
        out_of_range=oor.values.astype(bool),
        skipped=inputs.skipped,
        modis_items=[
            ((item.datetime or item.common_metadata.start_datetime).date(), item.id)
            for item in inputs.modis_items
        ],
        weather_items=[item.id for item in inputs.weather_items],
        lost=lost,
    )

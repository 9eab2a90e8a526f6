"""GPP maps of a region: the two step-1 models applied to lazy cubes.

* :func:`gpp_landsat` — GPP_L at 30 m on the HLS dates, NaN where the pixel is not clear;
* :func:`gpp_modis` — GPP_M daily on a ~500 m grid (the region's 30 m grid coarsened by 16:
  480 m, aligned with it), index gaps filled in time as the model was trained.

Both assemble the model's features (indices, the local day's reanalysis weather interpolated
to each pixel, day-of-year terms) and call :func:`unique_cube.gpp.predict`; nothing computes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .catalog import search
from .config import Catalog
from .cube import load
from .gpp import predict
from .indices import add_indices
from .met import daily_weather, on_geobox
from .sites import FEATURE_INDICES

__all__ = [
    "coarse_geobox",
    "feature_cube",
    "fill_gaps",
    "gpp_landsat",
    "gpp_modis",
    "lonlat_bbox",
    "weather_for",
    "weather_items",
]

COARSE_FACTOR = 16  # 30 m x 16 = 480 m, the MODIS-like grid aligned with the 30 m one


def fill_gaps(values: np.ndarray, days: np.ndarray, max_gap: float) -> np.ndarray:
    """Linear interpolation along the last axis across gaps of at most ``max_gap`` days
    between observations (never beyond the first or last one)."""
    out = np.array(values, dtype="float32", copy=True)
    flat = out.reshape(-1, out.shape[-1])
    for row in flat:
        seen = np.flatnonzero(np.isfinite(row))
        if seen.size < 2:
            continue
        gap = np.searchsorted(seen, np.arange(row.size))  # index of the next observation
        inside = (gap > 0) & (gap < seen.size)
        left = seen[np.clip(gap - 1, 0, seen.size - 1)]
        right = seen[np.clip(gap, 0, seen.size - 1)]
        short = inside & (days[right] - days[left] <= max_gap)
        fill = short & ~np.isfinite(row)
        row[fill] = np.interp(days[fill], days[seen], row[seen])
    return out


def lonlat_bbox(geobox) -> list[float]:
    """A GeoBox's extent as a STAC search bbox (west, south, east, north in degrees)."""
    return list(geobox.extent.to_crs("EPSG:4326").boundingbox)


def coarse_geobox(geobox, factor: int = COARSE_FACTOR):
    """The region's grid coarsened by ``factor`` (same origin and CRS)."""
    return geobox.zoom_out(factor)


def weather_items(catalog: Catalog, source: str, geobox, start, end) -> list:
    """The reanalysis items that cover [start, end] as local days over a GeoBox (padded by a
    day and 0.3° so that every pixel's local day and interpolation stencil are inside)."""
    bbox = lonlat_bbox(geobox)
    pad = [bbox[0] - 0.3, bbox[1] - 0.3, bbox[2] + 0.3, bbox[3] + 0.3]
    first = pd.Timestamp(start) - pd.Timedelta(days=1)
    last = pd.Timestamp(end) + pd.Timedelta(days=1)
    return search(source, pad, f"{first:%Y-%m-%d}/{last:%Y-%m-%d}", catalog=catalog)


def weather_for(
    catalog: Catalog, source: str, geobox, start, end, utc_offset_hours: float, *, items=None
):
    """Daily weather of [start, end] (lazy, time × lat × lon) over a GeoBox; ``items`` from
    :func:`weather_items` when already searched."""
    if items is None:
        items = weather_items(catalog, source, geobox, start, end)
    daily = daily_weather(items, catalog.source(source), utc_offset_hours=utc_offset_hours)
    return daily.sel(time=slice(pd.Timestamp(start), pd.Timestamp(end)))


def feature_cube(cube: xr.Dataset, daily: xr.Dataset, geobox) -> xr.Dataset:
    """The GPP models' features on a cube's grid and dates (lazy)."""
    ds = add_indices(cube, list(FEATURE_INDICES))
    days = ds["time"].dt.floor("D")
    weather = on_geobox(daily.sel(time=days.values), geobox)
    weather = weather.assign_coords(time=ds["time"].values)
    doy = ds["time"].dt.dayofyear
    angle = 2 * np.pi * (doy - 1) / 365.25
    out = xr.Dataset({name: ds[name] for name in FEATURE_INDICES})
    for name in ("tair", "vpd", "shortwave", "precipitation"):
        out[name] = weather[name].astype("float32").drop_vars(["lat", "lon"], errors="ignore")
    zeros = xr.zeros_like(out["ndvi"])  # lazy, and no NaN where the index is missing
    out["doy_sin"] = (zeros + np.sin(angle)).astype("float32")
    out["doy_cos"] = (zeros + np.cos(angle)).astype("float32")
    return out


def gpp_landsat(
    catalog: Catalog,
    source: str,
    card_path,
    geobox,
    period: str,
    daily: xr.Dataset,
    *,
    chunks: int = 512,
    keep_features: bool = False,
) -> xr.Dataset:
    """GPP_L (and its ``out_of_range`` flag) at 30 m on each HLS date of ``period``; with
    ``keep_features`` also the model's inputs (``features``: time × feature × y × x, NaN
    where the pixel is not clear)."""
    bbox = lonlat_bbox(geobox)
    items = search(source, bbox, period, catalog=catalog)
    cube = load(items, catalog.source(source), geobox,
                chunks={"time": 1, "y": chunks, "x": chunks})  # fmt: skip
    features = feature_cube(cube, daily, geobox)
    result = predict(features, card_path)
    result["clear"] = cube["clear"]
    if keep_features:
        stacked = features.to_dataarray("feature").transpose("time", "feature", "y", "x")
        result["features"] = stacked.where(cube["clear"])
    return result


def gpp_modis(
    catalog: Catalog,
    source: str,
    card_path,
    geobox,
    period: str,
    daily: xr.Dataset,
    *,
    gap_fill_days: int | None = None,
    items=None,
    every_day: bool = False,
) -> xr.Dataset:
    """GPP_M daily on the coarse grid of ``geobox`` (480 m), index gaps filled in time up to
    ``gap_fill_days`` (default: what the model card says it was trained with).

    ``items`` are the source's items of ``period`` when already searched. With ``every_day``
    the result has every day of ``daily`` in ``period``, also those without a MODIS granule
    (filled in time like a cloudy day, ``clear`` False)."""
    coarse = coarse_geobox(geobox)
    if items is None:
        items = search(source, lonlat_bbox(geobox), period, catalog=catalog)
    cube = load(items, catalog.source(source), coarse, chunks={"time": -1, "y": -1, "x": -1},
                resampling="average")  # fmt: skip
    if every_day:
        first, last = (pd.Timestamp(t) for t in period.split("/"))
        days = daily["time"].sel(time=slice(first, last)).values
        cube = cube.assign_coords(time=cube["time"].dt.floor("D").values)
        cube = cube.reindex(time=days).chunk({"time": -1})
        cube["clear"] = cube["clear"].fillna(False).astype(bool)
    features = feature_cube(cube, daily, coarse)
    card = json.loads(Path(card_path).read_text())
    days = gap_fill_days if gap_fill_days is not None else card.get("gap_fill_days", 16)
    if days:
        when = ((features["time"] - features["time"][0]) / np.timedelta64(1, "D")).values
        for name in FEATURE_INDICES:
            features[name] = xr.apply_ufunc(
                fill_gaps, features[name], kwargs={"days": when, "max_gap": days},
                input_core_dims=[["time"]], output_core_dims=[["time"]],
                dask="parallelized", output_dtypes=["float32"],
            ).transpose(*features[name].dims)  # fmt: skip
    result = predict(features, card_path)
    result["clear"] = cube["clear"]  # where the day itself was observed (not gap-filled)
    return result

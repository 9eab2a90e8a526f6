"""The GPP models' features: one definition, for the towers (training) and the grid (prediction).

A model sees, per place and day, the vegetation indices of :data:`FEATURE_INDICES` (window
means at a tower, pixels on a grid), the local day's reanalysis weather (:data:`WEATHER`) and
the day of year as a point on the circle. Index gaps (clouds, missing granules) are filled in
time by :func:`fill_gaps` — linear interpolation across a gap only when the observations on
both sides are at most ``max_gap`` days apart — by :func:`model_features`, which both
:func:`unique_cube.gpp.towers.training_table` and :func:`feature_cube` call. So a tower day
that enters training looks exactly like the same pixel's day in a map (tested).

Land cover is left out: WorldCover cannot tell deciduous from evergreen forest, so a map could
not give the model the class the towers were labelled with; the indices carry the difference.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from unique_cube.inputs.indices import add_indices
from unique_cube.inputs.weather import on_geobox

__all__ = [
    "FEATURES",
    "FEATURE_INDICES",
    "WEATHER",
    "day_of_year_terms",
    "feature_cube",
    "fill_gaps",
    "fill_index_gaps",
    "model_features",
]

#: Indices computed per pixel (and averaged over the clear pixels of a tower's window).
FEATURE_INDICES = ("ndvi", "evi", "nirv", "kndvi", "lswi")
#: The local day's reanalysis weather: °C, kPa, W m-2 (daily mean), mm.
WEATHER = ("tair", "vpd", "shortwave", "precipitation")
#: Every feature, in the order the models take them.
FEATURES = (*FEATURE_INDICES, *WEATHER, "doy_sin", "doy_cos")


def fill_gaps(values: np.ndarray, days: np.ndarray, max_gap: float) -> np.ndarray:
    """Linear interpolation along the last axis across gaps of at most ``max_gap`` days
    between observations (never beyond the first or last one; a longer gap stays NaN
    throughout, not filled for its first days)."""
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


def day_of_year_terms(day_of_year):
    """The day of year (1–366) as a point on the circle, (sine, cosine): no jump at New
    Year. Works on numbers, arrays and DataArrays."""
    angle = 2 * np.pi * (day_of_year - 1) / 365.25
    return np.sin(angle), np.cos(angle)


def fill_index_gaps(indices: xr.Dataset, max_gap: float) -> xr.Dataset:
    """:func:`fill_gaps` along ``time`` for each variable (lazy with Dask; the time axis must
    be one chunk)."""
    when = ((indices["time"] - indices["time"][0]) / np.timedelta64(1, "D")).values
    out = indices.copy()
    for name, values in indices.data_vars.items():
        out[name] = xr.apply_ufunc(
            fill_gaps, values, kwargs={"days": when, "max_gap": max_gap},
            input_core_dims=[["time"]], output_core_dims=[["time"]],
            dask="parallelized", output_dtypes=["float32"],
        ).transpose(*values.dims)  # fmt: skip
    return out


def model_features(
    indices: xr.Dataset, weather: xr.Dataset, *, gap_fill_days: float = 0
) -> xr.Dataset:
    """The features of :data:`FEATURES` for any layout with a ``time`` dimension — (time,
    site) at towers, (time, y, x) on a grid.

    ``indices`` holds :data:`FEATURE_INDICES`, NaN where not observed; ``weather`` holds
    :data:`WEATHER` on the same ``time`` coordinate. Index gaps are filled in time when
    ``gap_fill_days`` > 0 (:func:`fill_gaps`); the day-of-year terms come from ``time``."""
    chosen = indices[list(FEATURE_INDICES)]
    if gap_fill_days:
        chosen = fill_index_gaps(chosen, gap_fill_days)
    out = xr.Dataset({name: chosen[name].astype("float32") for name in FEATURE_INDICES})
    for name in WEATHER:
        out[name] = weather[name].astype("float32").drop_vars(["lat", "lon"], errors="ignore")
    doy_sin, doy_cos = day_of_year_terms(out["time"].dt.dayofyear)
    zeros = xr.zeros_like(out["ndvi"])  # lazy, and no NaN where the index is missing
    out["doy_sin"] = (zeros + doy_sin).astype("float32")
    out["doy_cos"] = (zeros + doy_cos).astype("float32")
    return out


def feature_cube(
    cube: xr.Dataset, daily: xr.Dataset, geobox, *, gap_fill_days: float = 0
) -> xr.Dataset:
    """The GPP models' features on a cube's grid and dates (lazy): its indices, the daily
    weather interpolated to each pixel, index gaps filled up to ``gap_fill_days``."""
    ds = add_indices(cube, list(FEATURE_INDICES))
    days = ds["time"].dt.floor("D")
    weather = on_geobox(daily.sel(time=days.values), geobox)
    weather = weather.assign_coords(time=ds["time"].values)
    return model_features(ds, weather, gap_fill_days=gap_fill_days)

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

The weather is brought down to the place (:func:`local_weather`), from its terrain
(:data:`TERRAIN`: the place's elevation and that of the reanalysis, the slope's cosine and its
southness, means over a tower window or a map pixel): air temperature and dew point moved
along standard lapse rates from the reanalysis's elevation to the place's (so VPD follows),
the day's clearness index (shortwave over the top-of-atmosphere value), and the shortwave on
the slope: its direct part by the clear-sky light on the slope at solar noon relative to flat
ground (:func:`illumination`), its diffuse part by the sky view, the diffuse fraction from the
clearness index. A tower on a ridge is colder than its reanalysis cell, a
north slope darker than a south one; the reanalysis alone sees neither.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from unique_cube.errors import ModelError
from unique_cube.inputs.indices import add_indices
from unique_cube.inputs.weather import on_geobox

__all__ = [
    "FEATURES",
    "FEATURE_INDICES",
    "LOCAL_WEATHER",
    "TERRAIN",
    "WEATHER",
    "day_of_year_terms",
    "diffuse_fraction",
    "feature_cube",
    "fill_gaps",
    "fill_index_gaps",
    "illumination",
    "local_weather",
    "model_features",
    "noon_sun",
    "toa_shortwave",
]

#: Indices computed per pixel (and averaged over the clear pixels of a tower's window).
FEATURE_INDICES = ("ndvi", "evi", "nirv", "kndvi", "lswi")
#: The local day's reanalysis weather: °C, kPa, MJ m-2 day-1, mm.
WEATHER = ("tair", "vpd", "shortwave", "precipitation")
#: A place's terrain (means over a tower window or a map pixel): its elevation and the
#: reanalysis's there (m), the cosine of its slope and its southness, −sin(slope)·cos(aspect)
#: (+sin(slope) on a slope facing due south, 0 on flat ground); and its ``latitude``.
TERRAIN = ("elevation", "elevation_reference", "cos_slope", "southness")
#: The weather at the place (:func:`local_weather`): °C, kPa, MJ m-2 day-1, mm, 0-1. The
#: slope's light enters through ``shortwave_local``: the noon illumination ratio alone, a
#: feature, was low at towers only in winter (a low sun), so on a steep slope in summer the
#: models read it as winter (GPP_M 27 % low on the test world's steep region).
LOCAL_WEATHER = ("tair_local", "vpd_local", "shortwave_local", "precipitation", "clearness")
#: Every feature, in the order the models take them.
FEATURES = (*FEATURE_INDICES, *LOCAL_WEATHER, "doy_sin", "doy_cos")

#: Standard lapse rates of air temperature and dew point (K per m of elevation).
LAPSE_RATE = -0.0065
DEW_POINT_LAPSE_RATE = -0.002


def fill_gaps(values: np.ndarray, days: np.ndarray, max_gap: float,
              causal: bool = False) -> np.ndarray:  # fmt: skip
    """Gaps along the last axis filled from observations at most ``max_gap`` days apart.

    Two-sided (the default): linear interpolation between the observations around a gap
    (never beyond the first or last one; a longer gap stays NaN throughout, not filled for its
    first days). ``causal``: the last observation carried forward for up to ``max_gap`` days
    after it, so that a value depends on no later observation (a near-real-time day)."""
    out = np.array(values, dtype="float32", copy=True)
    flat = out.reshape(-1, out.shape[-1])
    for row in flat:
        seen = np.flatnonzero(np.isfinite(row))
        if seen.size < (1 if causal else 2):
            continue
        gap = np.searchsorted(seen, np.arange(row.size))  # index of the next observation
        left = seen[np.clip(gap - 1, 0, seen.size - 1)]
        if causal:
            fill = (gap > 0) & (days - days[left] <= max_gap) & ~np.isfinite(row)
            row[fill] = row[left[fill]]
            continue
        inside = (gap > 0) & (gap < seen.size)
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


def noon_sun(latitude, day_of_year):
    """The sun at solar noon: its zenith angle (radians, at most 89°) and +1 where it stands
    towards the equator's side of the place (south in the northern mid-latitudes), else −1."""
    declination = 23.44 * np.sin(np.radians(360 / 365 * (day_of_year - 81)))
    zenith = np.radians(np.minimum(np.abs(latitude - declination), 89.0))
    towards = np.sign(latitude - declination + 1e-9)
    return zenith, towards


def illumination(cos_slope, southness, latitude, day_of_year):
    """Clear-sky direct light on the slope relative to flat ground at solar noon,
    cos(incidence) / cos(zenith), ≥ 0. Linear in ``cos_slope`` and ``southness`` (before the
    floor), so a window's or block's means give its mean."""
    zenith, towards = noon_sun(latitude, day_of_year)
    return np.maximum(cos_slope + towards * np.tan(zenith) * southness, 0.0)


def toa_shortwave(latitude, day_of_year):
    """Daily top-of-atmosphere shortwave (MJ m-2 day-1), FAO-56 equations 21-25."""
    lat = np.radians(latitude)
    angle = 2 * np.pi * day_of_year / 365.0
    declination = 0.409 * np.sin(angle - 1.39)
    distance = 1 + 0.033 * np.cos(angle)
    sunset = np.arccos(np.minimum(np.maximum(-np.tan(lat) * np.tan(declination), -1.0), 1.0))
    return (24 * 60 / np.pi * 0.0820 * distance * (
        sunset * np.sin(lat) * np.sin(declination)
        + np.cos(lat) * np.cos(declination) * np.sin(sunset)
    ))  # fmt: skip


def diffuse_fraction(clearness):
    """The diffuse share of a day's shortwave from its clearness index (Erbs et al. 1982,
    daily correlation for long days)."""
    # Above 0.715 the correlation is flat (0.143; the polynomial gives 0.145 there).
    k = np.minimum(np.maximum(clearness, 0.0), 0.715)
    polynomial = 1.0 - 0.2727 * k + 2.4495 * k**2 - 11.9514 * k**3 + 9.3879 * k**4
    return np.minimum(np.maximum(polynomial, 0.0), 1.0)


def _saturation_pressure(t_celsius):
    """Saturation vapour pressure over water (kPa), Tetens."""
    return 0.6108 * np.exp(17.27 * t_celsius / (t_celsius + 237.3))


def _dew_point(vapour_pressure):
    """Dew point (°C) of a vapour pressure (kPa), Tetens inverted."""
    log_ratio = np.log(np.maximum(vapour_pressure, 1e-4) / 0.6108)
    return 237.3 * log_ratio / (17.27 - log_ratio)


def local_weather(weather, terrain, day_of_year) -> dict:
    """:data:`LOCAL_WEATHER` from the reanalysis's :data:`WEATHER` and a place's
    :data:`TERRAIN` (with ``latitude``); numbers, arrays or DataArrays that broadcast.

    Temperature and dew point (from the daily mean vapour pressure, es(T) − VPD) move by
    :data:`LAPSE_RATE` and :data:`DEW_POINT_LAPSE_RATE` over the elevation difference; the
    shortwave on the slope is its direct part times :func:`illumination` plus its diffuse
    part times the sky view (1 + cos slope) / 2."""
    rise = terrain["elevation"] - terrain["elevation_reference"]
    tair = weather["tair"] + LAPSE_RATE * rise
    vapour = np.maximum(_saturation_pressure(weather["tair"]) - weather["vpd"], 1e-3)
    dew = np.minimum(_dew_point(vapour) + DEW_POINT_LAPSE_RATE * rise, tair)
    vpd = np.maximum(_saturation_pressure(tair) - _saturation_pressure(dew), 0.0)
    latitude = terrain["latitude"]
    toa = toa_shortwave(latitude, day_of_year)
    clearness = np.minimum(np.maximum(weather["shortwave"] / np.maximum(toa, 0.1), 0.0), 1.0)
    light = illumination(terrain["cos_slope"], terrain["southness"], latitude, day_of_year)
    diffuse = diffuse_fraction(clearness)
    on_slope = (1 - diffuse) * light + diffuse * (1 + terrain["cos_slope"]) / 2
    return {
        "tair_local": tair,
        "vpd_local": vpd,
        "shortwave_local": weather["shortwave"] * on_slope,
        "precipitation": weather["precipitation"],
        "clearness": clearness,
    }


def fill_index_gaps(indices: xr.Dataset, max_gap: float, causal: bool = False) -> xr.Dataset:
    """:func:`fill_gaps` along ``time`` for each variable (lazy with Dask; the time axis must
    be one chunk)."""
    when = ((indices["time"] - indices["time"][0]) / np.timedelta64(1, "D")).values
    out = indices.copy()
    for name, values in indices.data_vars.items():
        out[name] = xr.apply_ufunc(
            fill_gaps, values, kwargs={"days": when, "max_gap": max_gap, "causal": causal},
            input_core_dims=[["time"]], output_core_dims=[["time"]],
            dask="parallelized", output_dtypes=["float32"],
        ).transpose(*values.dims)  # fmt: skip
    return out


def model_features(
    indices: xr.Dataset,
    weather: xr.Dataset,
    terrain: xr.Dataset,
    *,
    gap_fill_days: float = 0,
    causal: bool = False,
) -> xr.Dataset:
    """The features of :data:`FEATURES` for any layout with a ``time`` dimension — (time,
    site) at towers, (time, y, x) on a grid.

    ``indices`` holds :data:`FEATURE_INDICES`, NaN where not observed; ``weather`` holds
    :data:`WEATHER` on the same ``time`` coordinate; ``terrain`` holds :data:`TERRAIN` and
    ``latitude`` on the same places (no ``time``). Index gaps are filled in time when
    ``gap_fill_days`` > 0 (:func:`fill_gaps`; ``causal``: from earlier days only); the
    day-of-year terms come from ``time``."""
    missing = [n for n in (*TERRAIN, "latitude") if n not in terrain]
    if missing:
        raise ModelError(f"the terrain lacks {missing} (has {sorted(terrain.data_vars)})")
    chosen = indices[list(FEATURE_INDICES)]
    if gap_fill_days:
        chosen = fill_index_gaps(chosen, gap_fill_days, causal)
    out = xr.Dataset({name: chosen[name].astype("float32") for name in FEATURE_INDICES})
    met = weather[list(WEATHER)].drop_vars(["lat", "lon"], errors="ignore")
    day_of_year = out["time"].dt.dayofyear
    for name, values in local_weather(met, terrain, day_of_year).items():
        out[name] = values.astype("float32").transpose(*out["ndvi"].dims)
    doy_sin, doy_cos = day_of_year_terms(day_of_year)
    zeros = xr.zeros_like(out["ndvi"])  # lazy, and no NaN where the index is missing
    out["doy_sin"] = (zeros + doy_sin).astype("float32")
    out["doy_cos"] = (zeros + doy_cos).astype("float32")
    return out


def feature_cube(
    cube: xr.Dataset, daily: xr.Dataset, terrain: xr.Dataset, geobox, *,
    gap_fill_days: float = 0, causal: bool = False,
) -> xr.Dataset:  # fmt: skip
    """The GPP models' features on a cube's grid and dates (lazy): its indices, the daily
    weather interpolated to each pixel and brought down to its ``terrain`` (:data:`TERRAIN`
    on the same grid), index gaps filled up to ``gap_fill_days`` (``causal``: from earlier
    days only)."""
    ds = add_indices(cube, list(FEATURE_INDICES))
    days = ds["time"].dt.floor("D")
    weather = on_geobox(daily.sel(time=days.values), geobox)
    weather = weather.assign_coords(time=ds["time"].values)
    terrain = terrain.assign_coords(y=ds["y"].values, x=ds["x"].values)
    return model_features(ds, weather, terrain, gap_fill_days=gap_fill_days, causal=causal)

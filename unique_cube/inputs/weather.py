"""Daily meteorology from an hourly reanalysis (ERA5 as ``era5-pds`` publishes it).

Each item is a month with one Zarr store per variable (``xarray:open_kwargs`` on the asset);
:func:`daily_weather` opens them lazily, concatenates the months and aggregates the hours of
each *local* day: mean air temperature (°C), mean vapour-pressure deficit from the hourly
temperature and dew point (kPa), total shortwave (MJ m-2 day-1) and precipitation (mm day-1).
:func:`at_points` and :func:`on_geobox` interpolate the daily fields bilinearly.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from unique_cube.config.catalog import Catalog, Source
from unique_cube.errors import LoadError
from unique_cube.files import local_path
from unique_cube.grid import lonlat_bbox
from unique_cube.inputs.search import search
from unique_cube.redact import redact

__all__ = ["DAILY_UNITS", "at_points", "daily_weather", "on_geobox", "weather_for", "weather_items"]


#: The daily variables and their units.
DAILY_UNITS = {
    "tair": "degC",
    "vpd": "kPa",
    "shortwave": "MJ m-2 day-1",
    "precipitation": "mm day-1",
}


def _open_asset(item, key: str) -> xr.DataArray:
    try:
        asset = item.assets[key]
    except KeyError as err:
        raise LoadError(f"item {item.id} has no asset {key!r}") from err
    kwargs = dict(asset.extra_fields.get("xarray:open_kwargs", {}))
    kwargs.setdefault("engine", "zarr")
    kwargs.setdefault("chunks", {})
    # Neither xarray nor zarr decodes a file:// URI (a world under "dé mo/" is
    # "d%C3%A9%20mo/"): a local store is opened by its path.
    local = local_path(asset.href)
    # A signed Zarr asset carries its credential here (the Planetary Computer's SAS token).
    storage = asset.extra_fields.get("xarray:storage_options")
    if storage and local is None:
        kwargs.setdefault("storage_options", storage)
    try:
        ds = xr.open_dataset(asset.href if local is None else local, **kwargs)
    except Exception as err:
        raise LoadError(f"cannot open {key} of item {item.id} ({redact(asset.href)}): "
                        f"{redact(str(err))}") from err  # fmt: skip
    var = ds[key] if key in ds else ds[next(iter(ds.data_vars))]
    time_dim = next(d for d in var.dims if d.startswith("time"))
    return var.rename({time_dim: "time"})


def daily_weather(items: Sequence, source: Source, *, utc_offset_hours: float = 9.0) -> xr.Dataset:
    """Lazy daily weather (time, lat, lon) from hourly reanalysis items of ``source``.

    ``utc_offset_hours`` sets the local day (Korea: 9). Hourly values are labelled by the
    middle of their hour before grouping, so accumulations stamped at the end of their hour
    fall in the right day.
    """
    if source.type != "weather":
        raise LoadError(f"daily_weather needs a weather source, got a {source.type} one")
    need = ("tair", "tdew", "shortwave", "precipitation")
    missing = [r for r in need if r not in source.bands]
    if missing:
        raise LoadError(f"weather source {source.collection} lacks roles {missing}")
    if not items:
        raise LoadError(f"no {source.collection} items to read")
    hourly = {}
    for role in need:
        key = source.bands[role].asset
        parts = [_open_asset(item, key) for item in items]
        series = xr.concat(parts, dim="time").sortby("time")
        _, unique = np.unique(series["time"].values, return_index=True)
        hourly[role] = series.isel(time=np.sort(unique))
    shift = pd.Timedelta(hours=utc_offset_hours) - pd.Timedelta(minutes=30)

    def by_day(values: xr.DataArray) -> xr.DataArray:
        local = values.assign_coords(time=values["time"] + shift)
        return local.resample(time="1D")

    tair_c = hourly["tair"] - 273.15
    tdew_c = np.minimum(hourly["tdew"] - 273.15, tair_c)
    vpd = _esat(tair_c) - _esat(tdew_c)
    out = xr.Dataset(
        {
            "tair": by_day(tair_c).mean(),
            "vpd": by_day(vpd).mean(),
            "shortwave": by_day(hourly["shortwave"]).sum() / 1e6,
            "precipitation": by_day(hourly["precipitation"]).sum() * 1000.0,
        }
    )
    # Partial days at the ends are dropped; told from the time axis alone (no data read).
    local_days = (pd.DatetimeIndex(hourly["tair"]["time"].values) + shift).floor("D")
    hours = pd.Series(1, index=local_days).groupby(level=0).sum()
    out = out.sel(time=out["time"].isin(hours.index[hours >= 24].values))
    for name, units in DAILY_UNITS.items():
        out[name].attrs = {"units": units}
    out.attrs = {"source_collection": source.collection, "utc_offset_hours": utc_offset_hours}
    return out


def _esat(t_celsius):
    return 0.6108 * np.exp(17.27 * t_celsius / (t_celsius + 237.3))


def at_points(daily: xr.Dataset, lat: Sequence[float], lon: Sequence[float], dim: str = "site"):
    """Bilinear interpolation of daily fields at points: (time, ``dim``)."""
    lat_da = xr.DataArray(np.asarray(lat, dtype="float64"), dims=dim)
    lon_da = xr.DataArray(np.asarray(lon, dtype="float64"), dims=dim)
    outside = (
        (lat_da < float(daily.lat.min())) | (lat_da > float(daily.lat.max()))
        | (lon_da < float(daily.lon.min())) | (lon_da > float(daily.lon.max()))
    )  # fmt: skip
    if bool(outside.any()):
        raise LoadError(
            f"{int(outside.sum())} point(s) lie outside the reanalysis grid "
            f"({float(daily.lat.min())}..{float(daily.lat.max())} N, "
            f"{float(daily.lon.min())}..{float(daily.lon.max())} E)"
        )
    return daily.interp(lat=lat_da, lon=lon_da)


def on_geobox(daily: xr.Dataset, geobox, *, chunks: int = 512) -> xr.Dataset:
    """Daily fields interpolated bilinearly to every pixel of a GeoBox (lazy, in square
    blocks of ``chunks`` pixels): each block's longitudes and latitudes are computed when the
    block is, so a national 30 m grid costs nothing at graph-build time (a full-grid
    meshgrid of Korea's grid is about 4 × 2.3 GB). Each field's dimensions other than lat and
    lon come first; the pixels' lat/lon are not kept as coordinates."""
    # Ascending by reversed slices: xarray's own sorting indexes lat and lon at once with
    # arrays, which dask cannot do on a time-chunked cube (a date list selected from it).
    for dim in ("lat", "lon"):
        if daily.sizes[dim] > 1 and float(daily[dim][0]) > float(daily[dim][-1]):
            daily = daily.isel({dim: slice(None, None, -1)})
    ys, xs = geobox.coordinates["y"].values, geobox.coordinates["x"].values
    rows = da.from_array(ys, chunks=chunks)
    columns = da.from_array(xs, chunks=chunks)
    lat, lon = daily["lat"].values, daily["lon"].values
    crs = geobox.crs.to_wkt()
    out = {}
    for name, field in daily.data_vars.items():
        lead = [d for d in field.dims if d not in ("lat", "lon")]
        field = field.transpose(*lead, "lat", "lon")
        data = field.data
        if isinstance(data, da.Array):
            data = data.rechunk({len(lead): -1, len(lead) + 1: -1})  # whole lat/lon per block
        else:
            data = da.from_array(data, chunks=(*data.shape[:-2], -1, -1))
        index = "".join(chr(ord("a") + i) for i in range(len(lead)))
        dtype = field.dtype if np.issubdtype(field.dtype, np.floating) else np.dtype("float64")
        with warnings.catch_warnings():
            # "Increasing number of chunks": a block per grid block is what is meant here.
            warnings.simplefilter("ignore", da.PerformanceWarning)
            values = da.blockwise(
                _interpolate_block, index + "yx", data, index + "LM", rows, "y", columns, "x",
                lat=lat, lon=lon, crs=crs, lead=tuple(lead), out_dtype=dtype, dtype=dtype,
                concatenate=True, meta=np.empty((0,) * (len(lead) + 2), dtype),
            )  # fmt: skip
        coords = {d: field[d].values for d in lead if d in field.coords}
        coords.update(y=ys, x=xs)
        out[name] = xr.DataArray(values, dims=(*lead, "y", "x"), coords=coords,
                                 attrs=field.attrs)  # fmt: skip
    return xr.Dataset(out, attrs=daily.attrs)


def _interpolate_block(values, ys, xs, *, lat, lon, crs, lead, out_dtype):
    """One block of :func:`on_geobox`: xarray's bilinear interpolation (NaN outside the
    reanalysis grid) at the block's pixels."""
    from pyproj import Transformer

    xx, yy = np.meshgrid(xs, ys)
    lons, lats = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xx, yy)
    field = xr.DataArray(values, dims=(*lead, "lat", "lon"), coords={"lat": lat, "lon": lon})
    at = {"lat": xr.DataArray(lats, dims=("y", "x")), "lon": xr.DataArray(lons, dims=("y", "x"))}
    return field.interp(at, assume_sorted=True).values.astype(out_dtype)


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

"""Satellite features and weather at flux towers: the training tables of the GPP models.

For a source, the towers' 3×3-pixel windows are cut from one lazy cube on the source's own grid
(the bounding box of all towers, chunked like the COGs), so every COG tile a tower needs is read
once, whatever the number of towers and days: one lazy computation for all sites. Per site and
day the table keeps the mean of each index over the clear pixels of the window and the count of
clear pixels; :func:`training_table` turns them into the models' features with the same
function that makes them for a map (:func:`unique_cube.gpp.features.model_features`), the
weather brought down to the terrain of the same windows
(:func:`unique_cube.inputs.terrain.tower_terrain`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from unique_cube.config.catalog import Catalog, Source
from unique_cube.config.pipeline import Pipeline
from unique_cube.errors import FluxError, LoadError
from unique_cube.gpp.features import FEATURE_INDICES, FEATURES, model_features
from unique_cube.grid import sites_in_region
from unique_cube.inputs.cube import load
from unique_cube.inputs.flux import read_flux_dir, read_sites
from unique_cube.inputs.indices import add_indices
from unique_cube.inputs.search import search
from unique_cube.inputs.terrain import tower_terrain
from unique_cube.inputs.weather import at_points, daily_weather

log = logging.getLogger(__name__)

__all__ = ["MODELS", "native_geobox", "tower_features", "training_table", "training_tables"]


def native_geobox(items: Sequence, lonlat: np.ndarray, margin: int = 3):
    """The source's own grid (of the first item) cut to the towers' bounding box."""
    from odc.geo.geobox import GeoBox
    from odc.stac import parse_item

    parsed = parse_item(items[0])
    grid = next(iter(parsed.geoboxes()))
    base = GeoBox(grid.shape, grid.transform, grid.crs)
    from pyproj import Transformer

    to_grid = Transformer.from_crs("EPSG:4326", base.crs.to_wkt(), always_xy=True)
    x, y = to_grid.transform(lonlat[:, 0], lonlat[:, 1])
    inv = ~base.transform
    cols, rows = inv * (np.asarray(x), np.asarray(y))
    cols, rows = np.floor(cols).astype(int), np.floor(rows).astype(int)
    r0, r1 = rows.min() - margin, rows.max() + margin + 1
    c0, c1 = cols.min() - margin, cols.max() + margin + 1
    return base[r0:r1, c0:c1], rows - r0, cols - c0


def tower_features(
    items: Sequence,
    source: Source,
    sites: pd.DataFrame,
    *,
    window: int = 3,
    chunks: int = 512,
) -> xr.Dataset:
    """Lazy (time, site) features: per index the mean over clear pixels of a ``window`` ×
    ``window`` window around each tower, and ``n_clear``, the number of clear pixels."""
    if not len(items):
        raise LoadError(f"no {source.collection} items for the towers")
    lonlat = sites[["lon", "lat"]].to_numpy(dtype="float64")
    geobox, rows, cols = native_geobox(items, lonlat, margin=window)
    footprint = _union_footprint(items)
    from shapely.geometry import Point

    for (lon, lat), name in zip(lonlat, sites["site"], strict=True):
        if not footprint.contains(Point(lon, lat)):
            raise LoadError(
                f"site {name} ({lat:.4f} N, {lon:.4f} E) lies outside every "
                f"{source.collection} item found"
            )
    cube = load(items, source, geobox, chunks={"time": 1, "y": chunks, "x": chunks})
    half = window // 2
    offsets = np.arange(-half, half + 1)
    win_rows = (rows[:, None, None] + offsets[None, :, None]).repeat(window, axis=2)
    win_cols = (cols[:, None, None] + offsets[None, None, :]).repeat(window, axis=1)
    index = {
        "y": xr.DataArray(win_rows.reshape(len(sites), -1), dims=("site", "pixel")),
        "x": xr.DataArray(win_cols.reshape(len(sites), -1), dims=("site", "pixel")),
    }
    names = list(FEATURE_INDICES)
    # The indices are computed on the windows' pixels only, not on every loaded chunk.
    windows = add_indices(cube.isel(index), names)  # names the band a source lacks
    out = xr.Dataset({name: windows[name].mean("pixel", skipna=True) for name in names})
    out["n_clear"] = windows["clear"].sum("pixel").astype("int16")
    out = out.drop_vars([c for c in out.coords if c not in ("time",)])
    out = out.assign_coords(site=sites["site"].to_numpy())
    out.attrs = {"source_collection": source.collection, "window_pixels": window,
                 "window_metres": window * abs(float(geobox.resolution.x))}  # fmt: skip
    return out


def _union_footprint(items: Sequence):
    from shapely.geometry import shape
    from shapely.ops import unary_union

    return unary_union([shape(item.geometry) for item in items])


def training_table(
    flux: pd.DataFrame,
    sites: pd.DataFrame,
    features: xr.Dataset,
    weather: xr.Dataset,
    terrain: xr.Dataset,
    *,
    min_clear: int = 1,
    gap_fill_days: int = 0,
) -> pd.DataFrame:
    """Join tower targets with the model features: one row per site and day.

    ``features`` are :func:`tower_features` (time, site), computed; ``weather`` the daily
    reanalysis at the towers (time, site); ``terrain`` the towers' terrain terms over the
    same windows (site; :func:`unique_cube.inputs.terrain.tower_terrain`). Index values of
    windows with fewer than ``min_clear`` clear pixels are dropped, then the features are made by
    :func:`~unique_cube.gpp.features.model_features` exactly as for a map (index gaps of at
    most ``gap_fill_days`` filled in time); days left without every feature are left out.
    """
    days = pd.DatetimeIndex(features["time"].values).normalize()
    indices = features[list(FEATURE_INDICES)].where(features["n_clear"] >= min_clear)
    indices = indices.assign_coords(time=days)
    n_clear = features["n_clear"].assign_coords(time=days)
    if not days.is_unique:  # two granules of one day: the first observation of each index
        indices = indices.groupby("time").first()
        n_clear = n_clear.groupby("time").max()
    met = weather.assign_coords(time=pd.DatetimeIndex(weather["time"].values).normalize())
    met = met.reindex(time=indices["time"].values, site=indices["site"].values)
    terrain = terrain.reindex(site=indices["site"].values)
    table = model_features(indices, met, terrain, gap_fill_days=gap_fill_days)
    table["n_clear"] = n_clear  # kept for the record: 0 on a day filled in time
    table = table.to_dataframe().reset_index().rename(columns={"time": "date"})
    table = table[["site", "date", *FEATURES, "n_clear"]].dropna(subset=list(FEATURES))
    table = flux.merge(table, on=["site", "date"], how="inner")
    table = table.merge(sites[["site", "igbp", "lat", "lon"]], on="site", how="left")
    return table.sort_values(["site", "date"]).reset_index(drop=True)


#: The two GPP models and the key of each in a pipeline's ``gpp`` section.
MODELS = ("modis", "landsat")


def training_tables(
    pipeline: Pipeline, catalog: Catalog, say: Callable[[str], None] = log.info
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """The MODIS and Landsat training tables and the site table."""
    import dask

    spec = pipeline.gpp
    sites = read_sites(pipeline.flux.sites)
    flux = read_flux_dir(
        pipeline.flux.directory,
        target=pipeline.flux.target,
        min_qc=pipeline.flux.min_qc,
    )
    unknown = sorted(set(flux["site"]) - set(sites["site"]))
    if unknown:
        raise FluxError(
            f"{pipeline.flux.directory}: flux data of site(s) {', '.join(unknown)} that the "
            f"site table {pipeline.flux.sites} lacks (its coordinates and type are needed)"
        )
    without = sorted(set(sites["site"]) - set(flux["site"]))
    if without:
        say(f"{len(without)} site(s) of the site table without flux data: "
            f"{', '.join(without[:10])}{' …' if len(without) > 10 else ''}")  # fmt: skip
    if pipeline.flux.hold_out_region:
        inside = sites_in_region(sites, pipeline.grid.geobox)
        say(f"{int(inside.sum())} tower(s) inside the region held out for validation: "
            f"{', '.join(sites['site'][inside]) or 'none'}")  # fmt: skip
        sites = sites[~inside].reset_index(drop=True)
    flux = flux[flux["site"].isin(sites["site"])]
    period = spec.train
    flux = flux[
        (flux["date"] >= pd.Timestamp(period.start)) & (flux["date"] <= pd.Timestamp(period.end))
    ]
    sites = sites[sites["site"].isin(flux["site"].unique())].reset_index(drop=True)
    say(f"{len(flux)} tower days at {len(sites)} sites, {period.start} to {period.end}")
    bbox = (
        float(sites["lon"].min()) - 0.05,
        float(sites["lat"].min()) - 0.05,
        float(sites["lon"].max()) + 0.05,
        float(sites["lat"].max()) + 0.05,
    )
    # The reanalysis month before the first day holds its first local hours.
    padded = f"{period.start - dt.timedelta(days=1)}/{period.end + dt.timedelta(days=1)}"
    weather_items = search(spec.weather, bbox, padded, catalog=catalog)
    daily = daily_weather(weather_items, catalog.source(spec.weather),
                          utc_offset_hours=spec.utc_offset_hours)  # fmt: skip
    weather = at_points(daily, sites["lat"], sites["lon"]).assign_coords(
        site=sites["site"].to_numpy()
    )
    features = {}
    for key in MODELS:
        model_spec = getattr(spec, key)
        items = search(model_spec.source, bbox, period.stac_datetime, catalog=catalog)
        say(f"{key}: {len(items)} {catalog.source(model_spec.source).collection} items")
        features[key] = tower_features(items, catalog.source(model_spec.source), sites,
                                       window=model_spec.window)  # fmt: skip
    say("computing tower windows and weather (one Dask computation)")
    weather, *computed = dask.compute(weather, *(features[k] for k in MODELS))
    widths = {k: features[k].attrs["window_metres"] for k in MODELS}
    say("terrain at the towers: " + ", ".join(f"{k} window {w:.0f} m" for k, w in widths.items()))
    terrain = tower_terrain(catalog, sites, daily, widths)
    tables = {}
    for key, feats in zip(MODELS, computed, strict=True):
        model_spec = getattr(spec, key)
        table = training_table(
            flux, sites, feats, weather, terrain[key],
            min_clear=model_spec.min_clear, gap_fill_days=model_spec.gap_fill_days,
        )  # fmt: skip
        tables[key] = table
        say(f"{key}: {len(table)} training rows at {table['site'].nunique()} sites")
    return tables, sites

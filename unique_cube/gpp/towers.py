"""Satellite features and weather at flux towers: the training tables of the GPP models.

For a source, each tower's 3×3-pixel window is cut on the source's own grid where the tower
stands, the grid of its own tile (:func:`unique_cube.gpp.tower_windows.tower_features`:
towers in many UTM zones and sinusoidal tiles, a graph that grows with towers × days). Per
site and day the table keeps the mean of each index over the clear pixels of the window and
the count of clear pixels; all towers stay one lazy computation. :func:`training_table` turns
them into the models' features with the same function that makes them for a map
(:func:`unique_cube.gpp.features.model_features`), the weather brought down to the terrain of
the same windows (:func:`unique_cube.inputs.terrain.tower_terrain`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

import pandas as pd
import xarray as xr

from unique_cube.config.catalog import Catalog
from unique_cube.config.pipeline import Pipeline
from unique_cube.errors import FluxError
from unique_cube.gpp.features import FEATURE_INDICES, FEATURES, model_features
from unique_cube.gpp.tower_windows import tower_features
from unique_cube.grid import sites_in_region
from unique_cube.inputs.flux import read_flux_dir, read_sites
from unique_cube.inputs.search import search
from unique_cube.inputs.terrain import tower_terrain
from unique_cube.inputs.weather import at_points, daily_weather

log = logging.getLogger(__name__)

__all__ = ["MODELS", "tower_features", "training_table", "training_tables"]


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

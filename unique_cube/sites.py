"""Satellite features and weather at flux towers: the training table of the GPP models.

For a source, the towers' 3×3-pixel windows are cut from one lazy cube on the source's own grid
(the bounding box of all towers, chunked like the COGs), so every COG tile a tower needs is read
once, whatever the number of towers and days: one lazy computation for all sites. Per site and
day the table keeps the mean of each index over the clear pixels of the window and the count of
clear pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .config import Source
from .cube import load
from .errors import LoadError
from .indices import add_indices

__all__ = ["FEATURE_INDICES", "native_geobox", "tower_features", "training_table"]

#: Indices computed per pixel and averaged over the clear pixels of each window.
FEATURE_INDICES = ("ndvi", "evi", "nirv", "kndvi", "lswi")


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
    out.attrs = {"source_collection": source.collection, "window_pixels": window}
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
    *,
    min_clear: int = 1,
    gap_fill_days: int = 0,
) -> pd.DataFrame:
    """Join tower targets with computed features and weather: one row per site and day.

    Index values of windows with fewer than ``min_clear`` clear pixels are dropped; with
    ``gap_fill_days`` they are then interpolated in time over gaps of at most that many days
    (what a daily map of a cloudy region needs), otherwise such days are left out.
    """
    feat = features.to_dataframe().reset_index()
    feat["date"] = pd.to_datetime(feat["time"]).dt.normalize()
    feat = feat.drop(columns=["time"]).groupby(["site", "date"], as_index=False).first()
    names = [c for c in FEATURE_INDICES if c in feat.columns]
    feat.loc[feat["n_clear"] < min_clear, names] = np.nan
    if gap_fill_days > 0:
        feat = feat.set_index("date")
        filled = feat.groupby("site")[names].transform(
            lambda s: s.interpolate(method="time", limit=gap_fill_days, limit_area="inside")
        )
        feat[names] = filled
        feat = feat.reset_index()
    feat = feat.dropna(subset=names, how="any")
    met = weather.to_dataframe().reset_index()
    met["date"] = pd.to_datetime(met["time"]).dt.normalize()
    met = met[["site", "date", "tair", "vpd", "shortwave", "precipitation"]]
    table = flux.merge(feat, on=["site", "date"], how="inner")
    table = table.merge(met, on=["site", "date"], how="inner")
    table = table.merge(sites[["site", "igbp", "lat", "lon"]], on="site", how="left")
    return table.sort_values(["site", "date"]).reset_index(drop=True)

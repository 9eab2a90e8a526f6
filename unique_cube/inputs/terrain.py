"""A place's terrain for the GPP models, from the catalog's DEM: at tower windows and on grids.

The models' terrain terms (:data:`unique_cube.gpp.features.TERRAIN`) are the place's mean
elevation, the cosine of its slope and its southness, and the elevation the reanalysis sees
there. A reanalysis's own orography is not in its STAC items, so it is taken as what a
reanalysis grid cell averages: the DEM averaged over each cell of the weather's lat/lon grid
(:func:`reanalysis_elevation`), interpolated bilinearly like the weather itself.

* :func:`grid_terrain` — the terms per 30 m pixel of a grid (lazy), :func:`coarse_terrain` their
  means per coarse cell (GPP_M's 480 m);
* :func:`tower_terrain` — the terms as means over each tower's window of each model's source
  (3 × 3 HLS pixels, 3 × 3 MODIS pixels), from a small DEM patch in the tower's UTM zone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import dask
import numpy as np
import pandas as pd
import xarray as xr
from odc.geo.geobox import GeoBox
from scipy import ndimage

from unique_cube.config.catalog import Catalog
from unique_cube.errors import EmptySearchError, LoadError
from unique_cube.grid import lonlat_bbox, utm_crs
from unique_cube.inputs.cube import load
from unique_cube.inputs.search import search
from unique_cube.inputs.static import slope_aspect
from unique_cube.inputs.weather import at_points, on_geobox

log = logging.getLogger(__name__)

__all__ = [
    "coarse_terrain",
    "computed_coarse_terrain",
    "dem_items",
    "grid_terrain",
    "reanalysis_elevation",
    "terrain_terms",
    "tower_terrain",
]

_ALL_TIME = "1900-01-01/2100-01-01"
#: DEM pixel of the tower patches (m).
_TOWER_PIXEL = 30.0


def dem_items(catalog: Catalog, bbox: Sequence[float], where: str) -> list:
    """The catalog's DEM items over a lon/lat ``bbox``; none is an error naming ``where``."""
    try:
        return search("dem", list(bbox), _ALL_TIME, catalog=catalog)
    except EmptySearchError as err:
        raise LoadError(f"no DEM item covers {where}: the GPP models need the terrain "
                        f"({err})") from err  # fmt: skip


def terrain_terms(elevation: xr.DataArray) -> xr.Dataset:
    """Elevation, cos(slope) and southness, −sin(slope)·cos(aspect) (0 on flat ground), per
    pixel of a projected DEM (lazy if it is)."""
    terrain = slope_aspect(elevation)
    slope = np.radians(terrain["slope"])
    southness = -np.sin(slope) * np.cos(np.radians(terrain["aspect"])).fillna(0.0)
    return xr.Dataset({
        "elevation": elevation.astype("float32"),
        "cos_slope": np.cos(slope).astype("float32"),
        "southness": southness.astype("float32"),
    })  # fmt: skip


def reanalysis_elevation(catalog: Catalog, lat: np.ndarray, lon: np.ndarray) -> xr.DataArray:
    """The DEM averaged over each cell of a regular lat/lon grid (cell centres ``lat``,
    ``lon``; computed): the elevation a reanalysis cell stands for. Cells the DEM does not
    cover take their nearest covered cell's value."""
    lat, lon = np.asarray(lat, dtype="float64"), np.asarray(lon, dtype="float64")
    if lat.size < 2 or lon.size < 2:
        raise LoadError(f"the reanalysis grid has {lat.size} x {lon.size} cells; need 2 x 2")
    step_lat, step_lon = abs(float(lat[1] - lat[0])), abs(float(lon[1] - lon[0]))
    bbox = (lon.min() - step_lon / 2, lat.min() - step_lat / 2,
            lon.max() + step_lon / 2, lat.max() + step_lat / 2)  # fmt: skip
    geobox = GeoBox.from_bbox(bbox, "EPSG:4326", shape=(lat.size, lon.size))
    items = dem_items(catalog, bbox, "the reanalysis grid")
    mean = load(items, catalog.source("dem"), geobox, resampling="average")["elevation"]
    values = mean.max("time").values.astype("float64")  # rows north to south
    valid = np.isfinite(values)
    if not valid.any():  # every read lost: no lapse-rate offset anywhere (see grid_terrain)
        log.warning(
            "the DEM has no value over the reanalysis grid %s: its elevation is "
            "unknown, the GPP models' weather is not moved to the terrain",
            bbox,
        )
        values, valid = np.zeros_like(values), np.ones_like(valid)
    if not valid.all():
        nearest = ndimage.distance_transform_edt(~valid, return_distances=False,
                                                 return_indices=True)  # fmt: skip
        values = values[tuple(nearest)]
    north_first = np.sort(lat)[::-1]
    out = xr.DataArray(values.astype("float32"), dims=("lat", "lon"),
                       coords={"lat": north_first, "lon": np.sort(lon)})  # fmt: skip
    return out.sel(lat=lat, lon=lon)


#: Reanalysis elevations computed in this process, by grid and DEM assets (a run's maps,
#: pairs and references share one reanalysis grid).
_REFERENCE: dict[tuple, xr.DataArray] = {}


def _reference(daily: xr.Dataset, catalog: Catalog) -> xr.Dataset:
    lat, lon = daily["lat"].values, daily["lon"].values
    key = (catalog.stac_url, tuple(np.round(lat, 6)), tuple(np.round(lon, 6)))
    if key not in _REFERENCE:
        if len(_REFERENCE) > 8:
            _REFERENCE.clear()
        _REFERENCE[key] = reanalysis_elevation(catalog, lat, lon)
    return xr.Dataset({"elevation_reference": _REFERENCE[key]})


def grid_terrain(catalog: Catalog, geobox, daily: xr.Dataset, *, chunks: int = 512,
                 items: list | None = None) -> xr.Dataset:  # fmt: skip
    """The terrain terms on every pixel of ``geobox`` (lazy; slopes at its edges from a
    pixel beyond them) and ``latitude`` per row; the reanalysis grid is that of ``daily``.
    ``items`` are the DEM items over the grid when already searched."""
    if items is None:
        items = dem_items(catalog, lonlat_bbox(geobox), "the grid")
    grown = geobox.pad(1)
    dem = load(items, catalog.source("dem"), grown, chunks={"y": chunks, "x": chunks})
    terms = terrain_terms(_fill_gaps(dem["elevation"].max("time")))
    terms = terms.isel(y=slice(1, -1), x=slice(1, -1))
    terms = terms.assign_coords(y=geobox.coords["y"].values, x=geobox.coords["x"].values)
    reference = on_geobox(_reference(daily, catalog), geobox)["elevation_reference"]
    reference = reference.drop_vars(["lat", "lon"], errors="ignore").astype("float32")
    terms = terms.drop_vars([c for c in terms.coords if c not in ("y", "x")])
    # Where the DEM has no value (a void, a read lost after its retries) the pixel is taken
    # as flat ground at the reanalysis's elevation: the reanalysis weather itself, as the
    # models saw it before the terrain terms, rather than no GPP at all (``flat``: where).
    terms["flat"] = ~np.isfinite(terms["elevation"]) | ~np.isfinite(terms["cos_slope"])
    terms["elevation"] = terms["elevation"].where(~terms["flat"], reference)
    terms["cos_slope"] = terms["cos_slope"].where(~terms["flat"], 1.0)
    terms["southness"] = terms["southness"].where(~terms["flat"], 0.0)
    terms["elevation_reference"] = reference
    terms["latitude"] = ("y", _row_latitudes(geobox))
    return terms


def _fill_gaps(elevation: xr.DataArray, passes: int = 4) -> xr.DataArray:
    """Small DEM gaps (a grid at the DEM's edge has no pixel beyond it; resampling leaves a
    pixel or two of nodata along a DEM's own edge) filled from their neighbours, up to
    ``passes`` pixels deep, so that the slopes next to them are defined (lazy)."""
    for _ in range(passes):
        for dim in ("y", "x"):
            before = elevation
            elevation = before.fillna(before.shift({dim: 1})).fillna(before.shift({dim: -1}))
    return elevation


def _row_latitudes(geobox) -> np.ndarray:
    """The latitude of each row at the grid's middle column (within a UTM zone a row's
    latitude varies by well under 0.1°)."""
    from pyproj import Transformer

    ys = geobox.coords["y"].values
    xs = np.full(ys.shape, float(geobox.coords["x"].values[geobox.shape[1] // 2]))
    to_lonlat = Transformer.from_crs(geobox.crs.to_wkt(), "EPSG:4326", always_xy=True)
    return np.asarray(to_lonlat.transform(xs, ys)[1], dtype="float32")


def coarse_terrain(terrain: xr.Dataset, factor: int) -> xr.Dataset:
    """Means of the terrain terms over ``factor`` × ``factor`` blocks (GPP_M's cells)."""
    spatial = terrain.drop_vars(["latitude", "flat"], errors="ignore")
    out = spatial.coarsen(y=factor, x=factor, boundary="pad").mean()
    out["latitude"] = terrain["latitude"].coarsen(y=factor, boundary="pad").mean()
    return out


#: Coarse terrain computed in this process, by grid, reanalysis grid and DEM assets.
_COARSE: dict[tuple, xr.Dataset] = {}


def computed_coarse_terrain(catalog: Catalog, geobox, daily: xr.Dataset,
                            factor: int) -> xr.Dataset:  # fmt: skip
    """:func:`coarse_terrain` of :func:`grid_terrain`, computed once per process for a grid,
    a reanalysis grid and the same DEM assets (a backfill's blocks of days share it)."""
    items = dem_items(catalog, lonlat_bbox(geobox), "the grid")
    assets = tuple(sorted(a.href for item in items for a in item.assets.values()))
    key = (repr(geobox), factor, tuple(np.round(daily["lat"].values, 6)),
           tuple(np.round(daily["lon"].values, 6)), assets)  # fmt: skip
    if key not in _COARSE:
        terrain = grid_terrain(catalog, geobox, daily, items=items)
        coarse = coarse_terrain(terrain.drop_vars("flat"), factor)
        coarse, flat = dask.compute(coarse, terrain["flat"].mean())
        if float(flat) > 0:
            log.warning(
                "the DEM has no value at %.1f %% of the grid (voids or lost reads): "
                "flat ground at the reanalysis's elevation there",
                100 * float(flat),
            )
            return coarse  # not kept: a later run may read the DEM whole
        _COARSE.clear()  # one grid at a time: a product run's
        _COARSE[key] = coarse
    return _COARSE[key]


def _tower_patch(lon: float, lat: float, half_pixels: int) -> GeoBox:
    """A north-up 30 m patch in the tower's UTM zone whose centre pixel holds the tower."""
    from pyproj import Transformer

    crs = utm_crs(lon, lat)
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
    reach = (half_pixels + 0.5) * _TOWER_PIXEL
    size = 2 * half_pixels + 1
    return GeoBox.from_bbox((x - reach, y - reach, x + reach, y + reach), crs,
                            shape=(size, size))  # fmt: skip


def tower_terrain(
    catalog: Catalog,
    sites: pd.DataFrame,
    daily: xr.Dataset,
    widths: Mapping[str, float],
) -> dict[str, xr.Dataset]:
    """For each key of ``widths`` (a model and its tower window's side in metres), the
    terrain terms at every site of ``sites`` (``site``, ``lat``, ``lon``) as means over a
    window of that side centred on the tower (computed; dimension ``site``).

    A tower the DEM does not cover is an error naming it; a window reaching past the DEM's
    coverage takes the mean of the part covered."""
    from shapely.geometry import Point, shape

    half = {key: max(1, round(width / 2 / _TOWER_PIXEL)) for key, width in widths.items()}
    reach = max(half.values()) + 1  # a pixel more for the slopes at the window's edge
    pad = 0.01  # degrees: a box, also around a single tower
    items = dem_items(catalog, (float(sites["lon"].min()) - pad, float(sites["lat"].min()) - pad,
                                float(sites["lon"].max()) + pad, float(sites["lat"].max()) + pad),
                      f"the towers ({', '.join(map(str, sites['site'][:5]))}"
                      f"{' …' if len(sites) > 5 else ''})")  # fmt: skip
    footprints = [shape(item.geometry) for item in items]
    patches = []
    for name, lon, lat in zip(sites["site"], sites["lon"], sites["lat"], strict=True):
        here = [it for it, fp in zip(items, footprints, strict=True) if fp.covers(Point(lon, lat))]
        if not here:
            raise LoadError(f"site {name} ({lat:.4f} N, {lon:.4f} E): no DEM item covers it")
        dem = load(here, catalog.source("dem"), _tower_patch(float(lon), float(lat), reach))
        patches.append(terrain_terms(dem["elevation"].max("time")))
    patches = dask.compute(*patches)
    reference = at_points(_reference(daily, catalog), sites["lat"], sites["lon"])
    out = {}
    for key, k in half.items():
        rows = []
        for name, patch in zip(sites["site"], patches, strict=True):
            window = patch.isel(y=slice(reach - k, reach + k + 1),
                                x=slice(reach - k, reach + k + 1))  # fmt: skip
            if not bool(np.isfinite(patch["cos_slope"][reach, reach])):
                raise LoadError(f"site {name}: the DEM has no value at the tower "
                                f"(or next to it: no slope)")  # fmt: skip
            # A window reaching past the DEM's coverage takes the mean of what it covers.
            rows.append({v: float(window[v].mean(skipna=True)) for v in window.data_vars})
        table = pd.DataFrame(rows)
        data = {v: ("site", table[v].to_numpy("float32")) for v in table.columns}
        data["elevation_reference"] = ("site", reference["elevation_reference"].values)
        data["latitude"] = ("site", sites["lat"].to_numpy("float32"))
        out[key] = xr.Dataset(data, coords={"site": sites["site"].to_numpy()})
        out[key].attrs = {"window_metres": float((2 * k + 1) * _TOWER_PIXEL)}
    return out

"""Static 30 m layers: elevation, slope, aspect and land-cover fractions from a DEM and WorldCover.

:func:`slope_aspect` and :func:`class_fractions` work on lazy DataArrays (real DEM and
WorldCover cubes from :func:`unique_cube.inputs.cube.load`) as on the demo world's arrays;
:func:`static_layers` stacks them on a grid (the auxiliary inputs of the S2 downscaler) and
:func:`vegetation_types` gives each pixel its dominant class (the pure-pixel baseline's types).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr

from unique_cube.config.catalog import Catalog
from unique_cube.errors import ConfigError, DownscaleError
from unique_cube.grid import lonlat_bbox
from unique_cube.inputs.cube import load
from unique_cube.inputs.search import search

__all__ = [
    "TERRAIN_LAYERS",
    "VEGETATED",
    "class_fractions",
    "slope_aspect",
    "static_items",
    "static_layers",
    "vegetated_codes",
    "vegetation_types",
]


#: The terrain layers :func:`static_layers` gives first, before the land-cover fractions.
TERRAIN_LAYERS = ("elevation", "slope", "aspect_sin", "aspect_cos")


def slope_aspect(elevation: xr.DataArray) -> xr.Dataset:
    """Slope (degrees from horizontal) and aspect (degrees clockwise from north, downslope).

    ``elevation`` is in metres on a projected grid with ``y`` and ``x`` coordinates in metres
    (``y`` may decrease downwards, as in north-up rasters). Lazy if the input is.
    """
    for dim in ("y", "x"):
        if dim not in elevation.dims:
            raise ConfigError(
                f"slope_aspect: elevation needs a {dim!r} dimension, has {elevation.dims}"
            )
    dz_dx = elevation.differentiate("x")  # per metre eastwards
    dz_dy = elevation.differentiate("y")  # per metre northwards (coordinates are northings)
    gradient = np.hypot(dz_dx, dz_dy)
    slope = np.degrees(np.arctan(gradient)).astype("float32")
    # Downslope direction is -∇z; its bearing from north, clockwise.
    aspect = (np.degrees(np.arctan2(-dz_dx, -dz_dy)) % 360).astype("float32")
    aspect = aspect.where(gradient > 0)
    slope.attrs = {"units": "degree", "long_name": "terrain slope"}
    aspect.attrs = {
        "units": "degree",
        "long_name": "terrain aspect, clockwise from north (downslope)",
    }
    return xr.Dataset({"slope": slope, "aspect": aspect})


def class_fractions(
    landcover: xr.DataArray, classes: Mapping[int, str], factor: int
) -> xr.DataArray:
    """Fraction of each class in blocks of ``factor × factor`` fine pixels (10 m → 30 m: 3).

    Returns a float32 DataArray with a ``class`` dimension (named by ``classes``); fractions of
    a block sum to 1 where all its pixels have a class, and are NaN where none has.
    Pixels with a value not in ``classes`` (or NaN) count as no data.
    """
    if factor < 1:
        raise ConfigError(f"class_fractions: factor must be a positive integer, got {factor}")
    ny, nx = landcover.sizes["y"], landcover.sizes["x"]
    if ny % factor or nx % factor:
        raise ConfigError(
            f"class_fractions: the land-cover grid ({ny} x {nx}) is not a whole number of "
            f"{factor} x {factor} blocks; load it on a grid aligned with the coarse one"
        )
    codes = list(classes)
    one_hot = xr.concat([(landcover == code) for code in codes], dim="class").astype("float32")
    one_hot = one_hot.assign_coords({"class": [classes[c] for c in codes]})
    counts = one_hot.coarsen(y=factor, x=factor).sum()
    total = counts.sum("class")
    fractions = (counts / total.where(total > 0)).astype("float32")
    fractions.attrs = {"units": "1", "long_name": "fraction of the pixel covered by each class"}
    return fractions.rename("lc_fractions")


#: WorldCover classes the pure-pixel baseline treats as vegetation types.
VEGETATED = ("tree_cover", "shrubland", "grassland", "cropland", "herbaceous_wetland",
             "mangroves", "moss_lichen")  # fmt: skip


def vegetation_types(static: np.ndarray, names: list[str], classes: dict) -> np.ndarray:
    """Each 30 m pixel's dominant land-cover class code (0 where none) from the fractions."""
    codes = {f"lc_{name}": int(code) for code, name in classes.items()}
    layers = [i for i, n in enumerate(names) if n in codes]
    if not layers:
        raise DownscaleError(f"no land-cover fraction among the static layers {names}")
    fractions = static[layers]
    dominant = np.array([codes[names[i]] for i in layers])[np.argmax(fractions, axis=0)]
    return np.where(fractions.sum(axis=0) > 0, dominant, 0).astype("int64")


def vegetated_codes(classes: dict) -> list[int]:
    return sorted(int(code) for code, name in classes.items() if name in VEGETATED)


def static_items(catalog: Catalog, geobox, provenance: dict | None = None) -> tuple[list, list]:
    """The DEM and land-cover items over ``geobox``; their ids go into ``provenance``."""
    bbox = lonlat_bbox(geobox)
    dem_items = search("dem", bbox, "1900-01-01/2100-01-01", catalog=catalog)
    lc_items = search("worldcover", bbox, "1900-01-01/2100-01-01", catalog=catalog)
    if provenance is not None:
        provenance["dem"] = [item.id for item in dem_items]
        provenance["worldcover"] = [item.id for item in lc_items]
    return dem_items, lc_items


def static_layers(
    catalog: Catalog,
    geobox,
    provenance: dict | None = None,
    items: list | None = None,
    *,
    searched: tuple[list, list] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Elevation, slope, sin/cos aspect and land-cover fractions on the 30 m grid (C, H, W).
    The ids of the items read go into ``provenance`` (by source) and the items themselves into
    ``items`` when given; ``searched`` are the (DEM, land-cover) items of
    :func:`static_items`, searched again when not given."""
    dem_source, lc_source = catalog.source("dem"), catalog.source("worldcover")
    dem_items, lc_items = searched or static_items(catalog, geobox, provenance)
    elevation = load(dem_items, dem_source, geobox).elevation.max("time").compute()
    terrain = slope_aspect(elevation)
    fine = geobox.zoom_out(1 / 3)
    landcover = load(lc_items, lc_source, fine).landcover.max("time").compute()
    if items is not None:
        items += [*dem_items, *lc_items]
    fractions = class_fractions(landcover, dict(lc_source.classes), 3)
    present = [
        str(c) for c in fractions["class"].values if float(fractions.sel({"class": c}).sum()) > 0
    ]
    aspect = np.radians(terrain.aspect.fillna(0).values)
    layers = [elevation.values, terrain.slope.values, np.sin(aspect), np.cos(aspect)]
    layers += [fractions.sel({"class": c}).fillna(0).values for c in present]
    names = [*TERRAIN_LAYERS, *[f"lc_{c}" for c in present]]
    return np.stack(layers).astype("float32"), names

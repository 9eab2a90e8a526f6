"""Static 30 m layers derived from a DEM and a finer land-cover map: slope, aspect, class fractions.

These are the auxiliary inputs of the S2 downscaler and they work on lazy DataArrays
(real DEM and WorldCover cubes from :func:`unique_cube.cube.load`) as on the demo world's arrays.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr

from .errors import ConfigError

__all__ = ["class_fractions", "slope_aspect"]


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

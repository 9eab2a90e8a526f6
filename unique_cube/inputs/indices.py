"""Vegetation and water indices on lazy reflectance Datasets.

Each function takes a Dataset with reflectance bands named by role (``blue``, ``red``,
``nir``, ``swir16`` …, as :func:`unique_cube.inputs.cube.load` returns them), stays lazy, and
gives NaN wherever an input is NaN (masked) or the index is undefined (zero denominator).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import xarray as xr

from unique_cube.errors import ConfigError

__all__ = ["INDICES", "add_indices", "evi", "kndvi", "lswi", "ndvi", "ndwi", "nirv"]


def _need(ds: xr.Dataset, index: str, *roles: str) -> list[xr.DataArray]:
    missing = [r for r in roles if r not in ds]
    if missing:
        raise ConfigError(
            f"{index}: needs band(s) {', '.join(roles)}; the dataset lacks {', '.join(missing)} "
            f"(it has {', '.join(map(str, ds.data_vars))})"
        )
    return [ds[r] for r in roles]


def _normalised_difference(a: xr.DataArray, b: xr.DataArray) -> xr.DataArray:
    total = a + b
    return ((a - b) / total.where(total != 0)).astype("float32")


def _named(values: xr.DataArray, name: str, long_name: str) -> xr.DataArray:
    values = values.rename(name)
    values.attrs = {"units": "1", "long_name": long_name}
    return values


def ndvi(ds: xr.Dataset) -> xr.DataArray:
    """Normalised difference vegetation index, (NIR − red) / (NIR + red)."""
    nir, red = _need(ds, "ndvi", "nir", "red")
    return _named(
        _normalised_difference(nir, red), "ndvi", "normalized difference vegetation index"
    )


def evi(ds: xr.Dataset) -> xr.DataArray:
    """Enhanced vegetation index (Huete et al. 2002), 2.5 (N − R) / (N + 6R − 7.5B + 1)."""
    nir, red, blue = _need(ds, "evi", "nir", "red", "blue")
    denominator = nir + 6.0 * red - 7.5 * blue + 1.0
    values = 2.5 * (nir - red) / denominator.where(denominator != 0)
    return _named(values.astype("float32"), "evi", "enhanced vegetation index")


def kndvi(ds: xr.Dataset) -> xr.DataArray:
    """Kernel NDVI (Camps-Valls et al. 2021) with σ = (N + R)/2, which reduces to tanh(NDVI²)."""
    values = np.tanh(ndvi(ds) ** 2)
    return _named(
        values.astype("float32"), "kndvi", "kernel normalized difference vegetation index"
    )


def ndwi(ds: xr.Dataset) -> xr.DataArray:
    """Normalised difference water index of Gao (1996), (NIR − SWIR) / (NIR + SWIR).

    Uses the 1.24 µm band (``swir12``, MODIS band 5) where the sensor has one, as Gao defined
    it; otherwise the 1.6 µm band (``swir16``: Landsat, HLS), the usual substitute.
    """
    swir = "swir12" if "swir12" in ds else "swir16"
    nir, swir_band = _need(ds, "ndwi", "nir", swir)
    values = _normalised_difference(nir, swir_band)
    named = _named(values, "ndwi", "normalized difference water index (Gao 1996)")
    named.attrs["swir_band"] = swir
    return named


def lswi(ds: xr.Dataset) -> xr.DataArray:
    """Land surface water index (Xiao et al. 2004), (NIR − SWIR1.6) / (NIR + SWIR1.6)."""
    nir, swir16 = _need(ds, "lswi", "nir", "swir16")
    return _named(_normalised_difference(nir, swir16), "lswi", "land surface water index")


def nirv(ds: xr.Dataset) -> xr.DataArray:
    """Near-infrared reflectance of vegetation (Badgley et al. 2017), NDVI × NIR."""
    values = ndvi(ds) * ds["nir"]
    return _named(values.astype("float32"), "nirv", "near-infrared reflectance of vegetation")


INDICES: dict[str, Callable[[xr.Dataset], xr.DataArray]] = {
    "ndvi": ndvi,
    "evi": evi,
    "kndvi": kndvi,
    "ndwi": ndwi,
    "lswi": lswi,
    "nirv": nirv,
}


def add_indices(ds: xr.Dataset, names: Sequence[str] = tuple(INDICES)) -> xr.Dataset:
    """Return ``ds`` with the named indices added as variables (lazy)."""
    unknown = [n for n in names if n not in INDICES]
    if unknown:
        raise ConfigError(f"indices: unknown {', '.join(unknown)}; known: {', '.join(INDICES)}")
    return ds.assign({name: INDICES[name](ds) for name in names})

"""Vegetation indices: formulas, NaN where masked or undefined, laziness."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from conftest import raise_if_dask_computes

from unique_cube.errors import ConfigError
from unique_cube.inputs.indices import INDICES, add_indices, evi, kndvi, lswi, ndvi, ndwi, nirv


def reflectance(**bands: list[float]) -> xr.Dataset:
    return xr.Dataset({k: ("x", np.asarray(v, dtype="float32")) for k, v in bands.items()})


@pytest.fixture
def canopy() -> xr.Dataset:
    # dense canopy, bare soil, a masked pixel, and a pixel where NIR + red = 0
    return reflectance(
        blue=[0.03, 0.10, np.nan, 0.0],
        red=[0.04, 0.20, 0.05, 0.0],
        nir=[0.40, 0.25, np.nan, 0.0],
        swir16=[0.15, 0.30, 0.10, 0.0],
    )


def test_ndvi(canopy: xr.Dataset) -> None:
    values = ndvi(canopy).values
    np.testing.assert_allclose(values[:2], [0.36 / 0.44, 0.05 / 0.45], rtol=1e-6)
    assert np.isnan(values[2]) and np.isnan(values[3])
    assert ndvi(canopy).attrs["units"] == "1"


def test_evi(canopy: xr.Dataset) -> None:
    expected = 2.5 * (0.40 - 0.04) / (0.40 + 6 * 0.04 - 7.5 * 0.03 + 1)
    np.testing.assert_allclose(evi(canopy).values[0], expected, rtol=1e-6)
    assert np.isnan(evi(canopy).values[2])


def test_kndvi_is_tanh_of_ndvi_squared(canopy: xr.Dataset) -> None:
    n = 0.36 / 0.44
    np.testing.assert_allclose(kndvi(canopy).values[0], np.tanh(n**2), rtol=1e-6)
    assert float(kndvi(canopy).min()) >= 0 and float(kndvi(canopy).max()) < 1


def test_water_indices_choose_their_swir_band(canopy: xr.Dataset) -> None:
    np.testing.assert_allclose(lswi(canopy).values[0], 0.25 / 0.55, rtol=1e-6)
    # without a 1.24 µm band NDWI falls back on SWIR 1.6 µm (Landsat/HLS) ...
    assert ndwi(canopy).attrs["swir_band"] == "swir16"
    np.testing.assert_allclose(ndwi(canopy).values[0], 0.25 / 0.55, rtol=1e-6)
    # ... and uses MODIS band 5 when the source has it, as Gao (1996) defined it
    modis = canopy.assign(swir12=("x", np.array([0.30, 0.3, 0.3, 0.3], "float32")))
    assert ndwi(modis).attrs["swir_band"] == "swir12"
    np.testing.assert_allclose(ndwi(modis).values[0], 0.10 / 0.70, rtol=1e-6)


def test_nirv(canopy: xr.Dataset) -> None:
    np.testing.assert_allclose(nirv(canopy).values[0], 0.36 / 0.44 * 0.40, rtol=1e-6)


def test_add_indices_is_lazy_and_float32(canopy: xr.Dataset) -> None:
    chunked = canopy.chunk({"x": 2})
    with raise_if_dask_computes():
        out = add_indices(chunked)
    for name in INDICES:
        assert out[name].chunks == ((2, 2),)
        assert out[name].dtype == np.float32
    np.testing.assert_allclose(out["ndvi"].values, ndvi(canopy).values, equal_nan=True)


def test_missing_band_and_unknown_index(canopy: xr.Dataset) -> None:
    with pytest.raises(
        ConfigError, match="evi: needs band\\(s\\) nir, red, blue; the dataset lacks blue"
    ):
        evi(canopy.drop_vars("blue"))
    with pytest.raises(ConfigError, match="indices: unknown savi"):
        add_indices(canopy, ["ndvi", "savi"])

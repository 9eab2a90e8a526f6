"""The daily weather on a grid (:func:`unique_cube.inputs.weather.on_geobox`): bilinear, lazy,
block by block, so a national 30 m grid costs nothing until its blocks are computed."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj import Transformer

from unique_cube.inputs.weather import on_geobox


def _daily(chunked: bool) -> xr.Dataset:
    """Three days of two fields on a 0.25° grid over Korea, latitudes descending (as ERA5)."""
    lat = np.arange(39.0, 33.0 - 0.01, -0.25)
    lon = np.arange(124.0, 131.0 + 0.01, 0.25)
    rng = np.random.default_rng(0)
    time = pd.date_range("2023-06-01", periods=3)
    tair = rng.normal(20, 3, (3, lat.size, lon.size)).astype("float32")
    ds = xr.Dataset(
        {"tair": (("time", "lat", "lon"), tair),
         "elevation_reference": (("lat", "lon"), rng.uniform(0, 900, (lat.size, lon.size)))},
        coords={"time": time, "lat": lat, "lon": lon},
    )  # fmt: skip
    return ds.chunk({"time": 1}) if chunked else ds


def _geobox(shape: tuple[int, int], left: float = 950_000.0, top: float = 1_950_000.0) -> GeoBox:
    return GeoBox(shape, Affine(30.0, 0, left, 0, -30.0, top), "EPSG:5179")


def test_on_geobox_is_xarrays_bilinear_interpolation_at_every_pixel() -> None:
    daily, geobox = _daily(chunked=True), _geobox((70, 90))
    out = on_geobox(daily, geobox, chunks=32)
    ys, xs = geobox.coordinates["y"].values, geobox.coordinates["x"].values
    xx, yy = np.meshgrid(xs, ys)
    lon, lat = Transformer.from_crs("EPSG:5179", "EPSG:4326", always_xy=True).transform(xx, yy)
    expected = (
        daily.compute()
        .isel(lat=slice(None, None, -1))
        .interp(lat=xr.DataArray(lat, dims=("y", "x")), lon=xr.DataArray(lon, dims=("y", "x")))
    )
    assert out["tair"].dims == ("time", "y", "x") and out["tair"].dtype == np.float32
    assert out["elevation_reference"].dims == ("y", "x")
    np.testing.assert_allclose(out["tair"].values, expected["tair"].values, rtol=1e-6)
    np.testing.assert_allclose(out["elevation_reference"].values,
                               expected["elevation_reference"].values, rtol=1e-9)  # fmt: skip
    np.testing.assert_array_equal(out["time"].values, daily["time"].values)
    np.testing.assert_array_equal(out["y"].values, ys)


def test_on_geobox_of_a_national_grid_is_lazy_and_blockwise() -> None:
    """Korea's 30 m grid (20 672 x 14 144 px): nothing is computed and no full-grid array is
    made to build it; a block computes alone."""
    geobox = _geobox((20_672, 14_144), left=746_010.0, top=2_078_160.0)
    calls = []

    def counting(dsk, keys, **kwargs):
        calls.append(len(keys))
        return dask.get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=counting):
        out = on_geobox(_daily(chunked=True), geobox)
    assert calls == []  # nothing computed while building
    tair = out["tair"].data
    assert tair.shape == (3, 20_672, 14_144) and tair.chunksize == (1, 512, 512)
    block = out["tair"].isel(time=1, y=slice(5120, 5130), x=slice(7000, 7010)).values
    assert block.shape == (10, 10) and np.isfinite(block).all()

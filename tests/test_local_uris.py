"""Inputs under a folder whose name has a space and a non-ASCII letter: their ``file://``
URIs (``Path.as_uri()``, percent-encoded) are read back as the files they name."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pystac
import pytest
import xarray as xr
from odc.geo.geobox import GeoBox
from rasterio.transform import Affine

from unique_cube.config.catalog import load_catalog
from unique_cube.demo.publish import stac_item, write_cog
from unique_cube.files import local_path
from unique_cube.inputs.cube import load
from unique_cube.inputs.weather import daily_weather


@pytest.fixture
def odd_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "dé mo" / "world #1"
    folder.mkdir(parents=True)
    return folder


def test_local_path_reads_back_as_uri(odd_folder: Path) -> None:
    path = odd_folder / "era5" / "x?.zarr"
    uri = path.as_uri()
    assert "%20" in uri and "%C3%A9" in uri and "%3F" in uri
    assert local_path(uri) == path
    assert local_path(uri.replace("file://", "file://localhost", 1)) == path
    assert local_path(str(path)) == path  # a plain path is itself
    assert local_path("cogs/B04.tif") == Path("cogs/B04.tif")
    for remote in ("https://h/a%20b.tif?sig=x", "s3://bucket/a.zarr", "az://c/x.zarr"):
        assert local_path(remote) is None


def test_weather_is_read_through_a_percent_encoded_file_uri(odd_folder: Path) -> None:
    source = load_catalog("demo").source("era5")
    # Two whole UTC days of hours (an hour is labelled by its end: 01:00 … 24:00).
    times = pd.date_range("2023-06-01T01:00", periods=48, freq="h")
    lat, lon = np.array([37.2, 37.1]), np.array([127.0, 127.1, 127.2])
    rng = np.random.default_rng(0)
    values = {
        "tair": 290.0 + 5 * rng.random((48, 2, 3)),
        "tdew": 280.0 + 5 * rng.random((48, 2, 3)),
        "shortwave": 1e6 * rng.random((48, 2, 3)),
        "precipitation": 1e-3 * rng.random((48, 2, 3)),
    }
    item = pystac.Item("era5-2023-06", None, None, dt.datetime(2023, 6, 1), {})
    for role, data in values.items():
        key = source.bands[role].asset
        path = odd_folder / "era5" / f"{key}.zarr"
        xr.Dataset({key: (("time", "lat", "lon"), data)},
                   coords={"time": times, "lat": lat, "lon": lon}
                   ).to_zarr(path, mode="w", consolidated=True, zarr_format=2)  # fmt: skip
        open_kwargs = {"chunks": {}, "engine": "zarr", "consolidated": True}
        item.add_asset(key, pystac.Asset(path.as_uri(), extra_fields={
            "xarray:open_kwargs": open_kwargs}))  # fmt: skip

    daily = daily_weather([item], source, utc_offset_hours=0).compute()

    assert list(daily.time.values) == list(pd.to_datetime(["2023-06-01", "2023-06-02"]))
    by_day = {role: data.reshape(2, 24, 2, 3) for role, data in values.items()}
    np.testing.assert_allclose(daily.tair, by_day["tair"].mean(axis=1) - 273.15, rtol=1e-6)
    np.testing.assert_allclose(
        daily.precipitation, by_day["precipitation"].sum(axis=1) * 1000.0, rtol=1e-6
    )
    np.testing.assert_allclose(daily.shortwave, by_day["shortwave"].sum(axis=1) / 1e6, rtol=1e-6)


def test_cogs_are_read_through_a_percent_encoded_file_uri(odd_folder: Path) -> None:
    source = load_catalog("demo").source("dem")
    step = 1 / 3600
    transform = Affine(step, 0.0, 127.13, 0.0, -step, 37.77)
    shape = (64, 64)
    elevation = (100.0 + np.arange(shape[1], dtype="float32"))[None, :].repeat(shape[0], axis=0)
    path = odd_folder / "cogs" / "dem.tif"
    path.parent.mkdir()
    write_cog(path, elevation, "EPSG:4326", transform, None)
    asset = {"href": path.as_uri(), "type": "image/tiff; application=geotiff", "roles": ["data"]}
    item = pystac.Item.from_dict(stac_item(
        "dem-1", source.collection, "EPSG:4326", transform, shape,
        {"datetime": "2021-04-22T00:00:00Z"}, {source.bands["elevation"].asset: asset},
    ))  # fmt: skip

    cube = load([item], source, GeoBox(shape, transform, "EPSG:4326"), resampling="nearest")

    np.testing.assert_array_equal(cube.elevation.isel(time=0).values, elevation)

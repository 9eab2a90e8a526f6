"""Search a real local STAC API (rustac serve) and load cubes onto a grid in another CRS."""

from __future__ import annotations

import numpy as np
import pystac
import pytest
import xarray as xr
from conftest import HLS_DN, HLS_DN_LATER, MODIS_DN, raise_if_dask_computes
from odc.geo.geobox import GeoBox

from unique_cube.errors import (
    ConfigError,
    EmptySearchError,
    LoadError,
    UnknownCollectionError,
    UnknownSourceError,
)
from unique_cube.inputs.cube import load
from unique_cube.inputs.indices import add_indices
from unique_cube.inputs.search import search

MAY = "2023-05-01/2023-05-31"

pytestmark = pytest.mark.integration


def hls_items(world, method: str = "POST") -> list[pystac.Item]:
    return search("hls-l30", world.bbox, MAY, catalog=world.catalog, method=method)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_search_filters_cloud_and_deduplicates(stac_world, method: str) -> None:
    items = hls_items(stac_world, method)
    # 4 HLS items are served: one is 97 % cloudy, one is an older processing of the same
    # tile and day. What is left is the newest processing of each clear-enough day.
    assert [it.id for it in items] == [
        "HLS.L30.T52SCG.2023123T022000.v2.0",
        "HLS.L30.T52SCG.2023139T022000.v2.0",
    ]
    assert all(isinstance(it, pystac.Item) for it in items)


def test_search_cloud_limit_is_adjustable(stac_world) -> None:
    items = search("hls-l30", stac_world.bbox, MAY, catalog=stac_world.catalog, max_cloud_cover=5)
    assert [it.id for it in items] == ["HLS.L30.T52SCG.2023139T022000.v2.0"]
    items = search("hls-l30", stac_world.bbox, MAY, catalog=stac_world.catalog, max_cloud_cover=100)
    assert len(items) == 3


def test_hls_cube_values_masks_and_grid(stac_world) -> None:
    source = stac_world.catalog.source("hls-l30")
    with raise_if_dask_computes():
        cube = load(hls_items(stac_world), source, stac_world.geobox, flags=["water"])
    # The grid is exactly the target GeoBox (EPSG:32652), although items are in EPSG:32651.
    assert cube.odc.geobox == stac_world.geobox
    assert cube.odc.crs.epsg == 32652
    assert cube.sizes == {"time": 2, "y": 40, "x": 40}
    assert cube["red"].dtype == np.float32
    assert cube["red"].attrs["units"] == "1"
    assert "red" in cube["red"].attrs["long_name"]

    values = cube.compute()
    cloud, water = stac_world.cloud_box, stac_world.water_box
    day1 = values.isel(time=0)
    # scale 0.0001 applied; the cloud block is not clear and its bands are NaN
    assert not day1["clear"][cloud].any()
    assert day1["red"][cloud].isnull().all()
    far_from_cloud = day1["red"][20:, :20]
    np.testing.assert_allclose(far_from_cloud, HLS_DN["B04"] * 1e-4, rtol=1e-6)
    np.testing.assert_allclose(day1["nir"][20:, :20], HLS_DN["B05"] * 1e-4, rtol=1e-6)
    # water is flagged but stays clear (it is a valid observation of the surface)
    assert day1["qa_water"][water].all() and day1["clear"][water].all()
    assert not day1["qa_water"][cloud].any()
    # the cloud covers about its 10 x 10 target pixels (plus a pixel of margin)
    assert 100 <= int((~day1["clear"]).sum()) <= 144
    # the second day is all clear, with its own values
    day2 = values.isel(time=1)
    assert bool(day2["clear"].all())
    np.testing.assert_allclose(day2["red"], HLS_DN_LATER["B04"] * 1e-4, rtol=1e-6)


def test_cube_and_indices_stay_lazy(stac_world) -> None:
    source = stac_world.catalog.source("hls-l30")
    items = hls_items(stac_world)
    with raise_if_dask_computes():
        cube = add_indices(
            load(items, source, stac_world.geobox, chunks={"time": 1, "y": 16, "x": 16})
        )
    assert cube["ndvi"].chunks is not None
    assert cube["red"].data.chunksize == (1, 16, 16)
    ndvi = cube["ndvi"].isel(time=1).compute()
    red, nir = HLS_DN_LATER["B04"], HLS_DN_LATER["B05"]
    np.testing.assert_allclose(ndvi, (nir - red) / (nir + red), rtol=1e-5)


def test_modis_sinusoidal_onto_utm(stac_world) -> None:
    source = stac_world.catalog.source("modis-nbar")
    items = search("modis-nbar", stac_world.bbox, MAY, catalog=stac_world.catalog)
    assert [it.id for it in items] == ["MCD43A4.A2023123.h28v05.061"]
    cube = load(items, source, stac_world.geobox, resampling="nearest").compute()
    assert cube.odc.crs.epsg == 32652
    red = cube["red"].isel(time=0)
    # QA is fill (255) in the northern half of the MODIS tile: no data there
    assert red[:5].isnull().all() and not cube["clear"].isel(time=0)[:5].any()
    np.testing.assert_allclose(red[-5:], MODIS_DN[1] * 1e-4, rtol=1e-6)
    np.testing.assert_allclose(cube["swir12"].isel(time=0)[-5:], MODIS_DN[5] * 1e-4, rtol=1e-6)


def test_dem_epsg4326_onto_utm(stac_world) -> None:
    source = stac_world.catalog.source("dem")
    items = search("dem", stac_world.bbox, "2021-01-01/2021-12-31", catalog=stac_world.catalog)
    cube = load(items, source, stac_world.geobox)
    assert cube["elevation"].attrs["units"] == "m"
    assert "clear" not in cube
    elevation = cube["elevation"].isel(time=0).compute()
    assert elevation.notnull().all()
    # the tile rises 1 m per arc-second eastwards: monotonic along x, ~1.2 km / 24.5 m wide
    assert bool((elevation.diff("x") > 0).all())
    span = float(elevation[:, -1].mean() - elevation[:, 0].mean())
    assert 40 < span < 55


def test_coarse_grid_with_average_resampling(stac_world) -> None:
    source = stac_world.catalog.source("hls-l30")
    coarse = GeoBox.from_bbox(
        stac_world.geobox.extent.boundingbox, "EPSG:32652", resolution=300, tight=True
    )
    cube = load(hls_items(stac_world), source, coarse, bands=["red"], resampling="average")
    assert cube.sizes == {"time": 2, "y": 4, "x": 4}
    assert list(cube.data_vars) == ["clear", "red"]
    day2 = cube["red"].isel(time=1).compute()
    np.testing.assert_allclose(day2, HLS_DN_LATER["B04"] * 1e-4, rtol=1e-5)


# ----------------------------------------------------------------------- bad input


def test_empty_search_result_is_an_error(stac_world) -> None:
    with pytest.raises(EmptySearchError) as err:
        search("hls-l30", stac_world.bbox, "2019-01-01/2019-01-31", catalog=stac_world.catalog)
    message = str(err.value)
    assert "no items for collection 'hls2-l30' (source 'hls-l30')" in message
    assert "2019-01-01T00:00:00Z/2019-01-31T23:59:59Z" in message


def test_bbox_outside_all_items_is_an_error(stac_world) -> None:
    with pytest.raises(EmptySearchError, match=r"bbox \[10.0, 10.0, 10.1, 10.1\]"):
        search("hls-l30", (10, 10, 10.1, 10.1), MAY, catalog=stac_world.catalog)


def test_all_items_too_cloudy_is_an_error(stac_world) -> None:
    with pytest.raises(EmptySearchError, match=r"all 4 items .* eo:cloud_cover above 1%"):
        search("hls-l30", stac_world.bbox, MAY, catalog=stac_world.catalog, max_cloud_cover=1)


def test_unknown_collection_is_an_error(stac_world) -> None:
    # worldcover is in the catalog, but this STAC API does not serve esa-worldcover
    with pytest.raises(UnknownCollectionError) as err:
        search("worldcover", stac_world.bbox, MAY, catalog=stac_world.catalog)
    assert "does not serve collection 'esa-worldcover'" in str(err.value)
    assert "hls2-l30" in str(err.value)  # what it does serve


def test_unknown_source_is_an_error(stac_world) -> None:
    with pytest.raises(UnknownSourceError, match="unknown source 'landsat-99'"):
        search("landsat-99", stac_world.bbox, MAY, catalog=stac_world.catalog)


@pytest.mark.parametrize(
    ("bbox", "dates", "message"),
    [
        ((127.2, 37.7, 127.1, 37.8), MAY, "west < east"),
        ((127.1, 37.7, 127.2), MAY, "expected four numbers"),
        ((127.1, 37.7, 227.2, 37.8), MAY, "west < east in [-180, 180]"),
        ((127.1, 37.7, 127.2, 37.8), "2023-05-31/2023-05-01", "the range is reversed"),
        ((127.1, 37.7, 127.2, 37.8), "2023-02-30", "is not a date"),
    ],
)
def test_bad_arguments_fail_before_any_request(bbox, dates, message) -> None:
    from unique_cube.config.catalog import load_catalog

    # Port 9 (discard) has no server: an error here proves nothing was requested.
    catalog = load_catalog("demo").with_url("http://127.0.0.1:9")
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        search("hls-l30", bbox, dates, catalog=catalog)


def test_item_missing_an_asset_is_an_error(stac_world) -> None:
    items = hls_items(stac_world)
    broken = items[1].clone()
    del broken.assets["B05"]
    with pytest.raises(LoadError) as err:
        load([items[0], broken], stac_world.catalog.source("hls-l30"), stac_world.geobox)
    assert f"item {broken.id!r} of hls2-l30 has no asset 'B05' (role 'nir')" in str(err.value)


def test_no_items_is_an_error(stac_world) -> None:
    with pytest.raises(LoadError, match="no items to load for hls2-l30"):
        load([], stac_world.catalog.source("hls-l30"), stac_world.geobox)


def test_grid_outside_the_items_is_an_error(stac_world) -> None:
    far = GeoBox.from_bbox((500000, 4000000, 501200, 4001200), "EPSG:32652", resolution=30)
    with pytest.raises(LoadError, match="none of the 2 items of hls2-l30 overlaps the target grid"):
        load(hls_items(stac_world), stac_world.catalog.source("hls-l30"), far)


def test_unknown_band_role_and_flag(stac_world) -> None:
    items = hls_items(stac_world)
    source = stac_world.catalog.source("hls-l30")
    with pytest.raises(ConfigError, match="unknown role\\(s\\) thermal"):
        load(items, source, stac_world.geobox, bands=["red", "thermal"])
    with pytest.raises(ConfigError, match="unknown QA flag\\(s\\) \\['smoke'\\]"):
        load(items, source, stac_world.geobox, flags=["smoke"])


def test_zarr_source_is_refused_by_the_raster_loader(stac_world) -> None:
    items = hls_items(stac_world)
    with pytest.raises(LoadError, match="era5-pds' is a zarr source"):
        load(items, stac_world.catalog.source("era5"), stac_world.geobox)


def test_items_of_another_collection_are_refused(stac_world) -> None:
    items = hls_items(stac_world)
    with pytest.raises(LoadError, match="belongs to collection 'hls2-l30', not 'modis-43A4-061'"):
        load(items, stac_world.catalog.source("modis-nbar"), stac_world.geobox)


def test_result_is_a_dataset(stac_world) -> None:
    cube = load(hls_items(stac_world), stac_world.catalog.source("hls-l30"), stac_world.geobox)
    assert isinstance(cube, xr.Dataset)
    assert cube.attrs["source_collection"] == "hls2-l30"

"""Two loader engines, one Dataset: odc-stac and stackstac on the tiny world's items.

Both engines warp with GDAL onto the same GeoBox, so ``nearest`` must give identical values and
``bilinear`` values within a stated tolerance; the masks, grid, coordinates and time steps must
be the same. stackstac's own demands (``proj:`` fields, an EPSG grid) fail before any read.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import pystac
import pytest
import xarray as xr
from conftest import HLS_DN, HLS_SHAPE, HLS_TRANSFORM, raise_if_dask_computes
from odc.geo.geobox import GeoBox
from signed_assets import sign
from test_faults_reads import FAST, _remote
from test_search_and_load import MAY, hls_items

from unique_cube.config.catalog import load_catalog
from unique_cube.errors import ConfigError, LoadError
from unique_cube.inputs.cube import load
from unique_cube.inputs.reads import AccessDeniedError, ReadPolicy, lost_reads, strip_query
from unique_cube.inputs.search import search

pytest.importorskip("stackstac")

# The tests on the tiny world are marked ``integration`` by conftest (they use ``stac_world``,
# a STAC API on 127.0.0.1); the catalog's ``engine`` field is checked without one.


def both(items, source, geobox, **options) -> tuple[xr.Dataset, xr.Dataset]:
    """The same load with each engine, computed."""
    cubes = []
    for engine in ("odc-stac", "stackstac"):
        with raise_if_dask_computes():
            cube = load(items, source, geobox, engine=engine, **options)
        assert cube.attrs["engine"] == engine
        cubes.append(cube.compute(scheduler="threads"))
    return cubes[0], cubes[1]


def same_contract(odc: xr.Dataset, stk: xr.Dataset) -> None:
    """Variables, dtypes, attributes, grid, coordinates and time steps are the same."""
    assert list(stk.data_vars) == list(odc.data_vars)
    assert stk.sizes == odc.sizes
    assert stk.odc.geobox == odc.odc.geobox
    for name in ("x", "y", "time"):
        np.testing.assert_array_equal(stk[name].values, odc[name].values)
        assert stk[name].dtype == odc[name].dtype
    assert stk["spatial_ref"].attrs == odc["spatial_ref"].attrs
    for name in odc.data_vars:
        assert stk[name].dtype == odc[name].dtype, name
        assert stk[name].attrs == odc[name].attrs, name
    assert {k: v for k, v in stk.attrs.items() if k != "engine"} == {
        k: v for k, v in odc.attrs.items() if k != "engine"
    }


def max_difference(odc: xr.Dataset, stk: xr.Dataset, name: str) -> float:
    """Largest |odc-stac − stackstac| where both have a value; the NaNs must coincide."""
    a, b = odc[name].values, stk[name].values
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"{name}: NaNs differ")
    both_valid = ~np.isnan(a)
    assert both_valid.any()
    return float(np.abs(a[both_valid] - b[both_valid]).max())


def hls_native_geobox() -> GeoBox:
    """40 × 40 pixels of the HLS scenes' own grid (EPSG:32651): no reprojection at all."""
    x0, y0 = HLS_TRANSFORM.c + 40 * 30, HLS_TRANSFORM.f - 40 * 30
    return GeoBox.from_bbox((x0, y0 - 1200, x0 + 1200, y0), "EPSG:32651", resolution=30)


# ------------------------------------------------------------------------------ parity

HLS_BANDS = ["red", "nir", "swir16"]


@pytest.mark.parametrize("grid", ["native", "reprojected"])
@pytest.mark.parametrize("resampling", ["nearest", "bilinear"])
def test_hls_parity(stac_world, grid: str, resampling: str) -> None:
    geobox = hls_native_geobox() if grid == "native" else stac_world.geobox
    source = stac_world.catalog.source("hls-l30")
    odc, stk = both(hls_items(stac_world), source, geobox, bands=HLS_BANDS, flags=["water"],
                    resampling=resampling)  # fmt: skip
    same_contract(odc, stk)
    assert odc.sizes["time"] == 2
    # The clear mask, the water flag and so every NaN of the bands are identical.
    np.testing.assert_array_equal(stk["clear"].values, odc["clear"].values)
    np.testing.assert_array_equal(stk["qa_water"].values, odc["qa_water"].values)
    assert not odc["clear"].all()  # the cloud block: a mask that could differ
    for name in HLS_BANDS:
        # The scenes are piecewise constant, so even bilinear values are the scene's own
        # numbers away from the no-data corner: both engines read the same values.
        assert max_difference(odc, stk, name) == 0.0, name


@pytest.mark.parametrize("resampling", ["nearest", "bilinear"])
def test_modis_sinusoidal_onto_utm_parity(stac_world, resampling: str) -> None:
    source = stac_world.catalog.source("modis-nbar")
    items = search("modis-nbar", stac_world.bbox, MAY, catalog=stac_world.catalog)
    odc, stk = both(items, source, stac_world.geobox, resampling=resampling)
    same_contract(odc, stk)
    np.testing.assert_array_equal(stk["clear"].values, odc["clear"].values)
    assert odc["clear"].any() and not odc["clear"].all()  # the fill half is not clear
    for name in source.bands:
        assert max_difference(odc, stk, name) == 0.0, name


# The DEM rises 1 m per arc-second pixel eastwards, so bilinear values vary smoothly. The two
# engines warp through different GDAL calls (odc-stac: rasterio.warp.reproject per output
# chunk, from a source window of its own; stackstac: a WarpedVRT read window by window), each
# with GDAL's approximate transformer (error threshold 0.125 pixel): positions agree within
# 1/8 of a source pixel, values within 1/8 of the step between pixels, 0.125 m here. Measured:
# 0 with one chunk, 0.015 m with 16 × 16 chunks, 0.074 m with 7 × 13 chunks (on the compact
# demo world's real-looking DEM: 0.32 m where the slope is 48 m per pixel, mean 0.012 m).
# Integer assets add half a raw unit: stackstac's WarpedVRT keeps their type (see _read_stackstac).
DEM_BILINEAR_TOLERANCE_M = 0.125


@pytest.mark.parametrize("chunks", [None, {"time": 1, "y": 7, "x": 13}], ids=["whole", "7x13"])
@pytest.mark.parametrize("resampling", ["nearest", "bilinear"])
def test_dem_epsg4326_onto_utm_parity(stac_world, resampling: str, chunks) -> None:
    source = stac_world.catalog.source("dem")
    items = search("dem", stac_world.bbox, "2021-01-01/2021-12-31", catalog=stac_world.catalog)
    odc, stk = both(items, source, stac_world.geobox, resampling=resampling, chunks=chunks)
    same_contract(odc, stk)
    assert "clear" not in stk
    difference = max_difference(odc, stk, "elevation")
    if resampling == "nearest":
        assert difference == 0.0
    else:
        assert difference <= DEM_BILINEAR_TOLERANCE_M


def test_solar_day_groups_merge_first_valid(stac_world, tmp_path: Path) -> None:
    """Two items of one solar day are one time step, each pixel from the earlier item where it
    has data and from the later one in the earlier's no-data corner, as odc-stac merges."""
    from unique_cube.demo.publish import write_cog

    items = hls_items(stac_world)
    first = items[0]
    later = first.clone()  # 5 minutes later, with a red band that has no no-data corner
    later.id = first.id + "-later"
    later.datetime = first.datetime + dt.timedelta(minutes=5)
    full = tmp_path / "red_without_gaps.tif"
    write_cog(full, np.full(HLS_SHAPE, 1234, "int16"), "EPSG:32651", HLS_TRANSFORM, -9999)
    later.assets["B04"].href = full.as_uri()
    corner = GeoBox.from_bbox((HLS_TRANSFORM.c, HLS_TRANSFORM.f - 1200, HLS_TRANSFORM.c + 1200,
                               HLS_TRANSFORM.f), "EPSG:32651", resolution=30)  # fmt: skip
    source = stac_world.catalog.source("hls-l30")
    odc, stk = both([later, *items], source, corner, bands=["red"], resampling="nearest")
    same_contract(odc, stk)
    assert odc.sizes["time"] == 2  # the later item is merged into the first day
    np.testing.assert_array_equal(stk["red"].values, odc["red"].values)
    np.testing.assert_array_equal(stk["clear"].values, odc["clear"].values)
    day1 = stk["red"].isel(time=0).values
    np.testing.assert_allclose(day1[:10, :10], 0.1234, rtol=1e-6)  # from the later item
    np.testing.assert_allclose(day1[20:, 20:], HLS_DN["B04"] * 1e-4, rtol=1e-6)  # the earlier


def test_stackstac_cube_is_lazy_and_chunked(stac_world) -> None:
    source = stac_world.catalog.source("hls-l30")
    with raise_if_dask_computes():
        cube = load(hls_items(stac_world), source, stac_world.geobox, engine="stackstac",
                    chunks={"time": 1, "y": 16, "x": 16})  # fmt: skip
    assert cube["red"].data.chunksize == (1, 16, 16)
    assert cube["clear"].chunks is not None


def test_the_source_chooses_the_engine(stac_world) -> None:
    source = dataclasses.replace(stac_world.catalog.source("hls-l30"), engine="stackstac")
    cube = load(hls_items(stac_world), source, stac_world.geobox, bands=["red"])
    assert cube.attrs["engine"] == "stackstac"
    cube = load(hls_items(stac_world), source, stac_world.geobox, bands=["red"], engine="odc-stac")
    assert cube.attrs["engine"] == "odc-stac"


# ---------------------------------------------------------------------- read policy


def stackstac_load(world, items, policy: ReadPolicy) -> xr.Dataset:
    return load(items, world.catalog.source("hls-l30"), world.geobox, engine="stackstac",
                bands=["red", "nir"], read=policy)  # fmt: skip


def test_stackstac_reads_renew_expired_signatures(stac_world, store) -> None:
    items = _remote(hls_items(stac_world), store)
    store.expire_all()  # the tokens signed at search time ran out before the reads
    cube = stackstac_load(stac_world, items, ReadPolicy(resign=sign, **FAST))
    cube = cube.compute(scheduler="threads")
    reference = load(hls_items(stac_world), stac_world.catalog.source("hls-l30"),
                     stac_world.geobox, bands=["red", "nir"]).compute()  # fmt: skip
    xr.testing.assert_equal(cube.drop_attrs(), reference.drop_attrs())
    assert store.status[403] > 0 and store.issued > len(items)


def test_stackstac_403_without_signing_is_access_denied(stac_world, store) -> None:
    items = _remote(hls_items(stac_world), store)
    store.expire_all()
    cube = stackstac_load(stac_world, items, ReadPolicy(ledger="never-used", **FAST))
    with pytest.raises(AccessDeniedError, match="no URL signing is configured"):
        cube.compute(scheduler="threads")
    assert lost_reads("never-used") == []


@pytest.mark.parametrize("fault", ["404", "corrupt"])
def test_stackstac_unreadable_asset_is_retried_then_raised_or_recorded(
    stac_world, store, fault
) -> None:
    items = _remote(hls_items(stac_world), store)
    bad = items[0].assets["B04"]
    store.faults[Path(strip_query(bad.href)).name] = fault
    cube = stackstac_load(stac_world, items, ReadPolicy(resign=sign, **FAST))
    with pytest.raises(LoadError, match="after 4 attempts") as caught:
        cube.compute(scheduler="threads")
    assert strip_query(bad.href) in str(caught.value) and "sig=" not in str(caught.value)
    # with a ledger the lost read is no data (so not clear), and recorded once
    ledger = f"stackstac-{fault}"
    policy = ReadPolicy(resign=sign, ledger=ledger, **FAST)
    cube = stackstac_load(stac_world, items, policy).compute(scheduler="threads")
    assert cube["red"].isel(time=0).isnull().all() and not cube["clear"].isel(time=0).any()
    assert cube["nir"].isel(time=1).notnull().all()
    assert [(e["href"], e["attempts"]) for e in lost_reads(ledger)] == [(strip_query(bad.href), 4)]


# ----------------------------------------------------------------------- bad input


def without_proj(item: pystac.Item, *fields: str) -> pystac.Item:
    item = item.clone()
    for name in fields:
        item.properties.pop(name, None)
    return item


@pytest.mark.parametrize(
    ("fields", "missing"),
    [
        # pystac reads a v1 item's proj:epsg as proj:code
        (
            ("proj:code", "proj:epsg"),
            "lacks a CRS (proj:code, proj:epsg, proj:wkt2 or proj:projjson)",
        ),
        (("proj:transform",), "lacks a placement (proj:transform and proj:shape, or proj:bbox)"),
    ],
)
def test_items_without_proj_fields_are_refused_before_any_read(stac_world, fields, missing) -> None:
    items = hls_items(stac_world)
    broken = without_proj(items[1], *fields)
    for asset in broken.assets.values():
        asset.href = "file:///nonexistent/never-read.tif"  # a read would fail differently
    source = stac_world.catalog.source("hls-l30")
    with pytest.raises(ConfigError) as err:
        load([items[0], broken], source, stac_world.geobox, engine="stackstac")
    message = str(err.value)
    assert f"engine 'stackstac' for hls2-l30: item {broken.id!r} {missing} for asset 'B" in message
    assert "use engine 'odc-stac'" in message


def test_proj_bbox_alone_places_an_asset(stac_world) -> None:
    """``proj:bbox`` (with a CRS) is enough where ``proj:transform``/``proj:shape`` are absent."""
    items = hls_items(stac_world)
    source = stac_world.catalog.source("hls-l30")
    reference = load(items, source, stac_world.geobox, engine="stackstac", bands=["red"])
    placed = []
    for item in items:
        item = without_proj(item, "proj:transform", "proj:shape")
        item.properties["proj:bbox"] = [863700.0, 4184400.0, 867300.0, 4188000.0]
        assert item.properties["proj:code"] == "EPSG:32651"
        placed.append(item)
    cube = load(placed, source, stac_world.geobox, engine="stackstac", bands=["red"])
    xr.testing.assert_identical(cube.compute(), reference.compute())


def test_unknown_engine_is_an_error(stac_world) -> None:
    with pytest.raises(ConfigError, match="engine: unknown loader 'rioxarray'; known: odc-stac, "):
        load(hls_items(stac_world), stac_world.catalog.source("hls-l30"), stac_world.geobox,
             engine="rioxarray")  # fmt: skip


def test_a_grid_without_an_epsg_code_is_refused(stac_world) -> None:
    from unique_cube.demo.modis import SINUSOIDAL_WKT

    sinusoidal = GeoBox.from_bbox((11177000, 4195000, 11180000, 4198000), SINUSOIDAL_WKT,
                                  resolution=500)  # fmt: skip
    items = search("modis-nbar", stac_world.bbox, MAY, catalog=stac_world.catalog)
    with pytest.raises(ConfigError, match="has no EPSG code; stackstac reprojects onto EPSG"):
        load(items, stac_world.catalog.source("modis-nbar"), sinusoidal, engine="stackstac")


def test_groupby_by_property_is_refused(stac_world) -> None:
    with pytest.raises(ConfigError, match="groupby 'platform'; it groups by solar_day, time or id"):
        load(hls_items(stac_world), stac_world.catalog.source("hls-l30"), stac_world.geobox,
             engine="stackstac", groupby="platform")  # fmt: skip


# ------------------------------------------------------------------------- catalog


CATALOG = """
name: t
stac_url: http://127.0.0.1:1
sources:
  dem:
    collection: cop-dem-glo-30
    type: terrain
    resolution: 30
    bands:
      elevation: {asset: data, units: m}
"""


def test_catalog_engine_field(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG)
    assert load_catalog(path).source("dem").engine == "odc-stac"
    path.write_text(CATALOG + "    engine: stackstac\n")
    assert load_catalog(path).source("dem").engine == "stackstac"
    path.write_text(CATALOG + "    engine: gdal\n")
    with pytest.raises(ConfigError) as err:
        load_catalog(path)
    assert "sources.dem.engine: expected one of odc-stac, stackstac, got 'gdal'" in str(err.value)
    path.write_text(CATALOG + "    engine: stackstac\n    format: zarr\n")
    with pytest.raises(ConfigError, match="engine: stackstac reads COG assets; a zarr source"):
        load_catalog(path)

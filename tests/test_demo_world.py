"""The demo world: physically sensible truth, Planetary-Computer-like publication, and the
search → load path through the local STAC API (the small world, built once per session)."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from conftest import raise_if_dask_computes
from pyproj import Transformer

from unique_cube.config.catalog import load_catalog
from unique_cube.demo.build import build_world
from unique_cube.demo.check import region_geobox
from unique_cube.demo.modis import SINUSOIDAL_WKT
from unique_cube.demo.weather import make_reanalysis
from unique_cube.demo.world import make_world
from unique_cube.errors import ConfigError
from unique_cube.inputs.cube import load
from unique_cube.inputs.indices import ndvi
from unique_cube.inputs.items import item_time
from unique_cube.inputs.search import search


@pytest.fixture(scope="module")
def truth(demo_world):
    path, _ = demo_world
    with xr.open_zarr(path / "truth" / "gpp.zarr", consolidated=False) as ds:
        yield ds.load()


def _region_bbox(manifest):
    return list(region_geobox(manifest).extent.to_crs("EPSG:4326").boundingbox)


def test_manifest_counts_and_layout(demo_world):
    path, manifest = demo_world
    assert manifest["items"]["modis-09GA-061"] == 365  # daily
    # Landsat 8 + 9 from 2022: one scene every 8 days.
    assert 44 <= manifest["items"]["hls2-l30"] <= 47
    assert manifest["items"]["era5-pds"] == 13  # local days start at 15 UTC the day before
    assert manifest["items"]["esa-worldcover"] == 1
    assert manifest["items"]["cop-dem-glo-30"] >= 1
    sites = list(csv.DictReader((path / "flux" / "sites.csv").open()))
    assert len(sites) == manifest["sites"] == 10  # 8 on their own patches
    assert manifest["region_sites"] == 2  # and 2 inside the region
    assert {s["IGBP"] for s in sites} <= {"DBF", "ENF", "MF", "CRO", "GRA"}
    assert len({s["IGBP"] for s in sites}) >= 4


def test_generation_is_deterministic_for_a_seed():
    a, b, c = make_world("small", 3), make_world("small", 3), make_world("small", 4)
    assert np.array_equal(a.region.terrain.elevation, b.region.terrain.elevation)
    assert [s.lat for s in a.sites] == [s.lat for s in b.sites]
    assert not np.array_equal(a.region.terrain.elevation, c.region.terrain.elevation)
    ra = make_reanalysis(a, np.random.default_rng(1))
    rb = make_reanalysis(b, np.random.default_rng(1))
    assert np.array_equal(ra.tair, rb.tair) and np.array_equal(ra.precipitation, rb.precipitation)


def test_weather_has_a_korean_seasonal_cycle():
    world = make_world("small", 0)
    weather = make_reanalysis(world, np.random.default_rng(0))
    months = np.array([d.month for d in weather.days])
    t_sea = weather.tair + 0.0065 * weather.orography  # back to sea level
    assert t_sea[months == 1].mean() < 2 < 22 < t_sea[months == 8].mean()
    rain = weather.precipitation.mean(axis=(1, 2))
    assert rain[(months >= 6) & (months <= 8)].sum() > 2 * rain[(months <= 2)].sum() * 3 / 2
    assert weather.shortwave.min() > 0 and weather.shortwave.max() < 35  # MJ m-2 day-1
    assert (weather.tdew <= weather.tair).all()


def test_true_gpp_ranges_and_seasons(truth):
    gpp = truth.gpp
    assert float(gpp.min()) >= 0.0
    assert 8.0 < float(gpp.max()) < 18.0
    assert float(gpp.quantile(0.999)) < 15.0
    month = gpp.time.dt.month
    summer = float(gpp.where(month.isin([6, 7, 8])).mean())
    winter = float(gpp.where(month.isin([12, 1, 2])).mean())
    assert summer > 4 * winter
    assert 3.0 < summer < 12.0
    # Water and built-up pixels photosynthesise nothing.
    bare = truth.vegetated_fraction == 0
    assert int(bare.sum()) > 0
    assert float(gpp.where(bare).max()) == 0.0


def test_green_up_comes_later_higher_up(truth):
    gpp = truth.gpp.values
    deciduous = (truth.pft.values == 1) & (truth.vegetated_fraction.values == 1)
    spring = gpp[:200, deciduous]  # days x pixels
    half = 0.5 * spring.max(axis=0)
    green_up = (spring >= half).argmax(axis=0)
    elevation = truth.elevation.values[deciduous]
    slope_per_100m = np.polyfit(elevation, green_up, 1)[0] * 100
    assert 1.0 < slope_per_100m < 8.0  # days later per 100 m, as GDD with a lapse rate gives


def test_flux_towers_are_fluxnet2015_files(demo_world):
    path, _ = demo_world
    sites = list(csv.DictReader((path / "flux" / "sites.csv").open()))
    table = list(csv.DictReader((path / "flux" / sites[0]["FILE"]).open()))
    assert len(table) == 365
    assert list(table[0]) == [
        "TIMESTAMP", "TA_F", "SW_IN_F", "VPD_F", "P_F", "NEE_VUT_REF", "NEE_VUT_REF_QC",
        "RECO_NT_VUT_REF", "GPP_NT_VUT_REF", "GPP_DT_VUT_REF",
    ]  # fmt: skip
    assert table[0]["TIMESTAMP"] == "20230101"
    gpp_all = []
    for site in sites:
        rows = list(csv.DictReader((path / "flux" / site["FILE"]).open()))
        gpp = np.array([float(r["GPP_NT_VUT_REF"]) for r in rows])
        missing = gpp == -9999
        assert 0 < missing.sum() < 0.8 * len(gpp)  # gaps, but mostly data
        month = np.array([int(r["TIMESTAMP"][4:6]) for r in rows])
        summer = gpp[~missing & (month >= 6) & (month <= 8)]
        winter = gpp[~missing & ((month <= 2) | (month == 12))]
        if summer.size and winter.size:
            assert summer.mean() > winter.mean()
        gpp_all.append(gpp[~missing])
    values = np.concatenate(gpp_all)
    assert values.min() >= -1.0 and values.max() < 25.0


def test_era5_stores_are_hourly_and_pc_like(demo_world):
    path, _ = demo_world
    items = json.loads((path / "stac" / "era5-pds.json").read_text())["features"]
    item = next(it for it in items if it["id"] == "era5-pds-2023-07-fc")
    asset = item["assets"]["air_temperature_at_2_metres"]
    assert asset["type"] == "application/vnd+zarr"
    with xr.open_dataset(path / asset["href"], **asset["xarray:open_kwargs"]) as ds:
        tair = ds["air_temperature_at_2_metres"]
        assert tair.dims == ("time0", "lat", "lon") and tair.attrs["units"] == "K"
        assert tair.sizes["time0"] == 31 * 24
        assert 280 < float(tair.mean()) < 305
        assert bool((np.diff(ds.lat.values) < 0).all())  # latitude descending, as ERA5
    rain = item["assets"]["precipitation_amount_1hour_Accumulation"]
    with xr.open_dataset(path / rain["href"], **rain["xarray:open_kwargs"]) as ds:
        values = ds["precipitation_amount_1hour_Accumulation"]
        assert values.dims[0] == "time1" and float(values.min()) >= 0.0


def test_modis_items_sit_on_the_sinusoidal_grid_not_the_utm_one(demo_world):
    path, manifest = demo_world
    items = json.loads((path / "stac" / "modis-09GA-061.json").read_text())["features"]
    props = items[0]["properties"]
    assert props["proj:wkt2"] == SINUSOIDAL_WKT
    assert props["modis:horizontal-tile"] == 28 and props["modis:vertical-tile"] == 5
    a, _, c, _, e, f = props["proj:transform"]
    assert a == pytest.approx(463.3127165279167)
    # On the tile's own grid: the origin is a whole number of pixels from the tile corner.
    tile_x0 = -20015109.354 + 28 * 1111950.5197665
    assert (c - tile_x0) / a == pytest.approx(round((c - tile_x0) / a), abs=1e-6)
    # A MODIS pixel seen in UTM is a sheared parallelogram: its west edge is not north-south.
    to_utm = Transformer.from_crs(SINUSOIDAL_WKT, manifest["crs"], always_xy=True)
    (x_top, x_bottom), _ = to_utm.transform([c, c], [f, f + 100 * e])
    assert abs(x_top - x_bottom) > 1_000  # metres over 100 pixels: >10° of shear


def _loaded(demo_server, manifest, source, when):
    catalog = load_catalog("demo").with_url(demo_server.url)
    items = search(source, _region_bbox(manifest), when, catalog=catalog)
    return items, load(items, catalog.source(source), region_geobox(manifest))


def test_hls_fmask_round_trips_through_the_loader(demo_world, demo_server):
    _path, manifest = demo_world
    catalog = load_catalog("demo").with_url(demo_server.url)
    items = search("hls-l30", _region_bbox(manifest), "2023-06-01/2023-09-30", catalog=catalog)
    item = max(
        items,
        key=lambda it: it.properties["eo:cloud_cover"] * (100 - it.properties["eo:cloud_cover"]),
    )
    from affine import Affine
    from odc.geo.geobox import GeoBox

    transform = Affine(*item.properties["proj:transform"][:6])
    native = GeoBox(item.properties["proj:shape"], transform, "EPSG:32652")
    with raise_if_dask_computes():
        cube = load([item], catalog.source("hls-l30"), native, flags=["cloud", "cloud_shadow"])
    cube = cube.isel(time=0).compute()
    with rasterio.open(item.assets["Fmask"].href) as src:
        fmask = src.read(1)
    with rasterio.open(item.assets["B04"].href) as src:
        red = src.read(1)
    expected = (fmask != 255) & (fmask & 0b11110 == 0) & (red != -9999)
    assert np.array_equal(cube.clear.values, expected)
    assert np.array_equal(cube.qa_cloud.values, (fmask != 255) & (fmask & 2 > 0))
    assert expected.mean() > 0 and (fmask & 2).any()
    assert np.allclose(cube.red.values[expected], red[expected] * 1e-4, atol=1e-6)


def test_modis_state_round_trips_and_agrees_with_hls(demo_world, demo_server):
    _path, manifest = demo_world
    catalog = load_catalog("demo").with_url(demo_server.url)
    source, geobox = catalog.source("modis-sr"), region_geobox(manifest)
    year = "2023-01-01/2023-12-31"
    items = search("modis-sr", _region_bbox(manifest), year, catalog=catalog)
    # The state flags round-trip: clear days and cloudy days over the year (red and QA only).
    clear_days = load(items, source, geobox, bands=["red"]).clear.mean(("y", "x")).compute()
    assert float(clear_days.max()) > 0.5 and float(clear_days.min()) < 0.2
    _, hls = _loaded(demo_server, manifest, "hls-l30", year)
    hls = hls.compute()
    # MODIS of the HLS dates (and the day either side, for the solar-day grouping) only.
    dates = {np.datetime64(str(t)[:10]) for t in hls.time.values}
    near = [it for it in items
            if any(abs(np.datetime64(item_time(it).date()) - d) <= np.timedelta64(1, "D")
                   for d in dates)]  # fmt: skip
    modis = load(near, source, geobox, bands=["red", "nir"]).compute()
    pairs = []
    for t in hls.time.values:
        day = np.datetime64(str(t)[:10])
        match = [i for i, m in enumerate(modis.time.values) if np.datetime64(str(m)[:10]) == day]
        if not match:
            continue
        h = ndvi(hls.sel(time=t)).coarsen(y=16, x=16, boundary="trim").mean()
        m = ndvi(modis.isel(time=match[0])).coarsen(y=16, x=16, boundary="trim").mean()
        both = np.isfinite(h.values) & np.isfinite(m.values)
        pairs += list(zip(h.values[both], m.values[both], strict=True))
    pairs = np.array(pairs)
    assert len(pairs) > 50
    r = np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1]
    # Not more: MODIS sees each day from its own view zenith (footprints up to a few blocks
    # wide, anisotropic reflectance) through its own band responses, as the real one does.
    assert r > 0.7, f"MODIS and HLS NDVI (480 m blocks, same days) correlate only {r:.2f}"


def test_hls_ndvi_follows_true_gpp(demo_world, demo_server, truth):
    _, manifest = demo_world
    _, hls = _loaded(demo_server, manifest, "hls-l30", "2023-01-01/2023-12-31")
    hls = hls.compute()
    index = ndvi(hls)
    days = index.time.dt.floor("D").values
    gpp = truth.gpp.sel(time=days).values
    seen = np.isfinite(index.values) & (truth.vegetated_fraction.values == 1)[None]
    r = np.corrcoef(index.values[seen], gpp[seen])[0, 1]
    assert seen.sum() > 50_000
    assert r > 0.6, f"NDVI-GPP correlation over clear pixels is only {r:.2f}"


def test_a_complete_world_is_reused_and_foreign_folders_are_refused(demo_world, tmp_path):
    path, manifest = demo_world
    again = build_world(path, "small", manifest["seed"])
    assert again == manifest  # reused: nothing regenerated
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a demo world"):
        build_world(foreign, "small", 0)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="size must be one of"):
        build_world(tmp_path / "w", "huge", 0)


def test_static_layers_are_pc_like(demo_world, demo_server):
    _, manifest = demo_world
    catalog = load_catalog("demo").with_url(demo_server.url)
    bbox = _region_bbox(manifest)
    dem_items = search("dem", bbox, "2021-04-22", catalog=catalog)
    assert dem_items[0].id.startswith("Copernicus_DSM_COG_10_N37_00_E127_00_DEM")
    props = dem_items[0].properties
    assert props.get("proj:code", f"EPSG:{props.get('proj:epsg')}") == "EPSG:4326"
    dem = load(dem_items, catalog.source("dem"), region_geobox(manifest)).compute()
    elevation = dem.elevation.isel(time=0)
    assert float(elevation.min()) > 0 and float(elevation.max()) < 1300
    wc_items = search("worldcover", bbox, "2021-01-01/2021-12-31", catalog=catalog)
    assert wc_items[0].id.startswith("ESA_WorldCover_10m_2021_v200_N36E126")
    assert dt.date.fromisoformat(manifest["start"]).year == 2023


@pytest.mark.parametrize("pipeline, size", [("demo.yaml", "compact"), ("demo-full.yaml", "full")])
def test_each_demo_pipeline_is_made_for_its_world(pipeline: str, size: str) -> None:
    """`make demo` runs pipelines/demo.yaml on the compact world: its grid is that world's
    region and its periods lie within the world's years (likewise demo-full.yaml, full)."""
    from unique_cube.config.pipeline import load_pipeline

    spec = load_pipeline(Path(__file__).parents[1] / "pipelines" / pipeline)
    world = make_world(size, 0)
    assert tuple(world.area_geobox(world.region).boundingbox) == tuple(spec.grid.bounds)
    periods = [spec.gpp.train, spec.downscale.train, spec.downscale.test, spec.product.period]
    for period in periods:
        assert world.size.start <= period.start <= period.end <= world.size.end

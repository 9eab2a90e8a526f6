"""Tower windows at the real scale: each tower on its own tile's grid, towers batched by tile
and block, one lazy graph that grows linearly with the towers; towers in many UTM zones and
both hemispheres, on a tile's edge and outside every item; the same values as the single
load over all towers gave where they share one grid."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pystac
import pytest
import xarray as xr
from affine import Affine
from conftest import raise_if_dask_computes
from pyproj import Transformer

from unique_cube.config.catalog import load_catalog
from unique_cube.demo import publish
from unique_cube.demo.tower_bed import BedTile, build_tower_bed, tower_tiles
from unique_cube.errors import LoadError
from unique_cube.gpp.features import FEATURE_INDICES
from unique_cube.gpp.tower_windows import grid_window, item_grid, tower_batches, tower_features
from unique_cube.grid import lonlat_pixels, utm_crs
from unique_cube.inputs.cube import load
from unique_cube.inputs.flux import read_sites
from unique_cube.inputs.indices import add_indices
from unique_cube.inputs.search import search

CATALOG = load_catalog("demo")
HLS = CATALOG.source("hls-l30")
MODIS = CATALOG.source("modis-sr")

#: Towers in five UTM zones, three north (EPSG:326zz) and two south (EPSG:327zz); FR-Two
#: stands 600 m from FR-One, inside FR-One's tile (it has none of its own).
ZONE_SITES = pd.DataFrame({
    "site": ["FR-One", "FR-Two", "US-Col", "AU-Syd", "BR-Bra", "KR-Gwa"],
    "lon": [5.71, 5.7175, -105.55, 150.72, -47.88, 127.15],
    "lat": [45.21, 45.21, 40.03, -33.62, -15.79, 37.75],
    "igbp": ["DBF", "DBF", "ENF", "EBF", "SAV", "MF"],
})  # fmt: skip
ZONE_DATES = [dt.date(2023, 6, 1), dt.date(2023, 6, 2), dt.date(2023, 6, 3)]


def _items(folder: Path, collection: str) -> list[pystac.Item]:
    """A bed's items as the server hands them (absolute ``file://`` hrefs)."""
    features = json.loads((folder / "stac" / f"{collection}.json").read_text())["features"]
    items = [pystac.Item.from_dict(f) for f in features]
    for item in items:
        for asset in item.assets.values():
            asset.href = (folder / asset.href).as_uri()
    return items


@pytest.fixture(scope="module")
def zone_bed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six towers in five zones: a tile of 64 px each (FR-Two in FR-One's), each tile seen
    on two of three days, MODIS on two days; a fifth of the pixels cloudy."""
    folder = tmp_path_factory.mktemp("zone-bed")
    tiles = tower_tiles(ZONE_SITES[ZONE_SITES["site"] != "FR-Two"])
    build_tower_bed(folder, ZONE_SITES, ZONE_DATES, ZONE_DATES[:2], tiles=tiles, hls_every=2,
                    cloud=0.2, seed=3, workers=1)  # fmt: skip
    return folder


#: Two abutting 64-px tiles in UTM zone 33N and a tower in the last column of the western one.
EDGE_X0, EDGE_Y0 = 450_000.0, 5_540_010.0
EDGE_TILES = [
    BedTile("T33UWA", "EPSG:32633", Affine(30, 0, EDGE_X0, 0, -30, EDGE_Y0), (64, 64)),
    BedTile("T33UWB", "EPSG:32633", Affine(30, 0, EDGE_X0 + 64 * 30, 0, -30, EDGE_Y0), (64, 64)),
]


def _edge_sites() -> pd.DataFrame:
    x, y = EDGE_X0 + 63.5 * 30, EDGE_Y0 - 30.5 * 30
    lon, lat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(x, y)
    return pd.DataFrame({"site": ["CZ-Edge"], "lon": [lon], "lat": [lat], "igbp": ["ENF"]})


@pytest.fixture(scope="module")
def edge_bed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("edge-bed")
    build_tower_bed(folder, _edge_sites(), ZONE_DATES[:1], ZONE_DATES[:1], tiles=EDGE_TILES,
                    cloud=0.0, workers=1)  # fmt: skip
    return folder


def _direct(items: list, source, lon: float, lat: float, window: int = 3) -> xr.Dataset:
    """One tower's window means from a load of the items holding it, on their grid: the
    per-tower reference."""
    from shapely.geometry import Point, shape

    here = [it for it in items if shape(it.geometry).contains(Point(lon, lat))]
    grid = item_grid(here[0])
    rows, cols = lonlat_pixels(lon, lat, grid)
    geobox, r, c = grid_window(grid, rows, cols, margin=window)
    half = window // 2
    cube = load(here, source, geobox).isel(y=slice(r[0] - half, r[0] + half + 1),
                                           x=slice(c[0] - half, c[0] + half + 1))  # fmt: skip
    cube = add_indices(cube, list(FEATURE_INDICES)).compute()
    out = xr.Dataset({name: cube[name].mean(("y", "x")) for name in FEATURE_INDICES})
    out["n_clear"] = cube["clear"].sum(("y", "x"))
    # odc-stac's solar day of each time step (its first item's time, whole hours of longitude)
    days = (pd.DatetimeIndex(out["time"].values) + pd.Timedelta(hours=int(lon / 15))).normalize()
    return out.assign_coords(time=days)


@pytest.mark.integration
def test_towers_in_many_zones_and_both_hemispheres(zone_bed: Path) -> None:
    sites = ZONE_SITES.sample(frac=1.0, random_state=4).reset_index(drop=True)
    for collection, source in (("hls2-l30", HLS), ("modis-09GA-061", MODIS)):
        items = _items(zone_bed, collection)
        with raise_if_dask_computes():
            features = tower_features(items, source, sites)
        assert list(features["site"].values) == list(sites["site"])  # the order given
        assert features.attrs["source_collection"] == source.collection
        values = features.compute()
        for site in sites.itertuples():
            direct = _direct(items, source, site.lon, site.lat)
            at = values.sel(site=site.site)
            # the tower's own days hold its window; the others' days are no data at it
            mine = at.sel(time=direct["time"])
            np.testing.assert_array_equal(mine["n_clear"], direct["n_clear"])
            for name in FEATURE_INDICES:
                np.testing.assert_allclose(mine[name], direct[name], rtol=1e-6, equal_nan=True)
            others = at.drop_sel(time=direct["time"])
            assert (others["n_clear"] == 0).all() and others["ndvi"].isnull().all()
        assert int(values["n_clear"].max()) == 9 and float(values["ndvi"].count()) > 0
    # Each tower's HLS window is cut on its own zone's grid, north or south.
    batches = tower_batches(_items(zone_bed, "hls2-l30"), sites)
    crs = {sites["site"][t]: b.geobox.crs.epsg for b in batches for t in b.sites}
    assert crs == {s.site: int(utm_crs(s.lon, s.lat)[5:]) for s in sites.itertuples()}
    assert {crs["AU-Syd"], crs["BR-Bra"]} == {32756, 32723}
    assert len(batches) == 5  # FR-One and FR-Two share a tile and a block: one load


@pytest.mark.integration
def test_a_window_across_a_tile_edge_is_filled_from_the_neighbouring_tile(
    edge_bed: Path,
) -> None:
    sites = _edge_sites()
    items = _items(edge_bed, "hls2-l30")
    (batch,) = tower_batches(items, sites)
    # The tower stands in the western tile: its window is cut on that tile's grid.
    assert batch.geobox.transform.c < EDGE_X0 + 64 * 30 < batch.geobox.transform.c + 9 * 30
    both = tower_features(items, HLS, sites).compute()
    assert (both["n_clear"] == 9).all() and both["ndvi"].notnull().all()
    western = [it for it in items if ".T33UWA." in it.id]
    alone = tower_features(western, HLS, sites).compute()
    assert (alone["n_clear"] == 6).all()  # the column beyond the edge has no data
    # The eastern column is the neighbour's own pixels: the mean moves by their share.
    assert not np.allclose(alone["ndvi"], both["ndvi"])


@pytest.mark.integration
def test_a_tower_outside_every_item_is_named(zone_bed: Path) -> None:
    far = pd.concat([ZONE_SITES, pd.DataFrame({"site": ["XX-Sea"], "lon": [-30.0],
                                               "lat": [40.0], "igbp": ["WAT"]})])  # fmt: skip
    with pytest.raises(LoadError, match=r"site XX-Sea \(40.0000 N, -30.0000 E\) lies outside "
                                        r"every hls2-l30 item"):  # fmt: skip
        tower_features(_items(zone_bed, "hls2-l30"), HLS, far)
    with pytest.raises(LoadError, match="no hls2-l30 items for the towers"):
        tower_features([], HLS, ZONE_SITES)


def _one_load(items: list, source, sites: pd.DataFrame, window: int = 3) -> xr.Dataset:
    """The features as they were made before towers were batched: one load over the
    towers' bounding box on the first item's grid, windows cut from it (the reference of
    the regression; its time steps are the first item's times, here made days)."""
    grid = item_grid(items[0])
    rows, cols = lonlat_pixels(sites["lon"], sites["lat"], grid)
    geobox, rows, cols = grid_window(grid, rows, cols, margin=window)
    cube = load(items, source, geobox, chunks={"time": 1, "y": 512, "x": 512})
    offsets = np.arange(-(window // 2), window // 2 + 1)
    win_rows = (rows[:, None, None] + offsets[None, :, None]).repeat(window, axis=2)
    win_cols = (cols[:, None, None] + offsets[None, None, :]).repeat(window, axis=1)
    dims = ("site", "pixel")
    index = {"y": xr.DataArray(win_rows.reshape(len(sites), -1), dims=dims),
             "x": xr.DataArray(win_cols.reshape(len(sites), -1), dims=dims)}  # fmt: skip
    windows = add_indices(cube.isel(index), list(FEATURE_INDICES)).compute()
    out = xr.Dataset({name: windows[name].mean("pixel") for name in FEATURE_INDICES})
    out["n_clear"] = windows["clear"].sum("pixel").astype("int16")
    out = out.drop_vars([c for c in out.coords if c != "time"])
    days = pd.DatetimeIndex(out["time"].values).normalize()
    return out.assign_coords(time=days, site=sites["site"].to_numpy())


def _assert_same(new: xr.Dataset, old: xr.Dataset) -> None:
    assert list(new["time"].values) == list(old["time"].values)
    assert list(new["site"].values) == list(old["site"].values)
    assert new["n_clear"].dtype == np.int16
    np.testing.assert_array_equal(new["n_clear"], old["n_clear"])
    for name in FEATURE_INDICES:
        np.testing.assert_allclose(new[name], old[name], rtol=1e-6, equal_nan=True)


def test_same_values_as_one_load_on_the_test_world(stac_world) -> None:
    """Towers sharing one grid (the test world's HLS scenes, its MODIS tile): the batched
    windows equal those cut from one load, its cloud and water included."""
    geobox = stac_world.geobox
    to_lonlat = Transformer.from_crs(geobox.crs.to_wkt(), "EPSG:4326", always_xy=True)
    pixels = [(8, 8), (30, 30), (12, 33), (35, 5)]  # in the cloud box, the water box, clear
    xs, ys = zip(*(geobox.transform * (c + 0.5, r + 0.5) for r, c in pixels), strict=True)
    lon, lat = to_lonlat.transform(xs, ys)
    sites = pd.DataFrame({"site": [f"T-{i}" for i in range(4)], "lon": lon, "lat": lat})
    for key in ("hls-l30", "modis-nbar"):
        items = search(key, stac_world.bbox, "2023-05-01/2023-05-31", catalog=stac_world.catalog)
        source = stac_world.catalog.source(key)
        new = tower_features(items, source, sites).compute()
        _assert_same(new, _one_load(items, source, sites))
    assert int(new["n_clear"].max()) > 0


def test_same_values_as_one_load_on_the_demo_world(demo_world, demo_server) -> None:
    """The small demo world's ten towers, spread over its tile in several batches."""
    catalog = load_catalog("demo").with_url(demo_server.url)
    sites = read_sites(demo_world[0] / "flux" / "sites.csv")
    for key, period, block in (
        ("hls-l30", "2023-05-01/2023-08-31", 256),
        ("modis-sr", "2023-06-01/2023-06-20", 32),
    ):
        items = search(key, (127.0, 37.4, 127.6, 37.9), period, catalog=catalog)
        source = catalog.source(key)
        assert len(tower_batches(items, sites, block=block)) > 1
        new = tower_features(items, source, sites, chunks=block).compute()
        _assert_same(new, _one_load(items, source, sites))


# ------------------------------------------------------------------ batches, without reads


def _fake_items(tiles: list[BedTile], days: list[dt.date]) -> list[pystac.Item]:
    """HLS items of ``tiles`` on ``days`` whose assets are never read."""
    hrefs = {key: f"file:///nowhere/{key}.tif" for key, _, _ in publish.HLS_ASSETS.values()}
    hrefs["Fmask"] = "file:///nowhere/Fmask.tif"
    return [
        pystac.Item.from_dict(publish.hls_item(tile.name, dt.datetime.combine(day, dt.time(2)),
                                               "landsat-9", 1.0, hrefs, tile.crs,
                                               tile.transform, tile.shape))
        for tile in tiles for day in days
    ]  # fmt: skip


def _tile(name: str, x0: float, y0: float, size: int = 3660) -> BedTile:
    return BedTile(name, "EPSG:32652", Affine(30, 0, x0, 0, -30, y0), (size, size))


def _sites_at(points: list[tuple[float, float]], crs: str = "EPSG:32652") -> pd.DataFrame:
    x, y = np.array(points, dtype="float64").T
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x, y)
    return pd.DataFrame({"site": [f"S{i}" for i in range(len(points))], "lon": lon, "lat": lat})


def test_towers_are_batched_by_tile_and_block() -> None:
    tile = _tile("T52SCG", 300_000.0, 4_200_000.0)
    items = _fake_items([tile], [dt.date(2023, 6, 1)])
    # Two towers 300 m apart, one 30 km away, and a chain of three 480 m apart whose windows
    # (pixel columns 1023, 1039 and 1055) each share a 16-pixel block with the next.
    points = [(310_005, 4_190_005), (310_305, 4_190_005), (340_005, 4_160_005)]
    points += [(300_000 + (col + 0.5) * 30, 4_169_985) for col in (1023, 1039, 1055)]
    sites = _sites_at(points)
    batches = tower_batches(items, sites, block=512)
    assert sorted(b.sites for b in batches) == [(0, 1), (2,), (3, 4, 5)]
    # Each load spans its towers' windows and a margin, on the tile's 30 m lattice.
    pair = next(b for b in batches if b.sites == (0, 1))
    assert pair.geobox.shape == (1 + 2 * 3, 11 + 2 * 3)
    assert pair.geobox.crs.epsg == 32652 and pair.geobox.transform.c % 30 == 0
    np.testing.assert_array_equal(pair.rows, [3, 3])
    np.testing.assert_array_equal(pair.cols, [3, 13])
    # With blocks of 16 pixels the chain spans more than a block: a load per block.
    small = tower_batches(items, sites, block=16)
    assert sorted(b.sites for b in small) == [(0,), (1,), (2,), (3,), (4,), (5,)]
    assert max(b.geobox.shape[1] for b in small) == 1 + 2 * 3


def test_a_tower_in_two_overlapping_tiles_takes_the_one_it_is_deepest_in() -> None:
    west = _tile("T52SCG", 300_000.0, 4_200_000.0)
    # 109 800 m wide, they overlap by 9 825 m; the eastern one's lattice is 15 m off.
    east = _tile("T52SDG", 399_975.0, 4_200_000.0)
    items = _fake_items([west, east], [dt.date(2023, 6, 1)])
    sites = _sites_at([(401_005, 4_150_005), (408_005, 4_150_005)])
    lattice = {b.sites[0]: b.geobox.transform.c % 30 for b in tower_batches(items, sites)}
    # 35 pixels inside the eastern tile, 293 inside the western one: the western grid;
    # 268 pixels inside the eastern tile, 59 inside the western one: the eastern grid.
    assert lattice == {0: 0.0, 1: 15.0}


def test_the_graph_grows_linearly_with_towers_and_stays_lazy() -> None:
    """Towers 20 km apart across zones: a read task per tower and a few weeks, a fixed
    number for the decoding, whatever the distance between them."""
    days = [dt.date(2023, 6, 1) + dt.timedelta(days=d) for d in range(0, 40, 8)]

    def tasks(n: int) -> int:
        lon = np.linspace(-120, 140, n)
        sites = pd.DataFrame({"site": [f"S{i}" for i in range(n)], "lon": lon, "lat": 45.0})
        items = _fake_items(tower_tiles(sites), days)
        with raise_if_dask_computes():
            features = tower_features(items, HLS, sites)
        # each tower's days are its local days: one or two per date across the zones
        assert features.sizes["site"] == n and features.sizes["time"] <= 2 * len(days)
        return len(features.__dask_graph__())

    small, medium, large = tasks(4), tasks(8), tasks(32)
    per_tower = (large - medium) / 24
    assert per_tower == (medium - small) / 4 == 1  # one read task per tower and 5 days

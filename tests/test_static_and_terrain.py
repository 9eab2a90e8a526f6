"""Slope/aspect, the GPP models' terrain terms at grids and towers, land-cover fractions; the
demo world's relief and land cover."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import raise_if_dask_computes

from unique_cube.config import load_catalog
from unique_cube.demo.check import region_geobox
from unique_cube.demo.terrain import PFT, PFT_TO_WORLDCOVER, make_terrain
from unique_cube.errors import ConfigError, LoadError
from unique_cube.gpp.features import TERRAIN
from unique_cube.inputs.static import class_fractions, slope_aspect
from unique_cube.inputs.terrain import coarse_terrain, grid_terrain, terrain_terms, tower_terrain
from unique_cube.inputs.weather import weather_for


def plane(dz_dx: float, dz_dy: float, n: int = 8, pixel: float = 30.0) -> xr.DataArray:
    # north-up grid: y (northing) decreases with the row index
    x = 500000 + pixel * (np.arange(n) + 0.5)
    y = 4000000 - pixel * (np.arange(n) + 0.5)
    z = 100 + dz_dx * (x[None, :] - x[0]) + dz_dy * (y[:, None] - y[0])
    return xr.DataArray(z.astype("float32"), coords={"y": y, "x": x}, dims=("y", "x"))


@pytest.mark.parametrize(
    ("dz_dx", "dz_dy", "aspect"),
    [(0.0, 1.0, 180.0), (0.0, -1.0, 0.0), (1.0, 0.0, 270.0), (-1.0, 0.0, 90.0)],
)
def test_slope_and_aspect_of_planes(dz_dx: float, dz_dy: float, aspect: float) -> None:
    # rising northwards faces south (180°); rising eastwards faces west (270°)
    terrain = slope_aspect(plane(dz_dx, dz_dy))
    np.testing.assert_allclose(terrain["slope"], 45.0, rtol=1e-5)
    np.testing.assert_allclose(terrain["aspect"], aspect, atol=1e-3)


def test_flat_ground_has_no_aspect_and_stays_lazy() -> None:
    flat = plane(0.0, 0.0).chunk({"y": 4, "x": 4})
    with raise_if_dask_computes():
        terrain = slope_aspect(flat)
    assert float(terrain["slope"].max()) == 0.0
    assert terrain["aspect"].isnull().all()


def test_class_fractions_of_blocks() -> None:
    lc = np.array(
        [[10, 10, 10, 40, 40, 40], [10, 10, 10, 40, 40, 80], [10, 10, 40, 40, 0, 0]],
        dtype="float32",
    )
    da = xr.DataArray(lc, dims=("y", "x"))
    fractions = class_fractions(da, {10: "tree_cover", 40: "cropland", 80: "water"}, factor=3)
    assert fractions.sizes == {"class": 3, "y": 1, "x": 2}
    left = fractions.isel(x=0, y=0).values
    np.testing.assert_allclose(left, [8 / 9, 1 / 9, 0.0])
    right = fractions.isel(x=1, y=0).values  # two no-data pixels do not count
    np.testing.assert_allclose(right, [0.0, 6 / 7, 1 / 7])
    np.testing.assert_allclose(fractions.sum("class"), 1.0)


def test_class_fractions_needs_aligned_blocks() -> None:
    da = xr.DataArray(np.zeros((4, 6), "float32"), dims=("y", "x"))
    with pytest.raises(ConfigError, match=r"\(4 x 6\) is not a whole number of 3 x 3 blocks"):
        class_fractions(da, {10: "tree_cover"}, factor=3)


@pytest.fixture(scope="module")
def terrain():
    return make_terrain((200, 200), np.random.default_rng(7))


def test_relief_is_mountainous_with_valleys(terrain) -> None:
    elevation = terrain.elevation
    assert elevation.shape == (200, 200) and elevation.dtype == np.float32
    assert 0 <= elevation.min() < 100 and 1000 < elevation.max() <= 1200
    gy, gx = np.gradient(elevation, 30.0)
    slope = np.degrees(np.arctan(np.hypot(gx, gy)))
    assert 5 < np.median(slope) < 25  # hills, not a plain and not cliffs
    low = elevation < np.percentile(elevation, 20)
    assert np.median(slope[low]) < np.median(slope[~low])  # valley floors are flatter


def test_land_cover_follows_terrain_and_is_patchy(terrain) -> None:
    pft = terrain.pft_10m
    assert pft.shape == (600, 600)
    assert set(np.unique(pft)) <= set(PFT)
    values, counts = np.unique(pft, return_counts=True)
    share = {PFT[v]: c / pft.size for v, c in zip(values, counts, strict=True)}
    forest = (
        share.get("deciduous_broadleaf", 0)
        + share.get("evergreen_needleleaf", 0)
        + share.get("mixed_forest", 0)
    )
    assert 0.5 < forest < 0.9
    assert share.get("cropland", 0) + share.get("paddy_rice", 0) > 0.05
    # crops lie lower than needleleaf forest
    elevation_10m = np.repeat(np.repeat(terrain.elevation, 3, axis=0), 3, axis=1)
    crops = np.isin(pft, [4, 5])
    assert np.median(elevation_10m[crops]) < np.median(elevation_10m[pft == 2])
    # 510 m blocks (51 x 51 px at 10 m) are usually mixed
    blocks = pft[:561, :561].reshape(11, 51, 11, 51).transpose(0, 2, 1, 3).reshape(121, -1)
    dominant = np.array([np.bincount(b).max() / b.size for b in blocks])
    assert np.mean(dominant < 0.9) > 0.3


def test_worldcover_mapping_and_determinism(terrain) -> None:
    wc = terrain.worldcover_10m
    assert set(np.unique(wc)) <= set(PFT_TO_WORLDCOVER.values())
    assert (wc[terrain.pft_10m == 5] == 40).all()  # paddy rice is WorldCover cropland
    again = make_terrain((200, 200), np.random.default_rng(7))
    np.testing.assert_array_equal(again.elevation, terrain.elevation)
    np.testing.assert_array_equal(again.pft_10m, terrain.pft_10m)
    other = make_terrain((200, 200), np.random.default_rng(8))
    assert not np.array_equal(other.elevation, terrain.elevation)


def test_terrain_terms_of_a_south_facing_plane() -> None:
    terms = terrain_terms(plane(0.0, 0.2))  # higher in the north: falls towards the south
    inner = terms.isel(y=slice(1, -1), x=slice(1, -1))
    slope = np.arctan(0.2)
    np.testing.assert_allclose(inner["cos_slope"], np.cos(slope), rtol=1e-5)
    np.testing.assert_allclose(inner["southness"], np.sin(slope), rtol=1e-5)
    flat = terrain_terms(plane(0.0, 0.0))
    assert float(np.abs(flat["southness"]).max()) == 0.0


@pytest.mark.integration
def test_grid_and_tower_terrain_agree_on_the_demo_world(demo_world, demo_server) -> None:
    manifest = demo_world[1]
    catalog = load_catalog("demo").with_url(demo_server.url)
    geobox = region_geobox(manifest)
    daily = weather_for(catalog, "era5", geobox, "2023-06-01", "2023-06-03", 9)
    grid = grid_terrain(catalog, geobox, daily).compute()
    assert set(grid.data_vars) == {*TERRAIN, "latitude", "flat"}
    assert not bool(grid["flat"].any())  # the DEM covers the region: no flat fallback
    assert all(bool(np.isfinite(grid[v]).all()) for v in grid.data_vars)
    # The reanalysis's elevation is smooth: between the grid's lowest and highest pixels,
    # and much less varied than the terrain.
    assert float(grid["elevation_reference"].std()) < 0.5 * float(grid["elevation"].std())
    coarse = coarse_terrain(grid, 16)
    assert coarse["elevation"].shape == (geobox.shape[0] // 16, geobox.shape[1] // 16)
    np.testing.assert_allclose(float(coarse["elevation"].mean()),
                               float(grid["elevation"].mean()), rtol=1e-4)  # fmt: skip

    # Towers at three pixels of the grid: their 3-pixel windows are the grid's means there
    # (up to the DEM's resampling, done separately for a tower's patch: a few m on 45° slopes).
    from pyproj import Transformer

    rows, cols = np.array([40, 80, 120]), np.array([30, 100, 60])
    xs, ys = geobox.coords["x"].values[cols], geobox.coords["y"].values[rows]
    lon, lat = Transformer.from_crs(geobox.crs.to_wkt(), "EPSG:4326",
                                    always_xy=True).transform(xs, ys)  # fmt: skip
    sites = pd.DataFrame({"site": ["A", "B", "C"], "lat": lat, "lon": lon})
    towers = tower_terrain(catalog, sites, daily, {"landsat": 90.0})["landsat"]
    for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
        window = grid.isel(y=slice(r - 1, r + 2), x=slice(c - 1, c + 2))
        assert float(towers["elevation"][i]) == pytest.approx(float(window["elevation"].mean()),
                                                              abs=5.0)  # fmt: skip
        assert float(towers["cos_slope"][i]) == pytest.approx(float(window["cos_slope"].mean()),
                                                              abs=0.06)  # fmt: skip
        assert float(towers["elevation_reference"][i]) == pytest.approx(
            float(grid["elevation_reference"][r, c]), abs=1.0
        )

    far = pd.DataFrame({"site": ["Nowhere"], "lat": [10.0], "lon": [100.0]})
    with pytest.raises(LoadError, match=r"Nowhere|no DEM item"):
        tower_terrain(catalog, far, daily, {"landsat": 90.0})

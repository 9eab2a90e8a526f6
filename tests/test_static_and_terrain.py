"""Slope/aspect and land-cover fractions; the demo world's relief and land cover."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from conftest import raise_if_dask_computes

from unique_cube.demo.terrain import PFT, PFT_TO_WORLDCOVER, make_terrain
from unique_cube.errors import ConfigError
from unique_cube.inputs.static import class_fractions, slope_aspect


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

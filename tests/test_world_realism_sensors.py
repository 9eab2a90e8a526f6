"""The demo world's sensors and towers are not easier than the real ones (issue 19): MODIS
footprints that grow with Terra's view zenith, gridding artefacts, anisotropy and band noise;
Fmask that misses thin cloud and takes bright ground for cloud; towers over mixed fetches."""

from __future__ import annotations

import csv
import datetime as dt
import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr
from scipy import sparse

from unique_cube.config.catalog import load_catalog
from unique_cube.demo.hls import FmaskSkill, fmask_clear, simulate_hls_scene
from unique_cube.demo.modis import GRID_OFFSETS, ModisFootprint, ModisGrid, simulate_modis_day
from unique_cube.demo.sky import CloudSky, SkyMasks
from unique_cube.demo.terra import TERRA_REPEAT, modis_anisotropy, terra_cycle_day, terra_view
from unique_cube.demo.towers import TowerRecorder
from unique_cube.demo.vegetation import BANDS
from unique_cube.demo.weather import make_reanalysis
from unique_cube.demo.world import FETCH_PURITY, make_world, tower_footprint
from unique_cube.inputs.cube import decode_qa

LAT, LON = 37.7, 127.3


@pytest.fixture(scope="module")
def small_world():
    return make_world("small", 5)


@pytest.fixture(scope="module")
def compact_world():
    return make_world("compact", 2)


@pytest.fixture(scope="module")
def grid(small_world):
    return ModisGrid(small_world)


def _spread_along(footprint: ModisFootprint, grid: ModisGrid, axis: np.ndarray) -> float:
    """Median weighted standard deviation (m) of the blocks each observation sees, along a
    ground direction."""
    centres = []
    for _first, x0, y0, ny, nx in grid._blocks:
        rows, cols = np.divmod(np.arange(ny * nx), nx)
        step = grid.BLOCK * 30.0
        centres.append(np.stack([x0 + cols * step, y0 - rows * step]))
    along = axis @ np.concatenate(centres, axis=1)
    psf = footprint.psf
    mean = psf @ along
    var = psf @ along**2 - mean**2
    return float(np.median(np.sqrt(np.maximum(var, 0))))


def test_terra_sees_a_place_from_nadir_to_the_swath_edge_over_16_days():
    views = [terra_view(k, LAT, LON) for k in range(TERRA_REPEAT)]
    zeniths = [v.view_zenith for v in views]
    assert min(zeniths) < 10.0 and 55.0 < max(zeniths) < 66.0
    sides = {v.cross_track > 0 for v in views if v.view_zenith > 20}
    assert sides == {True, False}  # east and west of the track
    # Terra passes in the morning, within an hour of 10:20 local solar time.
    assert all(9.3 < v.utc_hours + LON / 15 < 11.4 for v in views)
    day = dt.date(2023, 5, 1)
    later = day + dt.timedelta(days=TERRA_REPEAT)
    assert terra_cycle_day(day) == terra_cycle_day(later) != terra_cycle_day(day + dt.timedelta(1))


def test_modis_footprint_grows_with_view_zenith(grid):
    views = {k: terra_view(k, grid.lat, grid.lon) for k in range(TERRA_REPEAT)}
    nadir = min(views, key=lambda k: views[k].view_zenith)
    edge = max(views, key=lambda k: views[k].view_zenith)
    near, far = grid.footprint(nadir), grid.footprint(edge)
    heading = np.radians(views[edge].heading)
    scan = np.array([np.cos(heading), -np.sin(heading)])
    track = np.array([np.sin(heading), np.cos(heading)])
    cos_edge = np.cos(np.radians(views[edge].view_zenith))
    scan_ratio = _spread_along(far, grid, scan) / _spread_along(near, grid, scan)
    track_ratio = _spread_along(far, grid, track) / _spread_along(near, grid, track)
    assert scan_ratio == pytest.approx(1 / cos_edge**2, rel=0.3)  # ~4x along scan
    assert track_ratio == pytest.approx(1 / cos_edge, rel=0.3)  # ~2x along track
    # Near nadir almost every cell has its own observation; at the edge cells share them.
    assert near.n_obs > 0.9 * near.valid.sum()
    assert far.n_obs < 0.5 * far.valid.sum()
    # A wide footprint leaves fewer cells wholly inside the world.
    assert far.valid.sum() < near.valid.sum()
    assert np.allclose(np.asarray(far.psf.sum(axis=1)).ravel(), 1.0, atol=1e-4)


def test_gridding_offset_moves_the_observations_and_is_cached(grid):
    a, b = grid.footprint(3, 0), grid.footprint(3, 1)
    assert len(GRID_OFFSETS) >= 2
    assert a.psf.shape != b.psf.shape or (a.psf != b.psf).nnz > 0
    assert grid.footprint(3, 0) is a
    again = ModisGrid(make_world("small", 5)).footprint(3, 1)
    assert np.array_equal(again.cell_obs, b.cell_obs)
    assert (again.psf != b.psf).nnz == 0


def test_brdf_backscatter_is_brighter_than_forward_scatter():
    sun = (40.0, 150.0)
    base = terra_view(0, LAT, LON)
    back = replace(base, view_zenith=50.0, view_azimuth=150.0)  # the sun at the sensor's back
    forward = replace(base, view_zenith=50.0, view_azimuth=330.0)
    nadir = replace(base, view_zenith=0.0)
    nir = BANDS.index("nir")
    assert np.allclose(modis_anisotropy(nadir, sun), 1.0)
    b, f = modis_anisotropy(back, sun), modis_anisotropy(forward, sun)
    assert (b > 1.0).all() and (f < b).all()
    assert b[1, nir] != b[0, nir]  # forest and open land differ
    # Scenes differ a little around the kernel shape.
    rng = np.random.default_rng(0)
    assert not np.allclose(modis_anisotropy(back, sun, rng), b)


def _identity_footprint(n: int) -> ModisFootprint:
    return ModisFootprint(
        terra_view(0, LAT, LON), sparse.identity(n, format="csr"), np.arange(n), (2, n // 2)
    )


def test_modis_bands_differ_from_hls_and_swir_is_noisier():
    n = 20_000
    footprint = _identity_footprint(n)
    zero = np.zeros(n)

    def seen(rho):
        bands, state = simulate_modis_day(
            footprint, rho[:, None] * np.ones(n), zero, zero, zero, zero, zero, zero,
            np.random.default_rng(1),
        )  # fmt: skip
        assert state.shape == (1, n // 4) and (state & 3 == 0).all()  # all clear
        return {k: v.astype(float) * 1e-4 for k, v in bands.items()}

    grey = seen(np.full(len(BANDS), 0.1))
    std = {k: v.std() for k, v in grey.items()}
    assert std["sur_refl_b07_1"] > std["sur_refl_b06_1"] > std["sur_refl_b02_1"]
    assert (
        std["sur_refl_b02_1"] > std["sur_refl_b01_1"]
        and std["sur_refl_b03_1"] > std["sur_refl_b01_1"]
    )
    assert all(abs(v.mean() - 0.1) < 5e-4 for v in grey.values())  # grey stays grey
    # Vegetation is not the OLI values: the band responses differ a little.
    leaf = seen(np.array([0.02, 0.025, 0.06, 0.03, 0.42, 0.2, 0.09]))
    assert leaf["sur_refl_b04_1"].mean() > 0.06 + 1e-3  # the narrower green peak
    assert leaf["sur_refl_b01_1"].mean() > 0.03 + 1e-3  # red reaching towards green
    assert abs(leaf["sur_refl_b02_1"].mean() - 0.42) < 0.01


def _stack(rho, cloud, thickness, *, shadow=None, caster=None, snow=None):
    shape = cloud.shape
    zero = np.zeros(shape, dtype=bool)
    shadow = zero if shadow is None else shadow
    sky = SkyMasks(
        cloud=cloud,
        shadow=shadow,
        adjacent=zero,
        thickness=np.where(cloud, thickness, 0.0).astype("float32"),
        shadow_depth=np.where(shadow, 0.5, 0.0).astype("float32"),
        thin=zero,
        fmask_caster=np.zeros(shape, "float32") if caster is None else caster,
    )
    snow = np.zeros(shape, "float32") if snow is None else snow
    return [([(0, slice(0, shape[0]))], rho, snow, zero, sky)]


def _vegetation(shape):
    return np.broadcast_to(
        np.array([0.02, 0.025, 0.06, 0.03, 0.42, 0.2, 0.09], "float32")[:, None, None],
        (len(BANDS), *shape),
    ).copy()


def _region(world, fmask):
    return fmask[world.region.slices]


def test_fmask_misses_thin_cloud_and_brightens_it(small_world):
    shape = small_world.region.shape
    cloud = np.zeros(shape, dtype=bool)
    cloud[20:60, 20:60] = True  # a thick cloud
    cloud[100:140, 100:140] = True  # a thin one, far from it
    thickness = np.where(np.arange(shape[0])[:, None] < 80, 0.8, 0.05) * np.ones(shape)
    skill = FmaskSkill(thin=0.1, height_error=1.0, bright=1.0)
    scene = simulate_hls_scene(
        small_world, _stack(_vegetation(shape), cloud, thickness), dt.datetime(2023, 6, 1),
        "landsat-8", np.random.default_rng(0), skill,
    )  # fmt: skip
    fmask = _region(small_world, scene.fmask)
    clear = fmask_clear(fmask)
    assert not clear[20:60, 20:60].any() and (fmask[20:60, 20:60] & 2).all()
    assert clear[100:140, 100:140].all()  # missed: flagged clear
    assert not clear[17:20, 30].any() and clear[10, 30]  # the buffer is 3 pixels
    red = scene.bands["red"][small_world.region.slices] * 1e-4
    assert red[110:130, 110:130].mean() > 0.03 + 0.01  # contaminated, not cloud-white
    assert red[110:130, 110:130].mean() < 0.2
    assert scene.cloudy_pixels == cloud.sum()
    assert scene.omitted_pixels == 40 * 40
    again = simulate_hls_scene(
        small_world, _stack(_vegetation(shape), cloud, thickness), dt.datetime(2023, 6, 1),
        "landsat-8", np.random.default_rng(0), skill,
    )  # fmt: skip
    assert np.array_equal(again.fmask, scene.fmask)
    assert np.array_equal(again.bands["red"], scene.bands["red"])


def test_fmask_takes_bright_ground_for_cloud_in_some_scenes(small_world):
    shape = small_world.region.shape
    rho = _vegetation(shape)
    rho[:, 40:80, 40:80] = np.array([0.12, 0.13, 0.15, 0.17, 0.23, 0.26, 0.22])[:, None, None]
    snow = np.zeros(shape, "float32")
    none = np.zeros(shape, dtype=bool)
    flagged = []
    for bright in (0.14, 0.3):
        skill = FmaskSkill(thin=0.1, height_error=1.0, bright=bright)
        scene = simulate_hls_scene(
            small_world, _stack(rho, none, 0.0, snow=snow), dt.datetime(2023, 6, 1),
            "landsat-8", np.random.default_rng(0), skill,
        )  # fmt: skip
        fmask = _region(small_world, scene.fmask)
        flagged.append(((fmask[40:80, 40:80] & 2) > 0).mean())
        assert not (fmask[100:, 100:] & 2).any()  # dark vegetation: never
        assert scene.cloudy_pixels == 0 == scene.omitted_pixels
    assert flagged[0] > 0.8 and flagged[1] == 0.0


def test_fmask_shadow_goes_where_fmask_thinks_the_cloud_height_is(small_world):
    shape = small_world.region.shape
    none = np.zeros(shape, dtype=bool)
    shadow = none.copy()
    shadow[50:70, 50:70] = True
    caster = np.zeros(shape, "float32")
    caster[50:70, 80:100] = 0.6  # projected 30 pixels off
    skill = FmaskSkill(thin=0.1, height_error=1.5, bright=1.0)
    scene = simulate_hls_scene(
        small_world, _stack(_vegetation(shape), none, 0.0, shadow=shadow, caster=caster),
        dt.datetime(2023, 6, 1), "landsat-8", np.random.default_rng(0), skill,
    )  # fmt: skip
    fmask = _region(small_world, scene.fmask)
    assert (fmask[50:70, 80:100] & 8).all()
    assert fmask_clear(fmask[50:70, 50:70]).all()
    assert scene.omitted_pixels == scene.cloudy_pixels == 400


def test_fmask_clear_is_the_products_rule():
    values = np.arange(256, dtype="uint8")
    rules = load_catalog("demo").source("hls-l30").qa
    qa = xr.DataArray(np.where(values == 255, np.nan, values.astype(float)), dims=("x",))
    product = decode_qa([qa], rules).values
    assert np.array_equal(fmask_clear(values), product)


def test_fmask_omission_over_a_year_of_sky_is_a_few_percent(small_world):
    """Real Fmask leaves a few % of cloudy pixels clear (thin cloud, misplaced shadows)."""
    weather = make_reanalysis(small_world, np.random.default_rng(1))
    sky = CloudSky(small_world, weather, np.random.default_rng(2))
    rng = np.random.default_rng(3)
    shape = small_world.region.shape
    cloudy = omitted = 0
    for index in range(0, 365, 5):
        field = sky.field(index)
        height = rng.uniform(1_000, 4_000)
        skill = FmaskSkill.draw(rng)
        masks = sky.masks(
            field, (0,), (40.0, 150.0), height, fmask_height=height * skill.height_error
        )
        stack = [([(0, slice(0, shape[0]))], _vegetation(shape), np.zeros(shape, "float32"),
                  np.zeros(shape, bool), masks)]  # fmt: skip
        scene = simulate_hls_scene(
            small_world, stack, dt.datetime(2023, 6, 1), "landsat-8", rng, skill
        )
        cloudy += scene.cloudy_pixels
        omitted += scene.omitted_pixels
    assert 0.01 < omitted / cloudy < 0.12


def test_tower_fetches_are_mixed_but_dominated_by_the_site_type(compact_world):
    world = compact_world
    purities = []
    for site in world.sites:
        pft = world.areas[site.area].terrain.pft_10m
        weights = tower_footprint(pft.shape[0], 10.0)
        share = float(weights[pft == site.pft].sum())
        purities.append(share)
        assert FETCH_PURITY[0] - 0.02 <= share <= min(FETCH_PURITY[1] + 0.08, 1.0)
    assert np.std(purities) > 0.04  # not all towers alike
    again = make_world("compact", 2)
    assert all(
        np.array_equal(a.terrain.pft_10m, b.terrain.pft_10m)
        for a, b in zip(world.areas, again.areas, strict=True)
    )


def test_some_towers_carry_a_lasting_bias(compact_world, tmp_path):
    world = compact_world
    recorder = TowerRecorder(world, np.random.default_rng(7))
    n = world.size.site_pixels
    rows = [(site.area, slice(i * n, (i + 1) * n)) for i, site in enumerate(world.sites)]
    canopy = SimpleNamespace(parts=rows)
    shape = (len(rows) * n, n)
    flat = {k: np.full(shape, v, "float32") for k, v in
            {"gpp": 6.0, "tair": 20.0, "shortwave": 20.0, "vpd": 1.0, "precipitation": 0.0,
             "fapar": 0.8}.items()}  # fmt: skip
    for day in world.size.days:
        recorder.record(day, canopy, SimpleNamespace(**flat))
    recorder.write(tmp_path)
    ratios = []
    for site in world.sites:
        table = next(tmp_path.glob(f"FLX_{site.id}_*.csv"))
        gpp = np.array([float(r["GPP_NT_VUT_REF"]) for r in csv.DictReader(table.open())])
        ratios.append(gpp[gpp != -9999].mean() / 6.0)
    ratios = np.array(ratios)
    assert np.median(np.abs(ratios - 1)) < 0.06
    assert (np.abs(ratios - 1) > 0.09).sum() >= 2  # biased sites, both ways possible


def test_manifest_reports_realism_metrics_and_modis_views(demo_world):
    path, manifest = demo_world
    metrics = manifest["metrics"]
    assert 0.0 < metrics["fmask_omission"] < 0.2
    r2 = metrics["last_year_analog_r2"]  # a one-year world has no last year
    assert r2 is None or 0.0 <= r2 <= 1.0
    items = json.loads((path / "stac" / "modis-09GA-061.json").read_text())["features"]
    zeniths = [it["properties"]["view:incidence_angle"] for it in items]
    assert min(zeniths) < 10 and max(zeniths) > 55
    assert all(it["properties"]["view:sun_elevation"] > 0 for it in items)

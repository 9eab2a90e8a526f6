"""The demo world day by day: the true canopy and GPP, what the towers record, and the MODIS and
HLS scenes the sensors see through the sky, published as COGs and STAC items as they are made;
with the world's realism metrics (how much cloud Fmask misses, how repeatable the truth is from
one year to the next).
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import publish
from .analog import LastYearAnalog
from .hls import FmaskSkill, hls_overpasses, simulate_hls_scene
from .modis import GRID_OFFSETS, SINUSOIDAL_WKT, ModisGrid, simulate_modis_day
from .sky import CloudSky, sun_position
from .terra import modis_anisotropy
from .terrain import PFT
from .towers import TowerRecorder
from .vegetation import BANDS, Canopy, block_mean
from .weather import Reanalysis
from .world import CRS, TILE, World

__all__ = ["TRUTH_DAYS_PER_CHUNK", "Writer", "simulate_days", "truth_store", "write_truth"]


TRUTH_DAYS_PER_CHUNK = 16


class Writer:
    """Hands COG jobs to the pool, with a bounded number in flight (bounded memory)."""

    def __init__(self, pool: cf.Executor, out: Path, max_pending: int = 6):
        self.pool, self.out, self.max_pending = pool, out, max_pending
        self.pending: list[cf.Future] = []

    def submit(self, jobs: list[publish.CogJob]) -> None:
        while len(self.pending) >= self.max_pending:
            done, _ = cf.wait(self.pending, return_when=cf.FIRST_COMPLETED)
            for future in done:
                future.result()
            self.pending = [f for f in self.pending if not f.done()]
        self.pending.append(self.pool.submit(publish.write_cogs, jobs))

    def drain(self) -> None:
        for future in self.pending:
            future.result()
        self.pending = []

    def href(self, path: Path) -> str:
        return path.relative_to(self.out).as_posix()


def truth_store(world: World, out: Path, days: list[dt.date], canopy: Canopy) -> Path:
    import dask.array as da
    import xarray as xr
    from odc.geo.xr import xr_coords

    region = world.region
    ny, nx = region.shape
    path = out / "truth" / "gpp.zarr"
    geobox = world.area_geobox(region)
    coords = xr_coords(geobox, crs_coord_name="spatial_ref")
    chunk_xy = min(ny, 400)
    gpp = xr.DataArray(
        da.zeros((len(days), ny, nx), chunks=(TRUTH_DAYS_PER_CHUNK, chunk_xy, chunk_xy),
                 dtype="float32"),
        dims=("time", "y", "x"),
        coords={"time": np.array(days, dtype="datetime64[ns]"), **coords},
        attrs={
            "units": "g m-2 day-1",
            "standard_name": "gross_primary_productivity_of_biomass_expressed_as_carbon",
            "long_name": "true daily GPP of the demo world (for evaluation only)",
            "grid_mapping": "spatial_ref",
        },
    )  # fmt: skip
    static = {
        "elevation": (("y", "x"), region.terrain.elevation, {"units": "m"}),
        "pft": (("y", "x"), canopy.pft.astype("uint8"), {
            "long_name": "dominant vegetation type of the pixel (0: none)",
            "flag_values": list(PFT), "flag_meanings": " ".join(PFT.values()),
        }),
        "vegetated_fraction": (("y", "x"), canopy.frac_veg, {"units": "1"}),
    }  # fmt: skip
    ds = xr.Dataset({"gpp": gpp, **static})
    encoding = {
        "gpp": {"dtype": "int16", "scale_factor": 0.01, "_FillValue": -32768,
                "chunks": (TRUTH_DAYS_PER_CHUNK, chunk_xy, chunk_xy)},
    }  # fmt: skip
    ds.to_zarr(path, mode="w", compute=False, encoding=encoding, zarr_format=3, consolidated=False)
    return path


def write_truth(path: Path, start: int, block: np.ndarray) -> None:
    import xarray as xr

    ds = xr.Dataset({"gpp": (("time", "y", "x"), block)})
    ds.to_zarr(
        path,
        region={"time": slice(start, start + block.shape[0]), "y": slice(None), "x": slice(None)},
        consolidated=False,
    )


def simulate_days(
    world: World,
    reanalysis: Reanalysis,
    rng: list[np.random.Generator],
    out: Path,
    writer: Writer,
    say: Callable[[str], None],
) -> tuple[list[dict], list[dict], dict]:
    """Every day of the world: the truth written, the towers recorded, a MODIS granule and,
    on overpass days, an HLS scene published; returns the (HLS, MODIS) items and the metrics:
    ``fmask_omission`` (the share of truly cloudy or shadowed pixels of all HLS scenes that
    Fmask leaves clear) and ``last_year_analog_r2`` (:class:`LastYearAnalog`)."""
    days = reanalysis.days
    sim = _Sensors(world, reanalysis, rng, out, writer)
    truth_path = truth_store(world, out, days, sim.canopies[0])
    truth = np.zeros((TRUTH_DAYS_PER_CHUNK, *world.region.shape), dtype="float32")
    towers = TowerRecorder(world, rng[4])
    overpasses = dict((when.date(), (when, platform)) for when, platform in hls_overpasses(days))
    analog = LastYearAnalog()
    hls_items, modis_items = [], []
    for index, day in enumerate(days):
        states = [c.step(index) for c in sim.canopies]
        truth[index % TRUTH_DAYS_PER_CHUNK] = states[0].gpp
        analog.record(day, states[0].gpp)
        if index % TRUTH_DAYS_PER_CHUNK == TRUTH_DAYS_PER_CHUNK - 1 or index == len(days) - 1:
            filled = index % TRUTH_DAYS_PER_CHUNK + 1
            write_truth(truth_path, index + 1 - filled, truth[:filled])
        towers.record(day, sim.canopies[1], states[1], region=states[0])
        field = sim.sky.field(index)
        height = float(sim.rng.uniform(1_000, 4_000))
        modis_items.append(sim.modis_day(index, day, states, field, height))
        if day in overpasses:
            hls_items.append(sim.hls_scene(*overpasses[day], states, field, height))
        if day.day == 1 or index == len(days) - 1:
            say(f"simulated up to {day} ({index + 1}/{len(days)} days, "
                f"{len(hls_items)} HLS scenes)")  # fmt: skip
    towers.write(out / "flux")
    metrics = {
        "fmask_omission": round(sim.omitted / max(sim.cloudy, 1), 4),
        "last_year_analog_r2": None if analog.r2() is None else round(analog.r2(), 4),
    }
    return hls_items, modis_items, metrics


class _Sensors:
    """What MODIS and HLS see of the world's canopies: the region alone, and the tower
    patches stacked together (same shape), through one sky."""

    def __init__(self, world: World, reanalysis: Reanalysis, rng: list[np.random.Generator],
                 out: Path, writer: Writer) -> None:  # fmt: skip
        self.world, self.out, self.writer = world, out, writer
        self.canopies = [
            Canopy(world, [world.region], reanalysis, rng[2]),
            Canopy(world, list(world.areas[1:]), reanalysis, rng[2]),
        ]
        self.area_indices = [tuple(index for index, _ in c.parts) for c in self.canopies]
        self.sky = CloudSky(world, reanalysis, rng[3])
        self.grid = ModisGrid(world)
        self.rng = rng[5]
        self.water_blocks = [block_mean(c.frac_water, ModisGrid.BLOCK) for c in self.canopies]
        self.forest_blocks = [block_mean(c.forest, ModisGrid.BLOCK) for c in self.canopies]
        self.centre = float(reanalysis.lat.mean()), float(reanalysis.lon.mean())
        self.modis_footprint = _footprint(world)
        self.cloudy = self.omitted = 0  # truly cloudy HLS pixels, and those Fmask left clear

    def modis_day(self, index: int, day: dt.date, states, field, height: float) -> dict:
        """The day's MOD09GA-like granule (Terra, ~10:30 solar time), written and its item."""
        grid, world = self.grid, self.world
        view = grid.view(day)
        sun = sun_position(*self.centre, view.when(day))
        footprint = grid.footprint(view.cycle_day, int(self.rng.integers(len(GRID_OFFSETS))))
        open_land, forest = modis_anisotropy(view, sun, self.rng)[:, :, None, None]
        blocks: dict[int, np.ndarray] = {}  # the PSF takes 120 m blocks of every area
        for canopy, state, indices, water, forest_share in zip(
            self.canopies, states, self.area_indices, self.water_blocks, self.forest_blocks,
            strict=True,
        ):  # fmt: skip
            masks = self.sky.masks(field, indices, sun, height, factor=2)
            layers = block_mean(
                np.concatenate(
                    [
                        canopy.reflectance(state, 2),
                        np.stack(
                            [masks.opacity, masks.cloud & ~masks.thin, masks.thin, masks.shadow]
                        ),
                    ],
                    dtype="float32",
                ),
                2,
            )
            layers[: len(BANDS)] *= open_land + (forest - open_land) * forest_share
            layers = np.concatenate(
                [layers, block_mean(state.snow, ModisGrid.BLOCK)[None], water[None]]
            )
            blocks.update(canopy.split(layers, ModisGrid.BLOCK))
        observed = grid.aggregate([blocks[i] for i in range(len(world.areas))], footprint)
        nb = len(BANDS)
        bands, state_qa = simulate_modis_day(footprint, observed[:nb], *observed[nb:], self.rng)
        terra = dt.datetime.combine(day, dt.time(2, 0))
        produced = terra + dt.timedelta(days=1, hours=7, minutes=int(index % 50))
        item_id = f"MOD09GA.A{day:%Y%j}.h{grid.h:02d}v{grid.v:02d}.061.{produced:%Y%j%H%M%S}"
        folder = self.out / "cogs" / "modis-09GA-061" / f"{day:%Y}" / item_id
        jobs, hrefs = [], {}
        for key, values in bands.items():
            path = folder / f"{item_id}_{key}.tif"
            jobs.append((str(path), values, SINUSOIDAL_WKT, tuple(grid.transform)[:6], -28672,
                         "average"))  # fmt: skip
            hrefs[key] = self.writer.href(path)
        path = folder / f"{item_id}_state_1km_1.tif"
        jobs.append(
            (str(path), state_qa, SINUSOIDAL_WKT, tuple(grid.state_transform)[:6], None, "nearest")
        )
        hrefs["state_1km_1"] = self.writer.href(path)
        self.writer.submit(jobs)
        return publish.modis_item(
            day, grid.h, grid.v, hrefs, SINUSOIDAL_WKT, grid.transform, grid.shape,
            grid.state_transform, state_qa.shape, produced, self.modis_footprint,
            view={
                "view:off_nadir": round(view.scan_angle, 2),
                "view:incidence_angle": round(view.view_zenith, 2),
                "view:azimuth": round((view.view_azimuth + 180.0) % 360.0, 2),
                "view:sun_azimuth": round(sun[1], 2),
                "view:sun_elevation": round(90.0 - sun[0], 2),
            },
        )  # fmt: skip

    def hls_scene(self, when: dt.datetime, platform: str, states, field, height: float) -> dict:
        """An HLS L30-like scene of an overpass, written and its item."""
        world = self.world
        sun = sun_position(*self.centre, when)
        skill = FmaskSkill.draw(self.rng)
        fmask_height = height * skill.height_error
        stacks = [
            (canopy.parts, canopy.reflectance(state, 1), state.snow, canopy.water_pixel,
             self.sky.masks(field, indices, sun, height, fmask_height=fmask_height))
            for canopy, state, indices in zip(self.canopies, states, self.area_indices,
                                              strict=True)
        ]  # fmt: skip
        scene = simulate_hls_scene(world, stacks, when, platform, self.rng, skill)
        self.cloudy += scene.cloudy_pixels
        self.omitted += scene.omitted_pixels
        item_id = f"HLS.L30.{TILE}.{when:%Y%j}T{when:%H%M%S}.v2.0"
        folder = self.out / "cogs" / "hls2-l30" / f"{when:%Y}" / item_id
        transform = tuple(world.domain_transform)[:6]
        jobs, hrefs = [], {}
        for role, (key, _, _) in publish.HLS_ASSETS.items():
            path = folder / f"{item_id}.{key}.tif"
            jobs.append((str(path), scene.bands[role], CRS, transform, -9999, "average"))
            hrefs[key] = self.writer.href(path)
        path = folder / f"{item_id}.Fmask.tif"
        jobs.append((str(path), scene.fmask, CRS, transform, 255, "nearest"))
        hrefs["Fmask"] = self.writer.href(path)
        self.writer.submit(jobs)
        return publish.hls_item(
            TILE, when, platform, scene.cloud_cover, hrefs, CRS, world.domain_transform,
            world.domain_shape,
        )  # fmt: skip


def _footprint(world: World) -> dict:
    """Where the world's MODIS tiles hold data: its areas (the region, the tower patches), as
    a GeoJSON MultiPolygon in degrees (a grid outside them has no GPP_M, and must be told)."""
    import shapely

    parts = [shapely.geometry.shape(world.area_geobox(area).extent.to_crs("EPSG:4326").json)
             for area in world.areas]  # fmt: skip
    return shapely.geometry.mapping(shapely.union_all(parts))

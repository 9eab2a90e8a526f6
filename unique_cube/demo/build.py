"""Generate and publish the demo world: ``build_world(out, size, seed)``.

The world is simulated day by day (never the multi-year 30 m cube in memory) in this process,
while a process pool compresses and writes the COGs. The directory it fills::

    world.json                       manifest (seed, size, timings, sizes); written last
    stac/<collection>.json           item collections (hrefs relative to the directory)
    stac/collections.json            the collections
    cogs/<collection>/...            the rasters
    era5/<YYYY-MM>/<variable>.zarr   hourly reanalysis, one store per variable and month
    flux/sites.csv, flux/FLX_*.csv   flux towers, FLUXNET2015 FULLSET daily layout
    truth/gpp.zarr                   true daily 30 m GPP of the region (evaluation only)

Deterministic for a seed: every random stream is spawned from it.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import ConfigError
from . import publish
from .sensors import (
    SINUSOIDAL_WKT,
    CloudSky,
    ModisGrid,
    hls_overpasses,
    simulate_hls_scene,
    simulate_modis_day,
    sun_position,
)
from .terrain import PFT
from .towers import TowerRecorder
from .vegetation import BANDS, Canopy, block_mean
from .weather import Reanalysis, hourly, make_reanalysis, utc_hours
from .world import CRS, PIXEL, TILE, World, make_world

__all__ = ["GENERATOR_VERSION", "MANIFEST", "build_world", "read_manifest"]

log = logging.getLogger(__name__)

#: Bumped whenever the generator's output changes; a world of another version is rebuilt.
GENERATOR_VERSION = 1
MANIFEST = "world.json"
_OWNED = ("stac", "cogs", "era5", "flux", "truth", MANIFEST)
TRUTH_DAYS_PER_CHUNK = 16
COLLECTION_TEXT = {
    "hls2-l30": "Demo world: HLS v2.0 Landsat 8/9 surface reflectance (simulated), 30 m",
    "modis-09GA-061": "Demo world: MOD09GA-like daily Terra surface reflectance (simulated), 500 m",
    "cop-dem-glo-30": "Demo world: Copernicus-DEM-like elevation (simulated), 1 arc-second",
    "esa-worldcover": "Demo world: ESA-WorldCover-like land cover (simulated), 10 m",
    "era5-pds": "Demo world: ERA5-like hourly reanalysis (simulated), 0.1 degree",
}


def read_manifest(out: str | Path) -> dict | None:
    """The manifest of a complete world in ``out``, or None."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def build_world(
    out: str | Path,
    size: str = "compact",
    seed: int = 0,
    *,
    workers: int = 2,
    reuse: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Generate the world into ``out`` (or reuse a complete one of the same size, seed and
    generator version) and return its manifest."""
    from .world import SIZES

    if size not in SIZES:
        raise ConfigError(f"demo world size must be one of {sorted(SIZES)}, got {size!r}")
    out = Path(out).resolve()
    say = progress or (lambda text: log.info("%s", text))
    existing = read_manifest(out)
    wanted = {"size": size, "seed": seed, "generator_version": GENERATOR_VERSION}
    if reuse and existing and all(existing.get(k) == v for k, v in wanted.items()):
        say(f"reusing the demo world in {out} (size {size}, seed {seed})")
        return existing
    _prepare(out)

    started = time.perf_counter()
    timings: dict[str, float] = {}
    streams = np.random.SeedSequence(seed).spawn(8)
    rng = [np.random.default_rng(s) for s in streams]

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 2)
        return now

    t = time.perf_counter()
    world = make_world(size, int(np.random.default_rng(streams[0]).integers(2**31)))
    reanalysis = make_reanalysis(world, rng[1])
    t = lap("layout_and_weather", t)
    say(f"world laid out: region {world.region.shape}, {len(world.sites)} towers, "
        f"{len(reanalysis.days)} days")  # fmt: skip

    items: dict[str, list[dict]] = {}
    with cf.ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        writer = _Writer(pool, out)
        items["cop-dem-glo-30"], items["esa-worldcover"] = _publish_static(world, out, writer)
        items["era5-pds"] = _publish_era5(reanalysis, out)
        t = lap("static_and_era5", t)
        items["hls2-l30"], items["modis-09GA-061"] = _simulate_days(
            world, reanalysis, rng, out, writer, say
        )
        writer.drain()
        t = lap("daily_simulation", t)

    stac_dir = out / "stac"
    collections = []
    counts = {}
    for collection_id, its in items.items():
        publish.write_item_collection(stac_dir / f"{collection_id}.json", its)
        collections.append(publish.collection(collection_id, COLLECTION_TEXT[collection_id], its))
        counts[collection_id] = len(its)
    (stac_dir / "collections.json").write_text(json.dumps(collections))
    timings["total"] = round(time.perf_counter() - started, 2)
    manifest = {
        **wanted,
        "unique_cube_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "start": world.size.start.isoformat(),
        "end": world.size.end.isoformat(),
        "crs": CRS,
        "mgrs_tile": TILE,
        "region": {
            "bbox": list(world.area_geobox(world.region).boundingbox),
            "shape": list(world.region.shape),
        },
        "domain_bbox": list(world.domain_bounds()),
        "sites": len(world.sites),
        "items": counts,
        "bytes": _sizes(out),
        "seconds": timings,
        "workers": workers,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    say(f"demo world ready in {out} ({timings['total']:.0f} s, "
        f"{sum(manifest['bytes'].values()) / 1e6:.0f} MB)")  # fmt: skip
    return manifest


def _prepare(out: Path) -> None:
    """Make ``out`` an empty world directory; refuse to clear a directory that is not one."""
    if out.exists():
        foreign = [p.name for p in out.iterdir() if p.name not in _OWNED]
        if foreign:
            raise ConfigError(
                f"{out} is not empty and not a demo world (it has {sorted(foreign)[:5]}); "
                "choose another --out"
            )
        for name in _OWNED:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _sizes(out: Path) -> dict[str, int]:
    sizes = {}
    for name in ("cogs", "era5", "flux", "truth", "stac"):
        sizes[name] = sum(p.stat().st_size for p in (out / name).rglob("*") if p.is_file())
    return sizes


class _Writer:
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


def _publish_static(world: World, out: Path, writer: _Writer) -> tuple[list[dict], list[dict]]:
    """Copernicus-DEM-like 1° tiles and an ESA-WorldCover-like 3° tile, cut to the domain."""
    from affine import Affine
    from rasterio.warp import Resampling, reproject, transform_bounds

    from .terrain import PFT_TO_WORLDCOVER

    west, south, east, north = transform_bounds(CRS, "EPSG:4326", *world.domain_bounds())
    elevation = world.mosaic("elevation", np.nan)
    lut = np.zeros(256, dtype="uint8")
    for pft, wc in PFT_TO_WORLDCOVER.items():
        lut[pft] = wc
    landcover = lut[world.mosaic("pft_10m", 0, "uint8", factor=3)]
    x0, y0 = world.domain_origin
    lc_transform = Affine(PIXEL / 3, 0, x0, 0, -PIXEL / 3, y0)
    when = dt.datetime(2021, 4, 22)

    dem_items = []
    res = 1 / 3600
    for lat in range(int(np.floor(south)), int(np.floor(north)) + 1):
        for lon in range(int(np.floor(west)), int(np.floor(east)) + 1):
            # Copernicus DEM tiles are registered on pixel centres at whole degrees.
            tile_x0, tile_y0 = lon - res / 2, lat + 1 + res / 2
            c0 = max(int(np.floor((west - tile_x0) / res)), 0)
            c1 = min(int(np.ceil((east - tile_x0) / res)), 3600)
            r0 = max(int(np.floor((tile_y0 - north) / res)), 0)
            r1 = min(int(np.ceil((tile_y0 - south) / res)), 3600)
            if c1 <= c0 or r1 <= r0:
                continue
            transform = Affine(res, 0, tile_x0 + c0 * res, 0, -res, tile_y0 - r0 * res)
            dem = np.full((r1 - r0, c1 - c0), np.nan, dtype="float32")
            reproject(
                elevation, dem, src_transform=world.domain_transform, src_crs=CRS,
                src_nodata=np.nan, dst_transform=transform, dst_crs="EPSG:4326",
                dst_nodata=np.nan, resampling=Resampling.bilinear,
            )  # fmt: skip
            if not np.isfinite(dem).any():
                continue
            dem = np.where(np.isfinite(dem), dem, -32767).astype("float32")
            ns, ew = ("N" if lat >= 0 else "S"), ("E" if lon >= 0 else "W")
            item_id = f"Copernicus_DSM_COG_10_{ns}{abs(lat):02d}_00_{ew}{abs(lon):03d}_00_DEM"
            path = out / "cogs" / "cop-dem-glo-30" / f"{item_id}.tif"
            writer.submit([(str(path), dem, "EPSG:4326", tuple(transform)[:6], -32767, "average")])
            dem_items.append(
                publish.static_item(
                    item_id, "cop-dem-glo-30", "data", writer.href(path),
                    {"data_type": "float32", "nodata": -32767, "unit": "metre",
                     "spatial_resolution": 30},
                    when, "EPSG:4326", transform, dem.shape,
                    {"gsd": 30, "platform": "TanDEM-X"},
                )
            )  # fmt: skip

    # WorldCover: 3 x 3 degree tiles, pixel corners on whole degrees, 1/12000 degree.
    res = 1 / 12000
    lat0 = int(np.floor(south / 3) * 3)
    lon0 = int(np.floor(west / 3) * 3)
    tile_x0, tile_y0 = lon0, lat0 + 3
    c0, c1 = int(np.floor((west - tile_x0) / res)), int(np.ceil((east - tile_x0) / res))
    r0, r1 = int(np.floor((tile_y0 - north) / res)), int(np.ceil((tile_y0 - south) / res))
    transform = Affine(res, 0, tile_x0 + c0 * res, 0, -res, tile_y0 - r0 * res)
    lc = np.zeros((r1 - r0, c1 - c0), dtype="uint8")
    reproject(
        landcover, lc, src_transform=lc_transform, src_crs=CRS, src_nodata=0,
        dst_transform=transform, dst_crs="EPSG:4326", dst_nodata=0,
        resampling=Resampling.nearest,
    )  # fmt: skip
    item_id = f"ESA_WorldCover_10m_2021_v200_N{lat0:02d}E{lon0:03d}"
    path = out / "cogs" / "esa-worldcover" / f"{item_id}_Map.tif"
    writer.submit([(str(path), lc, "EPSG:4326", tuple(transform)[:6], 0, "mode")])
    wc_item = publish.static_item(
        item_id, "esa-worldcover", "map", writer.href(path),
        {"name": "Band1", "nodata": 0, "sampling": "area", "data_type": "uint8",
         "spatial_resolution": 10},
        dt.datetime(2021, 1, 1), "EPSG:4326", transform, lc.shape,
        {"esa_worldcover:product_version": "2.0.0", "mission": "sentinel-1, sentinel-2"},
    )  # fmt: skip
    return dem_items, [wc_item]


_ERA5_ASSETS = {
    "tair": ("air_temperature_at_2_metres", "time0", "K"),
    "tdew": ("dew_point_temperature_at_2_metres", "time0", "K"),
    "shortwave": (
        "integral_wrt_time_of_surface_direct_downwelling_shortwave_flux_in_air_1hour_Accumulation",
        "time1",
        "J m**-2",
    ),
    "precipitation": ("precipitation_amount_1hour_Accumulation", "time1", "m"),
}


def _publish_era5(reanalysis: Reanalysis, out: Path) -> list[dict]:
    """Hourly ERA5-like Zarr stores, one per variable and UTC month, and their items."""
    import xarray as xr

    hours = [t for day in reanalysis.days for t in utc_hours(day)]
    series = {key: [] for key in _ERA5_ASSETS}
    for index in range(len(reanalysis.days)):
        for key, values in hourly(reanalysis, index).items():
            series[key].append(values)
    arrays = {key: np.concatenate(v) for key, v in series.items()}
    times = np.array(hours, dtype="datetime64[ns]")
    months = times.astype("datetime64[M]")
    lat, lon = reanalysis.lat, reanalysis.lon
    step = float(abs(lat[1] - lat[0]))
    bbox = [
        float(lon.min() - step / 2), float(lat.min() - step / 2),
        float(lon.max() + step / 2), float(lat.max() + step / 2),
    ]  # fmt: skip
    items = []
    for month in np.unique(months):
        pick = months == month
        month_date = month.astype(dt.date)
        hrefs = {}
        for key, (name, time_dim, units) in _ERA5_ASSETS.items():
            ds = xr.Dataset(
                {name: ((time_dim, "lat", "lon"), arrays[key][pick], {"units": units})},
                coords={time_dim: times[pick], "lat": lat, "lon": lon},
            )
            ds.lat.attrs = {"units": "degrees_north", "standard_name": "latitude"}
            ds.lon.attrs = {"units": "degrees_east", "standard_name": "longitude"}
            path = out / "era5" / f"{month_date:%Y-%m}" / f"{name}.zarr"
            ds.to_zarr(path, mode="w", consolidated=True, zarr_format=2)
            hrefs[name] = path.relative_to(out).as_posix()
        grid = {
            "lat": {"type": "spatial", "axis": "y", "extent": [float(lat.min()), float(lat.max())],
                    "step": -step},
            "lon": {"type": "spatial", "axis": "x", "extent": [float(lon.min()), float(lon.max())],
                    "step": step},
        }  # fmt: skip
        items.append(publish.era5_item(month_date, hrefs, bbox, grid))
    return items


def _truth_store(world: World, out: Path, days: list[dt.date], canopy: Canopy) -> Path:
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


def _write_truth(path: Path, start: int, block: np.ndarray) -> None:
    import xarray as xr

    ds = xr.Dataset({"gpp": (("time", "y", "x"), block)})
    ds.to_zarr(
        path,
        region={"time": slice(start, start + block.shape[0]), "y": slice(None), "x": slice(None)},
        consolidated=False,
    )


def _simulate_days(
    world: World,
    reanalysis: Reanalysis,
    rng: list[np.random.Generator],
    out: Path,
    writer: _Writer,
    say: Callable[[str], None],
) -> tuple[list[dict], list[dict]]:
    days = reanalysis.days
    # The region alone, the tower patches stacked together (same shape): two canopies.
    canopies = [
        Canopy(world, [world.region], reanalysis, rng[2]),
        Canopy(world, list(world.areas[1:]), reanalysis, rng[2]),
    ]
    area_indices = [tuple(index for index, _ in c.parts) for c in canopies]
    sky = CloudSky(world, reanalysis, rng[3])
    grid = ModisGrid(world)
    towers = TowerRecorder(world, rng[4])
    sensor_rng = rng[5]
    water_blocks = [block_mean(c.frac_water, ModisGrid.BLOCK) for c in canopies]
    overpasses = dict((when.date(), (when, platform)) for when, platform in hls_overpasses(days))
    truth_path = _truth_store(world, out, days, canopies[0])
    truth = np.zeros((TRUTH_DAYS_PER_CHUNK, *world.region.shape), dtype="float32")
    lon_c, lat_c = float(reanalysis.lon.mean()), float(reanalysis.lat.mean())
    hls_transform = tuple(world.domain_transform)[:6]
    hls_items, modis_items = [], []

    for index, day in enumerate(days):
        states = [c.step(index) for c in canopies]
        truth[index % TRUTH_DAYS_PER_CHUNK] = states[0].gpp
        if index % TRUTH_DAYS_PER_CHUNK == TRUTH_DAYS_PER_CHUNK - 1 or index == len(days) - 1:
            filled = index % TRUTH_DAYS_PER_CHUNK + 1
            _write_truth(truth_path, index + 1 - filled, truth[:filled])
        towers.record(day, canopies[1], states[1])

        field = sky.field(index)
        height = float(sensor_rng.uniform(1_000, 4_000))
        # MODIS Terra, ~10:30 solar time: the PSF takes 120 m blocks of every area.
        terra = dt.datetime.combine(day, dt.time(2, 0))
        sun = sun_position(lat_c, lon_c, terra)
        blocks: dict[int, np.ndarray] = {}
        for canopy, state, indices, water in zip(
            canopies, states, area_indices, water_blocks, strict=True
        ):
            masks = sky.masks(field, indices, sun, height, factor=2)
            layers = np.concatenate(
                [canopy.reflectance(state, 2), np.stack([masks.cloud, masks.shadow])],
                dtype="float32",
            )
            layers = np.concatenate(
                [block_mean(layers, 2), block_mean(state.snow, ModisGrid.BLOCK)[None],
                 water[None]]
            )  # fmt: skip
            blocks.update(canopy.split(layers, ModisGrid.BLOCK))
        window = grid.aggregate([blocks[i] for i in range(len(world.areas))])
        nb = len(BANDS)
        bands, state_qa = simulate_modis_day(
            grid, window[:nb], window[nb], window[nb + 1], window[nb + 2], window[nb + 3],
            sensor_rng,
        )  # fmt: skip
        produced = terra + dt.timedelta(days=1, hours=7, minutes=int(index % 50))
        item_id = f"MOD09GA.A{day:%Y%j}.h{grid.h:02d}v{grid.v:02d}.061.{produced:%Y%j%H%M%S}"
        folder = out / "cogs" / "modis-09GA-061" / f"{day:%Y}" / item_id
        jobs, hrefs = [], {}
        for key, values in bands.items():
            path = folder / f"{item_id}_{key}.tif"
            jobs.append((str(path), values, SINUSOIDAL_WKT, tuple(grid.transform)[:6], -28672,
                         "average"))  # fmt: skip
            hrefs[key] = writer.href(path)
        path = folder / f"{item_id}_state_1km_1.tif"
        jobs.append(
            (str(path), state_qa, SINUSOIDAL_WKT, tuple(grid.state_transform)[:6], None, "nearest")
        )
        hrefs["state_1km_1"] = writer.href(path)
        writer.submit(jobs)
        modis_items.append(
            publish.modis_item(
                day, grid.h, grid.v, hrefs, SINUSOIDAL_WKT, grid.transform, grid.shape,
                grid.state_transform, state_qa.shape, produced,
            )
        )  # fmt: skip

        if day in overpasses:
            when, platform = overpasses[day]
            sun = sun_position(lat_c, lon_c, when)
            stacks = [
                (
                    canopy.parts,
                    canopy.reflectance(state, 1),
                    state.snow,
                    canopy.water_pixel,
                    sky.masks(field, indices, sun, height),
                )
                for canopy, state, indices in zip(canopies, states, area_indices, strict=True)
            ]
            scene = simulate_hls_scene(world, stacks, when, platform, sensor_rng)
            item_id = f"HLS.L30.{TILE}.{when:%Y%j}T{when:%H%M%S}.v2.0"
            folder = out / "cogs" / "hls2-l30" / f"{day:%Y}" / item_id
            jobs, hrefs = [], {}
            for role, (key, _, _) in publish.HLS_ASSETS.items():
                path = folder / f"{item_id}.{key}.tif"
                jobs.append((str(path), scene.bands[role], CRS, hls_transform, -9999, "average"))
                hrefs[key] = writer.href(path)
            path = folder / f"{item_id}.Fmask.tif"
            jobs.append((str(path), scene.fmask, CRS, hls_transform, 255, "nearest"))
            hrefs["Fmask"] = writer.href(path)
            writer.submit(jobs)
            hls_items.append(
                publish.hls_item(
                    TILE, when, platform, scene.cloud_cover, hrefs, CRS, world.domain_transform,
                    world.domain_shape,
                )
            )  # fmt: skip
        if day.day == 1 or index == len(days) - 1:
            say(f"simulated up to {day} ({index + 1}/{len(days)} days, "
                f"{len(hls_items)} HLS scenes)")  # fmt: skip
    towers.write(out / "flux")
    return hls_items, modis_items

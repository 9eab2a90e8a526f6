"""Generate and publish the demo world: ``build_world(out, size, seed)``.

The world is simulated day by day (never the multi-year 30 m cube in memory) in this process,
while a process pool compresses and writes the COGs. The directory it fills::

    world.json                       manifest (seed, size, timings, sizes, realism metrics);
                                     written last
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
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from unique_cube.errors import ConfigError
from unique_cube.version import __version__

from . import publish
from .simulate import Writer, simulate_days
from .terrain import PFT_TO_WORLDCOVER
from .weather import Reanalysis, hourly, make_reanalysis, utc_hours
from .world import CRS, PIXEL, SIZES, TILE, World, make_world

__all__ = ["GENERATOR_VERSION", "MANIFEST", "build_world", "prepare_folder", "read_manifest"]

log = logging.getLogger(__name__)

# Generator versions. 2: items declare where and when they hold data
# 3: the world is not easier than the real one: MODIS footprints grow with the day's view
#    zenith over Terra's 16-day cycle, gridding offsets and duplicates, Ross-Li anisotropy,
#    MODIS band responses and per-band noise; Fmask misses thin cloud and faint or misplaced
#    shadows and takes bright ground for cloud; towers see mixed fetches, some with a lasting
#    bias and noisy years; crop parcels, calendars and per-area plant parameters vary (issue 19).
#    The manifest has "metrics" (fmask_omission, last_year_analog_r2).
# 4: a few towers inside the region (issue 21: validation at towers), from their own random
#    stream: everything else is as in version 3. The manifest's "sites" counts every tower,
#    "region_sites" those inside the region.
#: Bumped whenever the generator's output changes; a world of another version is rebuilt.
GENERATOR_VERSION = 4
MANIFEST = "world.json"
_OWNED = ("stac", "cogs", "era5", "flux", "truth", MANIFEST)
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

    if size not in SIZES:
        raise ConfigError(f"demo world size must be one of {sorted(SIZES)}, got {size!r}")
    out = Path(out).resolve()
    say = progress or (lambda text: log.info("%s", text))
    existing = read_manifest(out)
    wanted = {"size": size, "seed": seed, "generator_version": GENERATOR_VERSION}
    if reuse and existing and all(existing.get(k) == v for k, v in wanted.items()):
        say(f"reusing the demo world in {out} (size {size}, seed {seed})")
        return existing
    prepare_folder(out)

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
    say(f"world laid out: region {world.region.shape}, {len(world.towers)} towers "
        f"({len(world.region_sites)} inside the region), "
        f"{len(reanalysis.days)} days")  # fmt: skip

    items: dict[str, list[dict]] = {}
    with cf.ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        writer = Writer(pool, out)
        items["cop-dem-glo-30"], items["esa-worldcover"] = _publish_static(world, out, writer)
        items["era5-pds"] = _publish_era5(reanalysis, out)
        t = lap("static_and_era5", t)
        items["hls2-l30"], items["modis-09GA-061"], metrics = simulate_days(
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
        "sites": len(world.towers),
        "region_sites": len(world.region_sites),
        "items": counts,
        "bytes": _sizes(out),
        "seconds": timings,
        "workers": workers,
        "metrics": metrics,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    say(f"demo world ready in {out} ({timings['total']:.0f} s, "
        f"{sum(manifest['bytes'].values()) / 1e6:.0f} MB)")  # fmt: skip
    return manifest


def prepare_folder(out: Path, owned: Sequence[str] = _OWNED, what: str = "a demo world") -> None:
    """Make ``out`` an empty folder for ``what`` (the names in ``owned`` removed); refuse to
    clear a directory that holds anything else."""
    if out.exists():
        foreign = [p.name for p in out.iterdir() if p.name not in owned]
        if foreign:
            raise ConfigError(
                f"{out} is not empty and not {what} (it has {sorted(foreign)[:5]}); "
                "choose another --out"
            )
        for name in owned:
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


def _publish_static(world: World, out: Path, writer: Writer) -> tuple[list[dict], list[dict]]:
    """Copernicus-DEM-like 1° tiles and an ESA-WorldCover-like 3° tile, cut to the domain."""
    from affine import Affine
    from rasterio.warp import Resampling, reproject, transform_bounds

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
        stamps = times[pick].astype("datetime64[us]").astype(dt.datetime)
        items.append(publish.era5_item(month_date, hrefs, bbox, grid, (stamps[0], stamps[-1])))
    return items

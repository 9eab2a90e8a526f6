"""A test bed of flux towers anywhere on Earth: small synthetic HLS and MODIS patches around
each tower, on the grids of its own place, published as the demo world publishes its sources.

The demo world's towers all stand in one HLS tile and one MODIS tile; real towers stand in
dozens of UTM zones and sinusoidal tiles, in both hemispheres. :func:`build_tower_bed` lays out

* an HLS L30-like tile per tower (:func:`tower_tiles`: ``patch_pixels`` 30 m pixels in the
  tower's UTM zone, ``EPSG:326zz`` north of the equator, ``EPSG:327zz`` south of it), or the
  tiles a caller lays out (two abutting tiles for a tower on their common edge), each seen on
  every ``hls_every``-th date (staggered from tile to tile) at 10:30 local time, with Fmask
  cloud;
* a MOD09GA-like item per sinusoidal tile and date: the tile's 500 m grid cut to the patches
  of its towers (``modis_pixels`` cells around each; no data between them), its footprint
  their union, as the demo world gives its MODIS items;

with cheap smooth fields of the map coordinates (abutting tiles agree at their edge) and
random cloud, and writes the demo world's folder layout (``stac/``, ``cogs/``,
``flux/sites.csv``, ``world.json``), so :func:`unique_cube.demo.serve.serve_world` serves it.
Deterministic for a seed.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import datetime as dt
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from affine import Affine

from unique_cube.grid import utm_crs

from . import publish
from .build import prepare_folder, read_manifest
from .modis import MODIS_ORIGIN, MODIS_PIXEL, MODIS_TILE, SINUSOIDAL_WKT
from .simulate import Writer

__all__ = ["BED_VERSION", "BedTile", "build_tower_bed", "spread_sites", "tower_tiles"]

#: Bumped whenever the bed's output changes; a bed of another version is rebuilt.
BED_VERSION = 1
_OWNED = ("stac", "cogs", "flux", "world.json")
_TEXT = {
    "hls2-l30": "Tower bed: HLS v2.0 L30-like patches around towers (synthetic), 30 m",
    "modis-09GA-061": "Tower bed: MOD09GA-like patches around towers (synthetic), 500 m",
}
_PIXEL = 30.0
_MGRS_BANDS = "CDEFGHJKLMNPQRSTUVWX"  # 8° latitude bands from 80 S
_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"


@dataclass(frozen=True)
class BedTile:
    """An HLS-like tile of the bed: its id and 30 m grid."""

    name: str
    """Tile id as HLS item ids carry it: ``T`` and five letters or digits (``T32TNS``)."""
    crs: str
    """``EPSG:326zz`` or ``EPSG:327zz``."""
    transform: Affine
    """Its grid's upper-left corner and 30 m pixels."""
    shape: tuple[int, int]
    """Rows, columns."""


def spread_sites(
    n: int,
    *,
    lat: tuple[float, float] = (20.0, 70.0),
    lon: tuple[float, float] = (-170.0, 170.0),
    seed: int = 0,
) -> pd.DataFrame:
    """``n`` towers spread uniformly over the area of a latitude-longitude box (site table:
    ``site``, ``lat``, ``lon``, ``igbp``)."""
    rng = np.random.default_rng(seed)
    sin_lat = rng.uniform(np.sin(np.radians(lat[0])), np.sin(np.radians(lat[1])), n)
    return pd.DataFrame({
        "site": [f"TB-{i:04d}" for i in range(n)],
        "lat": np.round(np.degrees(np.arcsin(sin_lat)), 5),
        "lon": np.round(rng.uniform(*lon, n), 5),
        "igbp": rng.choice(["DBF", "ENF", "GRA", "CRO"], n),
    })  # fmt: skip


def tower_tiles(sites: pd.DataFrame, pixels: int = 64) -> list[BedTile]:
    """A tile per tower: ``pixels`` × ``pixels`` 30 m pixels in its UTM zone, on the zone's
    30 m lattice, the tower in the pixel right of and below the tile's centre."""
    from pyproj import Transformer

    tiles, used = [], {}
    for lon, lat in zip(sites["lon"], sites["lat"], strict=True):
        crs = utm_crs(float(lon), float(lat))
        x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
        x0 = (np.floor(x / _PIXEL) - pixels // 2) * _PIXEL
        y0 = (np.floor(y / _PIXEL) + 1 + pixels // 2) * _PIXEL
        zone = int(crs[-2:])
        band = _MGRS_BANDS[min(max(int((float(lat) + 80) // 8), 0), len(_MGRS_BANDS) - 1)]
        k = used[zone, band] = used.get((zone, band), -1) + 1
        name = f"T{zone:02d}{band}{_LETTERS[k // len(_LETTERS) % 24]}{_LETTERS[k % 24]}"
        tiles.append(BedTile(name, crs, Affine(_PIXEL, 0, x0, 0, -_PIXEL, y0), (pixels, pixels)))
    return tiles


def build_tower_bed(
    out: str | Path,
    sites: pd.DataFrame,
    hls_dates: Sequence[dt.date],
    modis_dates: Sequence[dt.date],
    *,
    tiles: Sequence[BedTile] | None = None,
    hls_every: int = 1,
    patch_pixels: int = 64,
    modis_pixels: int = 9,
    cloud: float = 0.15,
    seed: int = 0,
    workers: int = 2,
    reuse: bool = True,
) -> dict:
    """Publish the bed of ``sites`` (``site``, ``lat``, ``lon``, ``igbp``) into ``out`` and
    return its manifest; a complete bed of the same inputs there is reused.

    ``tiles``: the HLS tiles (default :func:`tower_tiles` of ``patch_pixels``); tile ``k`` is
    seen on ``hls_dates[j]`` where ``(j + k) % hls_every == 0``. MODIS: every tile holding
    towers on every ``modis_dates``. ``cloud``: the share of pixels flagged cloudy."""
    out = Path(out).resolve()
    tiles = list(tiles) if tiles is not None else tower_tiles(sites, patch_pixels)
    inputs = {
        "sites": sites[["site", "lat", "lon"]].to_numpy().tolist(),
        "tiles": [(t.name, t.crs, list(t.transform)[:6], list(t.shape)) for t in tiles],
        "hls_dates": [d.isoformat() for d in hls_dates],
        "modis_dates": [d.isoformat() for d in modis_dates],
        "hls_every": hls_every, "modis_pixels": modis_pixels, "cloud": cloud, "seed": seed,
    }  # fmt: skip
    digest = hashlib.sha256(json.dumps(inputs).encode()).hexdigest()[:16]
    existing = read_manifest(out)
    if reuse and existing and existing.get("bed_version") == BED_VERSION and \
            existing.get("inputs") == digest:  # fmt: skip
        return existing
    prepare_folder(out, _OWNED, "a tower bed")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    with cf.ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        writer = Writer(pool, out)
        hls = [_hls_item(tile, when, k, rng, cloud, writer)
               for k, tile in enumerate(tiles)
               for j, when in enumerate(hls_dates) if (j + k) % hls_every == 0]  # fmt: skip
        modis = [_modis_item(tile, cells, day, modis_pixels // 2, rng, cloud, writer)
                 for tile, cells in _modis_tiles(sites, modis_pixels).items()
                 for day in modis_dates]  # fmt: skip
        writer.drain()
    items = {"hls2-l30": hls, "modis-09GA-061": modis}
    stac = out / "stac"
    for collection_id, its in items.items():
        publish.write_item_collection(stac / f"{collection_id}.json", its)
    collections = [publish.collection(c, _TEXT[c], its) for c, its in items.items() if its]
    (stac / "collections.json").write_text(json.dumps(collections))
    _write_sites(out / "flux" / "sites.csv", sites)
    manifest = {
        "kind": "tower-bed",
        "bed_version": BED_VERSION,
        "inputs": digest,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "sites": len(sites),
        "tiles": len(tiles),
        "items": {c: len(its) for c, its in items.items()},
        "seconds": round(time.perf_counter() - started, 2),
    }
    (out / "world.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _reflectance(x: np.ndarray, y: np.ndarray, day: int) -> dict[str, np.ndarray]:
    """Surface reflectance of the bed's roles at map coordinates ``x``, ``y`` (m): a smooth
    greenness, changing from day to day."""
    green = 0.5 + 0.45 * np.sin(x / 2500.0 + 0.4 * day) * np.cos(y / 3100.0 - 0.2 * day)
    return {
        "coastal": 0.02 + 0.02 * (1 - green), "blue": 0.025 + 0.03 * (1 - green),
        "green": 0.05 + 0.03 * (1 - green), "red": 0.03 + 0.08 * (1 - green),
        "nir": 0.18 + 0.27 * green, "swir16": 0.14 + 0.10 * (1 - green),
        "swir22": 0.07 + 0.08 * (1 - green),
    }  # fmt: skip


def _grid_xy(transform: Affine, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    cols, rows = np.meshgrid(np.arange(shape[1]) + 0.5, np.arange(shape[0]) + 0.5)
    return transform * (cols, rows)


def _dn(reflectance: np.ndarray) -> np.ndarray:
    return np.round(reflectance / 0.0001).astype("int16")


def _hls_item(tile: BedTile, day: dt.date, k: int, rng: np.random.Generator, cloud: float,
              writer: Writer) -> dict:  # fmt: skip
    """Tile ``tile`` seen on ``day`` (10:30 local time at its centre): COGs written, item."""
    from pyproj import Transformer

    x, y = _grid_xy(tile.transform, tile.shape)
    cx, cy = float(x.mean()), float(y.mean())
    lon, _ = Transformer.from_crs(tile.crs, "EPSG:4326", always_xy=True).transform(cx, cy)
    when = dt.datetime.combine(day, dt.time(10, 30)) - dt.timedelta(hours=lon / 15)
    when = when.replace(microsecond=0)
    values = _reflectance(x, y, day.toordinal())
    fmask = np.where(rng.random(tile.shape) < cloud, 0b10, 0).astype("uint8")
    item_id = f"HLS.L30.{tile.name}.{when:%Y%j}T{when:%H%M%S}.v2.0"
    folder = writer.out / "cogs" / "hls2-l30" / item_id
    transform = tuple(tile.transform)[:6]
    jobs, hrefs = [], {}
    for role, (key, _, _) in publish.HLS_ASSETS.items():
        path = folder / f"{item_id}.{key}.tif"
        jobs.append((str(path), _dn(values[role]), tile.crs, transform, -9999, "average"))
        hrefs[key] = writer.href(path)
    path = folder / f"{item_id}.Fmask.tif"
    jobs.append((str(path), fmask, tile.crs, transform, 255, "nearest"))
    hrefs["Fmask"] = writer.href(path)
    writer.submit(jobs)
    platform = "landsat-8" if k % 2 else "landsat-9"
    return publish.hls_item(tile.name, when, platform, round(100 * float((fmask > 0).mean()), 2),
                            hrefs, tile.crs, tile.transform, tile.shape)  # fmt: skip


def _modis_tiles(sites: pd.DataFrame, pixels: int) -> dict[tuple[int, int], list]:
    """Per sinusoidal tile (h, v) holding towers, the (row, column) of each tower's cell."""
    from pyproj import Transformer

    to_sin = Transformer.from_crs("EPSG:4326", SINUSOIDAL_WKT, always_xy=True)
    x, y = to_sin.transform(sites["lon"].to_numpy(), sites["lat"].to_numpy())
    col = (np.asarray(x) - MODIS_ORIGIN[0]) / MODIS_PIXEL
    row = (MODIS_ORIGIN[1] - np.asarray(y)) / MODIS_PIXEL
    cells: dict[tuple[int, int], list] = {}
    per_tile = round(MODIS_TILE / MODIS_PIXEL)
    for r, c in zip(np.floor(row).astype(int), np.floor(col).astype(int), strict=True):
        cells.setdefault((int(c // per_tile), int(r // per_tile)), []).append((r, c))
    return cells


def _modis_item(tile: tuple[int, int], cells: list, day: dt.date, half: int,
                rng: np.random.Generator, cloud: float, writer: Writer) -> dict:  # fmt: skip
    """A tile's MOD09GA-like item of ``day``: its 500 m grid cut to the towers' patches of
    ``half`` cells around their cells (``cells``: global rows and columns), no data elsewhere."""
    import shapely
    from odc.geo.geobox import GeoBox

    h, v = tile
    rows, cols = np.array([c[0] for c in cells]), np.array([c[1] for c in cells])
    r0, c0 = rows.min() - half, cols.min() - half
    r0, c0 = r0 - r0 % 2, c0 - c0 % 2  # the 1 km state grid shares the corner
    ny, nx = rows.max() + half + 1 - r0, cols.max() + half + 1 - c0
    ny, nx = int(ny + ny % 2), int(nx + nx % 2)
    transform = Affine(MODIS_PIXEL, 0, MODIS_ORIGIN[0] + c0 * MODIS_PIXEL,
                       0, -MODIS_PIXEL, MODIS_ORIGIN[1] - r0 * MODIS_PIXEL)  # fmt: skip
    bands = {key: np.full((ny, nx), -28672, "int16") for key in publish.MODIS_ASSETS}
    state = np.full((ny // 2, nx // 2), 0b1000, "uint16")  # land, clear
    patches = []
    for r, c in zip(rows - r0, cols - c0, strict=True):
        cut = (slice(r - half, r + half + 1), slice(c - half, c + half + 1))
        corner = transform * Affine.translation(c - half, r - half)
        patch = GeoBox((2 * half + 1, 2 * half + 1), corner, SINUSOIDAL_WKT)
        patches.append(shapely.geometry.shape(patch.extent.to_crs("EPSG:4326").json))
        values = _reflectance(*_grid_xy(corner, patch.shape), day.toordinal())
        values["swir12"] = (values["nir"] + values["swir16"]) / 2
        for key, (role, _, _) in publish.MODIS_ASSETS.items():
            bands[key][cut] = _dn(values[role or "swir12"])
        # The 1 km state cells under the patch: cloudy or clear.
        state_cut = (slice((r - half) // 2, (r + half) // 2 + 1),
                     slice((c - half) // 2, (c + half) // 2 + 1))  # fmt: skip
        shape = state[state_cut].shape
        state[state_cut] = np.where(rng.random(shape) < cloud, 0b1001, 0b1000)
    produced = dt.datetime.combine(day, dt.time(9, 0)) + dt.timedelta(days=1)
    item_id = f"MOD09GA.A{day:%Y%j}.h{h:02d}v{v:02d}.061.{produced:%Y%j%H%M%S}"
    folder = writer.out / "cogs" / "modis-09GA-061" / item_id
    jobs, hrefs = [], {}
    for key, band in bands.items():
        path = folder / f"{item_id}_{key}.tif"
        jobs.append((str(path), band, SINUSOIDAL_WKT, tuple(transform)[:6], -28672, "average"))
        hrefs[key] = writer.href(path)
    state_transform = transform * Affine.scale(2)
    path = folder / f"{item_id}_state_1km_1.tif"
    jobs.append((str(path), state, SINUSOIDAL_WKT, tuple(state_transform)[:6], None, "nearest"))
    hrefs["state_1km_1"] = writer.href(path)
    writer.submit(jobs)
    footprint = shapely.geometry.mapping(shapely.union_all(patches))
    return publish.modis_item(day, h, v, hrefs, SINUSOIDAL_WKT, transform, (ny, nx),
                              state_transform, state.shape, produced, footprint)  # fmt: skip


def _write_sites(path: Path, sites: pd.DataFrame) -> None:
    """The site table as FLUXNET writes it (SITE_ID, LOCATION_LAT, LOCATION_LONG, IGBP)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["SITE_ID", "LOCATION_LAT", "LOCATION_LONG", "IGBP"])
        for row in sites.itertuples(index=False):
            writer.writerow([row.site, row.lat, row.lon, getattr(row, "igbp", "GRA")])

"""What the satellites see of the demo world: clouds, HLS L30 scenes and MODIS daily pixels.

* **Clouds** — one cloud field per day over the domain (a Gaussian random field at 240 m with a
  fine 30 m texture), thresholded so that the cloud fraction follows the reanalysis cloudiness;
  shadows are the same field seen from the ground towards the sun (cloud height 1-4 km), and
  the pixels next to clouds and shadows are flagged as adjacent, as Fmask does.
* **HLS L30** — Landsat 8 (and Landsat 9 from 2022) every 16 days each; surface reflectance
  with a per-scene calibration error and pixel noise; bright clouds, dark shadows; Fmask bits as
  HLS v2.0 defines them.
* **MODIS (Terra, MOD09GA)** — every day on the MODIS sinusoidal grid (tile h28v05): the
  reflectance aggregated through a Gaussian point-spread function (FWHM ≈ 1.2 pixels), with
  view-angle (BRDF) noise, cloud contamination of partly cloudy pixels and the 1 km state QA.
"""

from __future__ import annotations

import datetime as dt
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse
from scipy.special import ndtri

from .terrain import fractal_field
from .vegetation import BANDS, block_mean
from .weather import CellSampler, Reanalysis
from .world import CRS, PIXEL, World

__all__ = [
    "MODIS_PIXEL",
    "SINUSOIDAL_WKT",
    "CloudSky",
    "HlsScene",
    "ModisGrid",
    "hls_overpasses",
]

SINUSOIDAL_WKT = (
    'PROJCRS["unnamed",BASEGEOGCRS["Unknown datum based upon the custom spheroid",'
    'DATUM["Not specified (based on custom spheroid)",ELLIPSOID["Custom spheroid",6371007.181,0,'
    'LENGTHUNIT["metre",1,ID["EPSG",9001]]]],PRIMEM["Greenwich",0,ANGLEUNIT["degree",'
    '0.0174532925199433,ID["EPSG",9122]]]],CONVERSION["unnamed",METHOD["Sinusoidal"],'
    'PARAMETER["Longitude of natural origin",0,ANGLEUNIT["degree",0.0174532925199433],'
    'ID["EPSG",8802]],PARAMETER["False easting",0,LENGTHUNIT["metre",1],ID["EPSG",8806]],'
    'PARAMETER["False northing",0,LENGTHUNIT["metre",1],ID["EPSG",8807]]],CS[Cartesian,2],'
    'AXIS["easting",east,ORDER[1],LENGTHUNIT["metre",1,ID["EPSG",9001]]],'
    'AXIS["northing",north,ORDER[2],LENGTHUNIT["metre",1,ID["EPSG",9001]]]]'
)
MODIS_TILE = 1111950.5197665
MODIS_PIXEL = MODIS_TILE / 2400
MODIS_ORIGIN = (-20015109.354, 10007554.677)
CLOUD_CELL = 240.0  # m, the cloud field's grid
FINE_TEXTURE = 0.35  # weight of the 30 m texture, in units of the cloud field
# Reflectance of a cloud top and the factor a shadow leaves, per band (BANDS order).
_CLOUD_TOP = np.array([0.45, 0.45, 0.44, 0.43, 0.45, 0.33, 0.22])
_SHADOW = 0.35
LANDSAT9_FROM = dt.date(2022, 1, 1)


def hls_overpasses(days: list[dt.date]) -> list[tuple[dt.datetime, str]]:
    """The Landsat 8/9 acquisitions of tile T52SCG in ``days``: (UTC time, platform)."""
    first_l8 = dt.date(2019, 12, 31)  # a Landsat 8 date of WRS-2 path 116 (16-day repeat)
    out = []
    for day in days:
        offset = (day - first_l8).days % 16
        moment = dt.datetime.combine(day, dt.time(2, 12, 30)) + dt.timedelta(
            seconds=int(day.toordinal() % 37)
        )
        if offset == 0:
            out.append((moment, "landsat-8"))
        elif offset == 8 and day >= LANDSAT9_FROM:
            out.append((moment, "landsat-9"))
    return out


def sun_position(lat: float, lon: float, when: dt.datetime) -> tuple[float, float]:
    """Solar zenith and azimuth (degrees, azimuth clockwise from north) at a UTC time."""
    doy = when.timetuple().tm_yday
    decl = 0.409 * np.sin(2 * np.pi * doy / 365.0 - 1.39)
    solar_hours = when.hour + when.minute / 60 + lon / 15.0
    hour_angle = np.radians(15.0 * (solar_hours - 12.0))
    phi = np.radians(lat)
    cos_z = np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl) * np.cos(hour_angle)
    zenith = np.arccos(np.clip(cos_z, -1, 1))
    azimuth = np.arctan2(
        np.sin(hour_angle), np.cos(hour_angle) * np.sin(phi) - np.tan(decl) * np.cos(phi)
    )
    return float(np.degrees(zenith)), float((np.degrees(azimuth) + 180.0) % 360.0)


@dataclass(frozen=True)
class SkyMasks:
    """Cloud, shadow and adjacency masks of an area (bool, the area's grid or blocks)."""

    cloud: np.ndarray
    shadow: np.ndarray
    adjacent: np.ndarray
    thickness: np.ndarray
    """How far inside the cloud (0 at its edge, 1 deep inside): brightness of the top."""


class CloudSky:
    """The daily cloud field over the domain, sampled at the areas' pixels."""

    def __init__(self, world: World, reanalysis: Reanalysis, rng: np.random.Generator):
        self.world = world
        self.reanalysis = reanalysis
        self.rng = rng
        side = world.size.domain_pixels * PIXEL
        self.n = int(np.ceil(side / CLOUD_CELL))
        x0, y0 = world.domain_origin
        centres = (np.arange(self.n) + 0.5) * CLOUD_CELL
        xs, ys = np.meshgrid(x0 + centres, y0 - centres)
        self._cloudiness = CellSampler(reanalysis.lat, reanalysis.lon, xs, ys)
        self._texture = {
            i: fractal_field(area.shape, PIXEL, rng, beta=2.2, scale_max=900)
            for i, area in enumerate(world.areas)
        }
        self._coords: dict[tuple, tuple[np.ndarray, ...]] = {}

    def field(self, index: int) -> np.ndarray:
        """The day's cloud field minus its local threshold: cloud where > 0 (n × n)."""
        g = fractal_field((self.n, self.n), CLOUD_CELL, self.rng, beta=3.4, scale_max=30_000)
        cloudiness = np.clip(self._cloudiness(self.reanalysis.cloud[index]), 0.0, 1.0)
        threshold = ndtri(np.clip(1.0 - cloudiness, 1e-6, 1 - 1e-6))
        return (g - threshold).astype("float32")

    def masks(
        self,
        field: np.ndarray,
        areas: tuple[int, ...],
        sun: tuple[float, float],
        cloud_height: float,
        factor: int = 1,
    ) -> SkyMasks:
        """Masks of areas (indices; stacked top to bottom as a :class:`Canopy` stacks them),
        on the 30 m grid (``factor`` 1) or on a grid of blocks of ``factor`` pixels.

        ``sun`` is (zenith, azimuth) in degrees; ``cloud_height`` (m) sets how far shadows
        fall from their clouds."""
        rows, cols, texture = self._sampling(tuple(areas), factor)
        z_cloud = ndimage.map_coordinates(field, [rows, cols], order=1, mode="nearest") + texture
        zenith, azimuth = sun
        reach = cloud_height * np.tan(np.radians(min(zenith, 80.0))) / CLOUD_CELL
        d_col = reach * np.sin(np.radians(azimuth))
        d_row = -reach * np.cos(np.radians(azimuth))
        z_shadow = (
            ndimage.map_coordinates(field, [rows + d_row, cols + d_col], order=1, mode="nearest")
            + texture
        )
        cloud = z_cloud > 0
        shadow = (z_shadow > 0) & ~cloud
        adjacent = ((z_cloud > -0.3) | (z_shadow > -0.3)) & ~cloud & ~shadow
        thickness = np.clip(z_cloud, 0.0, 1.0).astype("float32")
        return SkyMasks(cloud, shadow, adjacent, thickness)

    def _sampling(self, areas: tuple[int, ...], factor: int) -> tuple[np.ndarray, ...]:
        """Where the areas' pixels (or blocks of ``factor`` pixels) fall in the cloud grid, and
        the fine texture there (stacked top to bottom)."""
        key = (areas, factor)
        if key not in self._coords:
            rows, cols, textures = [], [], []
            for index in areas:
                area = self.world.areas[index]
                ny, nx = (n // factor for n in area.shape)
                scale = factor * PIXEL / CLOUD_CELL
                r = (area.row / factor + np.arange(ny) + 0.5) * scale - 0.5
                c = (area.col / factor + np.arange(nx) + 0.5) * scale - 0.5
                r2, c2 = np.meshgrid(r, c, indexing="ij")
                rows.append(r2.astype("float32"))
                cols.append(c2.astype("float32"))
                textures.append(FINE_TEXTURE * block_mean(self._texture[index], factor))
            self._coords[key] = tuple(np.concatenate(a) for a in (rows, cols, textures))
        return self._coords[key]


@dataclass(frozen=True)
class HlsScene:
    """One simulated HLS L30 scene of the domain: scaled reflectance and Fmask."""

    when: dt.datetime
    platform: str
    bands: dict[str, np.ndarray]
    """Digital numbers (int16, scale 0.0001, nodata -9999) by :data:`BANDS` name."""
    fmask: np.ndarray
    """Fmask byte (uint8, 255 outside the world)."""
    cloud_cover: float
    """Percent of the observed pixels flagged cloud."""


def simulate_hls_scene(
    world: World,
    stacks: list[tuple[list[tuple[int, slice]], np.ndarray, np.ndarray, np.ndarray, SkyMasks]],
    when: dt.datetime,
    platform: str,
    rng: np.random.Generator,
) -> HlsScene:
    """Compose a scene over the domain from stacked areas: for each stack its parts (area
    index, rows), 30 m reflectance (band, y, x), visible snow, water pixels and sky."""
    n = world.size.domain_pixels
    dn = np.full((len(BANDS), n, n), -9999, dtype="int16")
    fmask = np.full((n, n), 255, dtype="uint8")
    gain = 1.0 + rng.normal(0.0, 0.015, size=len(BANDS)).astype("float32")
    clouds = observed = 0
    for parts, rho, snow, water, sky in stacks:
        noise = rng.standard_normal(rho.shape, dtype="float32")
        seen = rho * gain[:, None, None] + 0.004 * noise
        seen = np.where(sky.shadow[None], seen * _SHADOW, seen)
        top = _CLOUD_TOP[:, None, None] * (0.7 + 0.6 * sky.thickness[None])
        seen = np.where(sky.cloud[None], top + 0.01 * noise, seen)
        seen = np.where(sky.adjacent[None], seen + 0.015, seen)
        digital = np.clip(np.round(seen * 10_000), -100, 16_000).astype("int16")
        bits = (
            (sky.cloud.astype("uint8") << 1)
            | (sky.adjacent.astype("uint8") << 2)
            | (sky.shadow.astype("uint8") << 3)
            | (((snow > 0.5) & ~sky.cloud).astype("uint8") << 4)
            | (water.astype("uint8") << 5)
            | np.uint8(1 << 6)  # aerosol level: low
        )
        for index, rows in parts:
            target = world.areas[index].slices
            dn[:, target[0], target[1]] = digital[:, rows]
            fmask[target] = bits[rows]
        clouds += int(sky.cloud.sum())
        observed += sky.cloud.size
    bands = {name: dn[i] for i, name in enumerate(BANDS)}
    return HlsScene(when, platform, bands, fmask, round(100.0 * clouds / observed, 2))


class ModisGrid:
    """The MODIS sinusoidal window over the domain and the point-spread function that maps the
    areas' 120 m blocks to its 500 m pixels."""

    BLOCK = 4  # 30 m pixels per PSF input cell (120 m)

    def __init__(self, world: World, sigma_pixels: float = 0.5):
        from pyproj import Transformer

        to_sin = Transformer.from_crs(CRS, SINUSOIDAL_WKT, always_xy=True)
        x0, y0, x1, y1 = world.domain_bounds()
        cx, cy = to_sin.transform([x0, x1, x0, x1], [y0, y0, y1, y1])
        self.h = int((np.mean(cx) - MODIS_ORIGIN[0]) // MODIS_TILE)
        self.v = int((MODIS_ORIGIN[1] - np.mean(cy)) // MODIS_TILE)
        tile_x0 = MODIS_ORIGIN[0] + self.h * MODIS_TILE
        tile_y0 = MODIS_ORIGIN[1] - self.v * MODIS_TILE
        c0 = int(np.floor((min(cx) - tile_x0) / MODIS_PIXEL)) - 2
        c1 = int(np.ceil((max(cx) - tile_x0) / MODIS_PIXEL)) + 2
        r0 = int(np.floor((tile_y0 - max(cy)) / MODIS_PIXEL)) - 2
        r1 = int(np.ceil((tile_y0 - min(cy)) / MODIS_PIXEL)) + 2
        c0, r0 = c0 - c0 % 2, r0 - r0 % 2  # the 1 km state grid shares the window's corner
        c1, r1 = c1 + (c1 - c0) % 2, r1 + (r1 - r0) % 2
        if c0 < 0 or r0 < 0 or c1 > 2400 or r1 > 2400:
            raise ValueError("the domain crosses a MODIS tile edge; move or shrink it")
        self.window = (r0, c0)
        self.shape = (r1 - r0, c1 - c0)
        self.origin = (tile_x0 + c0 * MODIS_PIXEL, tile_y0 - r0 * MODIS_PIXEL)

        blocks_per_area, rows_list, cols_list, weights = [], [], [], []
        offset = 0
        for area in world.areas:
            xs, ys = world.area_xy(area, self.BLOCK)
            sx, sy = to_sin.transform(xs.ravel(), ys.ravel())
            fc = (np.asarray(sx) - self.origin[0]) / MODIS_PIXEL - 0.5
            fr = (self.origin[1] - np.asarray(sy)) / MODIS_PIXEL - 0.5
            nearest_r, nearest_c = np.round(fr).astype(int), np.round(fc).astype(int)
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    tr, tc = nearest_r + dr, nearest_c + dc
                    w = np.exp(-0.5 * ((fr - tr) ** 2 + (fc - tc) ** 2) / sigma_pixels**2)
                    inside = (tr >= 0) & (tr < self.shape[0]) & (tc >= 0) & (tc < self.shape[1])
                    rows_list.append((tr * self.shape[1] + tc)[inside])
                    cols_list.append((offset + np.arange(fr.size))[inside])
                    weights.append(w[inside])
            blocks_per_area.append(xs.shape)
            offset += fr.size
        matrix = sparse.csr_matrix(
            (np.concatenate(weights), (np.concatenate(rows_list), np.concatenate(cols_list))),
            shape=(self.shape[0] * self.shape[1], offset),
        )
        full = 2 * np.pi * sigma_pixels**2 / (self.BLOCK * PIXEL / MODIS_PIXEL) ** 2
        total = np.asarray(matrix.sum(axis=1)).ravel()
        self.valid = (total / full >= 0.9).reshape(self.shape)
        scale = np.where(total > 0, 1.0 / np.maximum(total, 1e-12), 0.0)
        self.psf = (sparse.diags(scale) @ matrix).tocsr().astype("float32")
        self.blocks_per_area = blocks_per_area

    @property
    def transform(self):
        from affine import Affine

        return Affine(MODIS_PIXEL, 0.0, self.origin[0], 0.0, -MODIS_PIXEL, self.origin[1])

    @property
    def state_transform(self):
        from affine import Affine

        return Affine(2 * MODIS_PIXEL, 0.0, self.origin[0], 0.0, -2 * MODIS_PIXEL, self.origin[1])

    def aggregate(self, per_area: list[np.ndarray]) -> np.ndarray:
        """Apply the PSF to per-area block arrays (..., by, bx) → (..., rows, cols)."""
        lead = per_area[0].shape[:-2]
        stacked = np.concatenate(
            [a.reshape(int(np.prod(lead)) if lead else 1, -1) for a in per_area], axis=1
        )
        out = (self.psf @ stacked.T).T
        return out.reshape(*lead, *self.shape)


def simulate_modis_day(
    grid: ModisGrid,
    reflectance: np.ndarray,
    cloud: np.ndarray,
    shadow: np.ndarray,
    snow: np.ndarray,
    water: np.ndarray,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """MOD09GA-like 500 m bands (int16, scale 0.0001, nodata -28672) and 1 km state (uint16).

    Inputs are already on the MODIS window: ``reflectance`` (band, rows, cols) in :data:`BANDS`
    order and the fractions of cloud, shadow, snow and water in each pixel.
    """
    valid = grid.valid
    view = rng.uniform(-1.0, 1.0)
    brdf = 1.0 + np.array([0.03, 0.03, 0.03, 0.03, 0.06, 0.04, 0.04]) * view
    rho = reflectance * brdf[:, None, None] + 0.004 * rng.standard_normal(reflectance.shape)
    rho = (1 - cloud)[None] * rho + cloud[None] * _CLOUD_TOP[:, None, None]
    rho = np.where(shadow[None] > 0, rho * (1 - (1 - _SHADOW) * shadow[None]), rho)
    modis = {
        "sur_refl_b01_1": rho[BANDS.index("red")],
        "sur_refl_b02_1": rho[BANDS.index("nir")],
        "sur_refl_b03_1": rho[BANDS.index("blue")],
        "sur_refl_b04_1": rho[BANDS.index("green")],
        "sur_refl_b05_1": 0.7 * rho[BANDS.index("nir")] + 0.3 * rho[BANDS.index("swir16")],
        "sur_refl_b06_1": rho[BANDS.index("swir16")],
        "sur_refl_b07_1": rho[BANDS.index("swir22")],
    }
    bands = {
        key: np.where(valid, np.clip(np.round(v * 10_000), -100, 16_000), -28672).astype("int16")
        for key, v in modis.items()
    }

    # 1 km state: fractions over 2 x 2 pixels (fill pixels do not count).
    def coarse(a):
        a = np.where(valid, a, np.nan)
        return np.nanmean(a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2), axis=(1, 3))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-fill blocks
        cf, sf, snf, wf = (coarse(a) for a in (cloud, shadow, snow, water))
    observed = np.isfinite(cf)
    cf, sf, snf, wf = (np.nan_to_num(a) for a in (cf, sf, snf, wf))
    cloud_state = np.where(cf < 0.05, 0, np.where(cf > 0.6, 1, 2)).astype("uint16")
    cloud_state[~observed] = 3  # not set
    cloudy = cloud_state != 0
    near_cloud = ndimage.binary_dilation(cloudy & observed, iterations=1) & ~cloudy
    cirrus = (rng.random() < 0.05) * 2
    snowy = snf > 0.5
    state = (
        cloud_state
        | ((sf > 0.25).astype("uint16") << 2)
        | (np.where(wf > 0.5, 3, 1).astype("uint16") << 3)
        | (np.uint16(1) << 6)  # aerosol: low
        | (np.uint16(cirrus) << 8)
        | ((cf > 0.6).astype("uint16") << 10)
        | (snowy.astype("uint16") << 12)
        | (near_cloud.astype("uint16") << 13)
        | (snowy.astype("uint16") << 15)
    )
    return bands, state.astype("uint16")

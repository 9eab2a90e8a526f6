"""What the satellites see of the demo world: clouds, HLS L30 scenes and MODIS daily pixels.

Neither sensor is made easier than the real one:

* **Clouds** — one cloud field per day over the domain (a Gaussian random field at 240 m with a
  fine 30 m texture), thresholded so that the cloud fraction follows the reanalysis cloudiness;
  how far above the threshold sets a cloud's thickness (thin at its edges and in small puffs);
  on some days a thin, semi-transparent layer (haze, thin cirrus) covers part of the sky;
  shadows are the same field seen from the ground towards the sun (cloud height 1-4 km).
* **HLS L30** — Landsat 8 (and Landsat 9 from 2022) every 16 days each; surface reflectance
  with a per-scene calibration error and pixel noise; thin clouds are semi-transparent, thick
  ones bright; shadows as dark as their cloud is thick. **Fmask** as HLS v2.0 lays out its
  bits, with Fmask's errors: it misses cloud thinner than a per-scene threshold and the faint
  shadows of such cloud, projects shadows with a misjudged cloud height, flags bright ground
  (towns, bright dry soil, snow edges) as cloud in some scenes, and buffers what it flags by
  a few pixels (the adjacency bit). :func:`fmask_clear` is the rule the product applies.
* **MODIS (Terra, MOD09GA)** — every day on the MODIS sinusoidal grid (tile h28v05). Terra's
  16-day repeat sets the day's view: the domain is seen from nadir to ~62° view zenith,
  east or west of the ground track (:func:`terra_view`). Each observation is a Gaussian
  approximation of the MODIS point-spread function whose along-scan and along-track widths
  grow as 1/cos²θ and 1/cosθ; observations are gridded as MOD09GA grids them — off the cell
  centres by a per-day sub-pixel offset, and at large scan angles several cells take the same,
  neighbouring, observation. Reflectance is anisotropic (Ross-Thick/Li-Sparse kernels, by band
  and for forest or open land, forward and backscatter differing) and seen through MODIS's own
  spectral responses (a little different from OLI's), with band-specific noise; cloud
  contaminates partly cloudy pixels, and the 1 km state QA flags them (the thin layer as
  cirrus, where it is not too thin for the cirrus test).
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
    "FMASK_NOT_CLEAR",
    "GRID_OFFSETS",
    "MODIS_PIXEL",
    "SINUSOIDAL_WKT",
    "TERRA_REPEAT",
    "CloudSky",
    "FmaskSkill",
    "HlsScene",
    "ModisFootprint",
    "ModisGrid",
    "ModisView",
    "SkyMasks",
    "fmask_clear",
    "hls_overpasses",
    "modis_anisotropy",
    "terra_cycle_day",
    "terra_view",
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
# A cloud this thick (field units above its threshold) is opaque; thinner, it lets the ground
# show through; its shadow is as deep as the cloud is thick.
_OPAQUE = 0.35
_MIN_OPACITY = 0.015
_THIN_LAYER = 0.035  # the thin layer's greatest thickness: an opacity of 0.1
LANDSAT9_FROM = dt.date(2022, 1, 1)

#: Fmask bits (HLS v2.0 user guide, Table 9) that make a pixel not clear, as the product's
#: QA rules for ``hls-l30`` say (catalogs/planetary-computer.yaml: cloud, adjacent_cloud,
#: cloud_shadow, snow_ice); 255 is fill.
FMASK_NOT_CLEAR = 0b0001_1110
_FMASK_BUFFER = 3  # pixels of the adjacency buffer around what Fmask flags


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
    """Near a cloud or shadow (hazy, a little brighter): the truth, not Fmask's buffer."""
    thickness: np.ndarray
    """How far inside the cloud (0 at its edge, 1 deep inside): opacity and brightness."""
    shadow_depth: np.ndarray
    """Thickness of the cloud that casts the shadow (0 outside shadows): how dark it is."""
    thin: np.ndarray
    """Under the thin layer only (part of :attr:`cloud`; thickness at most 0.035)."""
    fmask_caster: np.ndarray | None = None
    """Thickness of the cloud Fmask projects onto the pixel with its estimate of the cloud
    height (where it puts shadows); None unless asked for."""

    @property
    def opacity(self) -> np.ndarray:
        """How much of the ground's light a cloud takes (0 clear, 1 opaque; float32)."""
        opaque = np.clip(self.thickness / _OPAQUE, _MIN_OPACITY, 1.0)
        return np.where(self.cloud, opaque, 0.0).astype("float32")


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
        """The day's cloud fields minus their local thresholds, cloud where > 0 (2 × n × n):
        the clouds, and a thin layer (haze, thin cirrus) over a share of the sky drawn for
        the day (most days little, some days much)."""
        g = fractal_field((self.n, self.n), CLOUD_CELL, self.rng, beta=3.4, scale_max=30_000)
        cloudiness = np.clip(self._cloudiness(self.reanalysis.cloud[index]), 0.0, 1.0)
        threshold = ndtri(np.clip(1.0 - cloudiness, 1e-6, 1 - 1e-6))
        thin = fractal_field((self.n, self.n), CLOUD_CELL, self.rng, beta=3.0, scale_max=20_000)
        thin_cover = float(np.clip(self.rng.beta(0.5, 3.5), 1e-6, 1 - 1e-6))
        return np.stack([g - threshold, thin - ndtri(1.0 - thin_cover)]).astype("float32")

    def masks(
        self,
        field: np.ndarray,
        areas: tuple[int, ...],
        sun: tuple[float, float],
        cloud_height: float,
        factor: int = 1,
        fmask_height: float | None = None,
    ) -> SkyMasks:
        """Masks of areas (indices; stacked top to bottom as a :class:`Canopy` stacks them),
        on the 30 m grid (``factor`` 1) or on a grid of blocks of ``factor`` pixels.

        ``sun`` is (zenith, azimuth) in degrees; ``cloud_height`` (m) sets how far shadows
        fall from their clouds, ``fmask_height`` (m) where Fmask believes they fall."""
        rows, cols, texture = self._sampling(tuple(areas), factor)
        clouds, layer = field
        z_cloud = ndimage.map_coordinates(clouds, [rows, cols], order=1, mode="nearest") + texture
        z_thin = ndimage.map_coordinates(layer, [rows, cols], order=1, mode="nearest")
        zenith, azimuth = sun
        reach = np.tan(np.radians(min(zenith, 80.0))) / CLOUD_CELL
        d_col = reach * np.sin(np.radians(azimuth))
        d_row = -reach * np.cos(np.radians(azimuth))

        def cast(height: float) -> np.ndarray:
            shifted = [rows + height * d_row, cols + height * d_col]
            return ndimage.map_coordinates(clouds, shifted, order=1, mode="nearest") + texture

        z_shadow = cast(cloud_height)
        thin = (z_thin > 0) & (z_cloud <= 0)  # the thin layer casts no shadow worth the name
        cloud = (z_cloud > 0) | thin
        shadow = (z_shadow > 0) & ~cloud
        adjacent = ((z_cloud > -0.3) | (z_shadow > -0.3)) & ~cloud & ~shadow
        thickness = np.where(
            thin, np.clip(_THIN_LAYER * z_thin, 0.005, _THIN_LAYER), np.clip(z_cloud, 0.0, 1.0)
        ).astype("float32")
        shadow_depth = np.where(shadow, np.clip(z_shadow, 0.0, 1.0), 0.0).astype("float32")
        caster = None
        if fmask_height is not None:
            caster = np.clip(cast(fmask_height), 0.0, 1.0).astype("float32")
        return SkyMasks(cloud, shadow, adjacent, thickness, shadow_depth, thin, caster)

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


def fmask_clear(fmask: np.ndarray) -> np.ndarray:
    """Where the product counts an HLS pixel clear: Fmask has data and none of
    :data:`FMASK_NOT_CLEAR` is set (as :func:`unique_cube.inputs.cube.decode_qa` decides)."""
    return (fmask != 255) & (fmask & FMASK_NOT_CLEAR == 0)


@dataclass(frozen=True)
class FmaskSkill:
    """How well Fmask does in one scene."""

    thin: float
    """Cloud thinner than this (thickness units) is missed, and so are its shadows."""
    height_error: float
    """Fmask's cloud height over the true one (shadows projected that much too far)."""
    bright: float
    """Visible reflectance (3 x 3 pixel mean) above which bright ground is taken for cloud."""

    @classmethod
    def draw(cls, rng: np.random.Generator) -> FmaskSkill:
        return cls(
            thin=float(rng.uniform(0.01, 0.04)),
            # Now and then the shadow match fails and the height is far off.
            height_error=float(
                np.clip(rng.lognormal(0.0, 0.6 if rng.random() < 0.15 else 0.15), 0.4, 2.5)
            ),
            bright=float(rng.uniform(0.12, 0.30)),
        )


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
    cloudy_pixels: int
    """Observed pixels truly under cloud or in cloud shadow."""
    omitted_pixels: int
    """Of those, the ones Fmask leaves clear (:func:`fmask_clear`)."""


def simulate_hls_scene(
    world: World,
    stacks: list[tuple[list[tuple[int, slice]], np.ndarray, np.ndarray, np.ndarray, SkyMasks]],
    when: dt.datetime,
    platform: str,
    rng: np.random.Generator,
    skill: FmaskSkill | None = None,
) -> HlsScene:
    """Compose a scene over the domain from stacked areas: for each stack its parts (area
    index, rows), 30 m reflectance (band, y, x), visible snow, water pixels and sky (with
    ``fmask_caster``: Fmask's shadows). ``skill``: Fmask's errors (drawn from ``rng`` when not
    given)."""
    skill = skill or FmaskSkill.draw(rng)
    n = world.size.domain_pixels
    dn = np.full((len(BANDS), n, n), -9999, dtype="int16")
    fmask = np.full((n, n), 255, dtype="uint8")
    gain = 1.0 + rng.normal(0.0, 0.015, size=len(BANDS)).astype("float32")
    visible = [BANDS.index(b) for b in ("blue", "green", "red")]
    flagged = observed = cloudy = omitted = 0
    for parts, rho, snow, water, sky in stacks:
        noise = rng.standard_normal(rho.shape, dtype="float32")
        surface = rho * gain[:, None, None] + 0.004 * noise
        shade = 1.0 - (1.0 - _SHADOW) * np.clip(sky.shadow_depth / _OPAQUE, 0.25, 1.0)
        seen = np.where(sky.shadow[None], surface * shade[None], surface)
        opacity = sky.opacity[None]
        top = _CLOUD_TOP[:, None, None] * (0.7 + 0.6 * sky.thickness[None]) + 0.01 * noise
        seen = np.where(sky.cloud[None], seen + opacity * (top - seen), seen)
        seen = np.where(sky.adjacent[None], seen + 0.015, seen)
        digital = np.clip(np.round(seen * 10_000), -100, 16_000).astype("int16")

        # Fmask: what it can see of the clouds, their shadows where it projects them, bright
        # ground taken for cloud (snow-covered ground is snow to it), then its buffer.
        bright = ndimage.uniform_filter(surface[visible].mean(axis=0), size=3)
        cloud = (sky.cloud & (sky.thickness >= skill.thin)) | (
            (bright > skill.bright) & (snow <= 0.5) & ~water
        )
        caster = sky.fmask_caster if sky.fmask_caster is not None else sky.shadow_depth
        shadow = (caster >= skill.thin) & (caster > 0) & ~cloud
        adjacent = _buffer(cloud | shadow, parts) & ~cloud & ~shadow
        bits = (
            (cloud.astype("uint8") << 1)
            | (adjacent.astype("uint8") << 2)
            | (shadow.astype("uint8") << 3)
            | (((snow > 0.5) & ~cloud).astype("uint8") << 4)
            | (water.astype("uint8") << 5)
            | np.uint8(1 << 6)  # aerosol level: low
        )
        truly = sky.cloud | sky.shadow
        cloudy += int(truly.sum())
        omitted += int((truly & fmask_clear(bits)).sum())
        for index, rows in parts:
            target = world.areas[index].slices
            dn[:, target[0], target[1]] = digital[:, rows]
            fmask[target] = bits[rows]
        flagged += int(cloud.sum())
        observed += cloud.size
    bands = {name: dn[i] for i, name in enumerate(BANDS)}
    cover = round(100.0 * flagged / observed, 2)
    return HlsScene(when, platform, bands, fmask, cover, cloudy, omitted)


def _buffer(mask: np.ndarray, parts: list[tuple[int, slice]]) -> np.ndarray:
    """``mask`` grown by :data:`_FMASK_BUFFER` pixels, within each stacked area."""
    out = np.zeros_like(mask)
    size = 2 * _FMASK_BUFFER + 1
    for _, rows in parts:
        out[rows] = ndimage.maximum_filter(mask[rows], size=size, mode="constant")
    return out


# Terra: 705 km high, 98.2° inclination, 233 orbits in its 16-day repeat, descending over the
# domain at about 10:30 local solar time (a little earlier at 37° N).
_EARTH_RADIUS = 6_371_007.0
_TERRA_ALTITUDE = 705_000.0
_TERRA_INCLINATION = 98.2
_TERRA_ORBITS_PER_DAY = 233 / 16
_TERRA_SOLAR_HOUR = 10.35
TERRA_REPEAT = 16
_TERRA_CYCLE_START = dt.date(2000, 1, 1)


@dataclass(frozen=True)
class ModisView:
    """How Terra sees a place on one day of its 16-day repeat cycle."""

    cycle_day: int
    cross_track: float
    """Metres from the ground track to the place (positive: east of it)."""
    scan_angle: float
    """Degrees off nadir at the satellite."""
    view_zenith: float
    """Degrees from the zenith at the ground (the scan angle plus the Earth's curvature)."""
    view_azimuth: float
    """Degrees clockwise from north, from the ground towards the satellite."""
    heading: float
    """Degrees clockwise from north: the ground track's direction (descending)."""
    utc_hours: float
    """When Terra passes, in hours after 0 UTC."""

    def when(self, day: dt.date) -> dt.datetime:
        return dt.datetime.combine(day, dt.time()) + dt.timedelta(hours=self.utc_hours)


def terra_cycle_day(day: dt.date) -> int:
    """The day's place in Terra's 16-day repeat cycle (0-15)."""
    return (day - _TERRA_CYCLE_START).days % TERRA_REPEAT


def terra_view(cycle_day: int, lat: float, lon: float) -> ModisView:
    """Terra's view of (lat, lon) on day ``cycle_day`` of its repeat cycle.

    The ground track moves 9/16 of the track spacing each day, so over the 16 days a place is
    seen once from each of 16 cross-track distances, from near nadir to the swath's edge
    (~±1100 km at 37° N: ~62° view zenith), east and west of the track alternately."""
    phi = np.radians(lat)
    spacing = 2 * np.pi * _EARTH_RADIUS * np.cos(phi) / _TERRA_ORBITS_PER_DAY
    tilt = np.arcsin(np.cos(np.radians(_TERRA_INCLINATION)) / np.cos(phi))  # west of south
    phase = lon / 360.0 * _TERRA_ORBITS_PER_DAY
    along_parallel = ((phase + cycle_day * 9 / 16) % 1.0 - 0.5) * spacing
    cross = along_parallel * np.cos(tilt)
    arc = abs(cross) / _EARTH_RADIUS
    scan = np.arctan2(
        _EARTH_RADIUS * np.sin(arc), _EARTH_RADIUS + _TERRA_ALTITUDE - _EARTH_RADIUS * np.cos(arc)
    )
    heading = (180.0 - np.degrees(tilt)) % 360.0
    # The satellite is on the far side of the track from the place.
    view_azimuth = (heading + (90.0 if cross > 0 else -90.0) + 180.0) % 360.0
    solar = _TERRA_SOLAR_HOUR + np.degrees(along_parallel / (_EARTH_RADIUS * np.cos(phi))) / 15
    return ModisView(
        cycle_day=cycle_day,
        cross_track=float(cross),
        scan_angle=float(np.degrees(scan)),
        view_zenith=float(np.degrees(scan + arc)),
        view_azimuth=float(view_azimuth),
        heading=float(heading),
        utc_hours=float(solar - lon / 15.0),
    )


# Ross-Thick/Li-Sparse-R kernel weights relative to the isotropic one (f_vol/f_iso,
# f_geo/f_iso), BANDS order, for open land (crops, grass, soil, towns) and for forest (more
# shadow-hiding in the visible, more volume scattering in the NIR), after MCD43 retrievals.
_BRDF_VOL = np.array(
    [[0.30, 0.30, 0.35, 0.30, 0.45, 0.28, 0.25], [0.45, 0.45, 0.50, 0.50, 0.65, 0.55, 0.50]]
)
_BRDF_GEO = np.array(
    [[0.20, 0.20, 0.18, 0.22, 0.10, 0.16, 0.18], [0.28, 0.28, 0.22, 0.30, 0.12, 0.18, 0.24]]
)


def _kernels(sun_zenith, view_zenith, relative_azimuth) -> tuple[float, float]:
    """Ross-Thick and Li-Sparse-Reciprocal kernels (h/b 2, b/r 1); angles in radians, the
    relative azimuth 0 when the sensor looks with the sun at its back (backscatter)."""
    cs, cv = np.cos(sun_zenith), np.cos(view_zenith)
    ss, sv = np.sin(sun_zenith), np.sin(view_zenith)
    cos_phase = np.clip(cs * cv + ss * sv * np.cos(relative_azimuth), -1.0, 1.0)
    phase = np.arccos(cos_phase)
    k_vol = ((np.pi / 2 - phase) * cos_phase + np.sin(phase)) / (cs + cv) - np.pi / 4
    ts, tv = np.tan(sun_zenith), np.tan(view_zenith)
    sec = 1 / cs + 1 / cv
    d = np.sqrt(max(ts**2 + tv**2 - 2 * ts * tv * np.cos(relative_azimuth), 0.0))
    cos_t = np.clip(2.0 * np.sqrt(d**2 + (ts * tv * np.sin(relative_azimuth)) ** 2) / sec, -1, 1)
    t = np.arccos(cos_t)
    overlap = (t - np.sin(t) * cos_t) * sec / np.pi
    k_geo = overlap - sec + 0.5 * (1 + cos_phase) / (cs * cv)
    return float(k_vol), float(k_geo)


def modis_anisotropy(
    view: ModisView, sun: tuple[float, float], rng: np.random.Generator | None = None
) -> np.ndarray:
    """Reflectance seen at the day's view over reflectance seen from nadir (same sun), per
    band: (2, band) for open land and forest; ``rng`` varies the kernel weights by scene."""
    sun_zenith, sun_azimuth = sun
    relative = np.radians(view.view_azimuth - sun_azimuth)
    sz = np.radians(min(sun_zenith, 75.0))
    k_vol, k_geo = _kernels(sz, np.radians(view.view_zenith), relative)
    n_vol, n_geo = _kernels(sz, 0.0, 0.0)
    vol, geo = _BRDF_VOL, _BRDF_GEO
    if rng is not None:
        vol = vol * rng.lognormal(0.0, 0.15, size=(2, 1))
        geo = geo * rng.lognormal(0.0, 0.15, size=(2, 1))
    return (1 + vol * k_vol + geo * k_geo) / (1 + vol * n_vol + geo * n_geo)


# MODIS bands from the OLI-like bands (BANDS order): narrower or shifted responses, so a
# little of the neighbouring band (band 5, 1240 nm, OLI lacks: between NIR and SWIR 1).
_MODIS_RESPONSE = {
    "sur_refl_b01_1": (0.00, 0.00, 0.06, 0.94, 0.00, 0.00, 0.00),
    "sur_refl_b02_1": (0.00, 0.00, 0.00, 0.01, 0.99, 0.00, 0.00),
    "sur_refl_b03_1": (0.15, 0.85, 0.00, 0.00, 0.00, 0.00, 0.00),
    "sur_refl_b04_1": (0.00, -0.02, 1.04, -0.02, 0.00, 0.00, 0.00),
    "sur_refl_b05_1": (0.00, 0.00, 0.00, 0.00, 0.55, 0.45, 0.00),
    "sur_refl_b06_1": (0.00, 0.00, 0.00, 0.00, 0.00, 0.97, 0.03),
    "sur_refl_b07_1": (0.00, 0.00, 0.00, 0.00, 0.00, 0.08, 0.92),
}
# Per-band noise: absolute, plus 2 % of the reflectance (bands 1-2 come from 250 m detectors).
_MODIS_NOISE = np.array([0.003, 0.004, 0.006, 0.005, 0.007, 0.008, 0.009])
_MODIS_NOISE_RELATIVE = 0.02
_PSF_SIGMA = 0.5  # MODIS pixels, at nadir (the triangular along-scan response's Gaussian)
_PSF_TRUNCATE = 3.0  # sigmas
#: Gridding offsets of the observation lattice (fractions of its spacing) a day can have.
GRID_OFFSETS = ((0.12, 0.31), (0.74, 0.05), (0.37, 0.66))


@dataclass(frozen=True)
class ModisFootprint:
    """One day's observations over the MODIS window and how they are gridded."""

    view: ModisView
    psf: sparse.csr_matrix
    """Observations (rows) from the areas' 120 m blocks (columns), rows summing to 1."""
    cell_obs: np.ndarray
    """Which observation (row of :attr:`psf`) each window cell holds; -1: none (fill)."""
    shape: tuple[int, int]

    @property
    def n_obs(self) -> int:
        return self.psf.shape[0]

    @property
    def valid(self) -> np.ndarray:
        """Window cells with an observation (bool)."""
        return (self.cell_obs >= 0).reshape(self.shape)

    def to_cells(self, per_obs: np.ndarray) -> np.ndarray:
        """Observation values (..., obs) on the window's cells (..., rows, cols), 0 at fill."""
        out = np.where(self.cell_obs >= 0, per_obs[..., np.maximum(self.cell_obs, 0)], 0.0)
        return out.reshape(*per_obs.shape[:-1], *self.shape).astype("float32")


class ModisGrid:
    """The MODIS sinusoidal window over the domain, and the day's footprints that map the
    areas' 120 m blocks to its 500 m cells (:meth:`footprint`, one per view and gridding
    offset, each built once)."""

    BLOCK = 4  # 30 m pixels per PSF input cell (120 m)

    def __init__(self, world: World):
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

        # Cell centres on the ground (UTM metres), and each area's block grid there.
        to_utm = Transformer.from_crs(SINUSOIDAL_WKT, CRS, always_xy=True)
        cols, rows = np.meshgrid(np.arange(self.shape[1]) + 0.5, np.arange(self.shape[0]) + 0.5)
        ux, uy = to_utm.transform(
            (self.origin[0] + cols * MODIS_PIXEL).ravel(),
            (self.origin[1] - rows * MODIS_PIXEL).ravel(),
        )
        self._cells = np.stack([np.asarray(ux), np.asarray(uy)])
        self._blocks = []  # (first column, x of the first block centre, y, rows, cols)
        offset = 0
        for area in world.areas:
            xs, ys = world.area_xy(area, self.BLOCK)
            self._blocks.append((offset, float(xs[0, 0]), float(ys[0, 0]), *xs.shape))
            offset += xs.size
        self.n_blocks = offset
        self.blocks_per_area = [b[3:] for b in self._blocks]
        self._centre = (0.5 * (x0 + x1), 0.5 * (y0 + y1))
        lon, lat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(*self._centre)
        self.lat, self.lon = float(lat), float(lon)
        self._footprints: dict[tuple[int, int], ModisFootprint] = {}

    @property
    def transform(self):
        from affine import Affine

        return Affine(MODIS_PIXEL, 0.0, self.origin[0], 0.0, -MODIS_PIXEL, self.origin[1])

    @property
    def state_transform(self):
        from affine import Affine

        return Affine(2 * MODIS_PIXEL, 0.0, self.origin[0], 0.0, -2 * MODIS_PIXEL, self.origin[1])

    def view(self, day: dt.date) -> ModisView:
        """Terra's view of the domain's centre on ``day``."""
        return terra_view(terra_cycle_day(day), self.lat, self.lon)

    def footprint(self, cycle_day: int, offset: int = 0) -> ModisFootprint:
        """The footprint of day ``cycle_day`` of the repeat cycle with gridding offset
        ``offset`` (an index of :data:`GRID_OFFSETS`); built on first use."""
        key = (cycle_day, offset)
        if key not in self._footprints:
            self._footprints[key] = self._build(terra_view(cycle_day, self.lat, self.lon), offset)
        return self._footprints[key]

    def _build(self, view: ModisView, offset: int) -> ModisFootprint:
        """Observation centres on a lattice along scan and track, each cell taking the nearest
        (MOD09GA keeps the observation that covers the cell most), and a Gaussian PSF."""
        cos_v = np.cos(np.radians(view.view_zenith))
        heading = np.radians(view.heading)
        track = np.array([np.sin(heading), np.cos(heading)])
        scan = np.array([np.cos(heading), -np.sin(heading)])
        # Along scan, samples spread and grow as 1/cos²θ; along track, the footprint grows as
        # 1/cosθ while successive scans overlap (the bow-tie), keeping the sample spacing.
        spacing = np.array([MODIS_PIXEL / cos_v**2, MODIS_PIXEL])
        sigma = _PSF_SIGMA * MODIS_PIXEL * np.array([1 / cos_v**2, 1 / cos_v])
        axes = np.stack([scan, track])  # (2 axes, x/y)
        origin = np.asarray(self._centre) + (np.asarray(GRID_OFFSETS[offset]) * spacing) @ axes
        lattice = np.round((axes @ (self._cells - origin[:, None])) / spacing[:, None])
        lattice = lattice.astype("int64") + 2**20  # non-negative: one int64 key per site
        keys, cell_obs = np.unique(lattice[0] * 2**21 + lattice[1], return_inverse=True)
        index = np.stack(np.divmod(keys, 2**21)) - 2**20
        centres = origin[:, None] + axes.T @ (index * spacing[:, None])

        # Half extents of the truncated ellipse along x and y.
        reach = _PSF_TRUNCATE * np.sqrt((sigma[:, None] ** 2 * axes**2).sum(axis=0))
        step = self.BLOCK * PIXEL
        rows_out, cols_out, weights = [], [], []
        for first, bx0, by0, ny, nx in self._blocks:
            near = (
                (centres[0] > bx0 - step - reach[0])
                & (centres[0] < bx0 + nx * step + reach[0])
                & (centres[1] < by0 + step + reach[1])
                & (centres[1] > by0 - ny * step - reach[1])
            )
            obs = np.flatnonzero(near)
            if obs.size == 0:
                continue
            kc, kr = (int(np.ceil(r / step)) for r in reach)
            dc, dr = np.meshgrid(np.arange(-kc, kc + 1), np.arange(-kr, kr + 1))
            c = np.round((centres[0, obs] - bx0) / step).astype(int)[:, None] + dc.ravel()
            r = np.round((by0 - centres[1, obs]) / step).astype(int)[:, None] + dr.ravel()
            dx = bx0 + c * step - centres[0, obs, None]
            dy = by0 - r * step - centres[1, obs, None]
            q = ((dx * scan[0] + dy * scan[1]) / sigma[0]) ** 2 + (
                (dx * track[0] + dy * track[1]) / sigma[1]
            ) ** 2
            keep = (q <= _PSF_TRUNCATE**2) & (c >= 0) & (c < nx) & (r >= 0) & (r < ny)
            rows_out.append(np.broadcast_to(obs[:, None], q.shape)[keep])
            cols_out.append(first + (r * nx + c)[keep])
            weights.append(np.exp(-0.5 * q[keep]))
        n_obs = index.shape[1]
        matrix = sparse.csr_matrix(
            (np.concatenate(weights), (np.concatenate(rows_out), np.concatenate(cols_out))),
            shape=(n_obs, self.n_blocks),
        )
        # An observation is kept when ≥ 90 % of its footprint lies in the world.
        full = 2 * np.pi * sigma[0] * sigma[1] / step**2 * (1 - np.exp(-(_PSF_TRUNCATE**2) / 2))
        total = np.asarray(matrix.sum(axis=1)).ravel()
        kept = np.flatnonzero(total / full >= 0.9)
        renumber = np.full(n_obs, -1)
        renumber[kept] = np.arange(kept.size)
        psf = (sparse.diags(1.0 / total[kept]) @ matrix[kept]).tocsr().astype("float32")
        return ModisFootprint(view, psf, renumber[cell_obs.ravel()], self.shape)

    def aggregate(self, per_area: list[np.ndarray], footprint: ModisFootprint) -> np.ndarray:
        """The day's observations of per-area block arrays (..., by, bx): (..., obs)."""
        lead = per_area[0].shape[:-2]
        stacked = np.concatenate(
            [a.reshape(int(np.prod(lead)) if lead else 1, -1) for a in per_area], axis=1
        )
        out = (footprint.psf @ stacked.T).T
        return out.reshape(*lead, footprint.n_obs)


def simulate_modis_day(
    footprint: ModisFootprint,
    reflectance: np.ndarray,
    opacity: np.ndarray,
    cloud: np.ndarray,
    thin: np.ndarray,
    shadow: np.ndarray,
    snow: np.ndarray,
    water: np.ndarray,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """MOD09GA-like 500 m bands (int16, scale 0.0001, nodata -28672) and 1 km state (uint16).

    Inputs are the day's observations (:meth:`ModisGrid.aggregate`): ``reflectance`` (band,
    obs) in :data:`BANDS` order, already anisotropic; how much light cloud takes from each
    observation (:attr:`SkyMasks.opacity`), and its fractions under cloud (the thin layer
    left out), under the thin layer, in shadow, snow-covered and water.
    """
    valid = footprint.valid
    rho = (1 - opacity)[None] * reflectance + opacity[None] * _CLOUD_TOP[:, None]
    rho = np.where(shadow[None] > 0, rho * (1 - (1 - _SHADOW) * shadow[None]), rho)
    response = np.array(list(_MODIS_RESPONSE.values()))
    rho = response @ rho
    sigma = _MODIS_NOISE[:, None] + _MODIS_NOISE_RELATIVE * np.abs(rho)
    rho = rho + sigma * rng.standard_normal(rho.shape)
    cells = footprint.to_cells(rho)
    bands = {
        key: np.where(valid, np.clip(np.round(v * 10_000), -100, 16_000), -28672).astype("int16")
        for key, v in zip(_MODIS_RESPONSE, cells, strict=True)
    }
    opacity, cloud, thin, shadow, snow, water = footprint.to_cells(
        np.stack([opacity, cloud, thin, shadow, snow, water])
    )

    # 1 km state: fractions over 2 x 2 pixels (fill pixels do not count).
    def coarse(a):
        a = np.where(valid, a, np.nan)
        return np.nanmean(a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2), axis=(1, 3))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-fill blocks
        cf, of, tf, sf, snf, wf = (coarse(a) for a in (cloud, opacity, thin, shadow, snow, water))
    observed = np.isfinite(cf)
    cf, of, tf, sf, snf, wf = (np.nan_to_num(a) for a in (cf, of, tf, sf, snf, wf))
    cloud_state = np.where(cf < 0.05, 0, np.where(cf > 0.6, 1, 2)).astype("uint16")
    cloud_state[~observed] = 3  # not set
    cloudy = cloud_state != 0
    near_cloud = ndimage.binary_dilation(cloudy & observed, iterations=1) & ~cloudy
    # The cirrus test (band 26) sees the thin layer, where not too thin for it that day.
    cirrus = ((tf > 0.5) & (of > rng.uniform(0.01, 0.04) * tf)).astype("uint16") * 2
    snowy = snf > 0.5
    state = (
        cloud_state
        | ((sf > 0.25).astype("uint16") << 2)
        | (np.where(wf > 0.5, 3, 1).astype("uint16") << 3)
        | (np.uint16(1) << 6)  # aerosol: low
        | (cirrus << 8)
        | ((cf > 0.6).astype("uint16") << 10)
        | (snowy.astype("uint16") << 12)
        | (near_cloud.astype("uint16") << 13)
        | (snowy.astype("uint16") << 15)
    )
    return bands, state.astype("uint16")

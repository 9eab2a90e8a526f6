"""The demo world's sky: one cloud field a day, its shadows and the sun that casts them.

The cloud field is a Gaussian random field at 240 m with a fine 30 m texture, thresholded so
that the cloud fraction follows the reanalysis cloudiness; how far above the threshold sets a
cloud's thickness (thin at its edges and in small puffs), and so its opacity. On some days a
thin, semi-transparent layer (haze, thin cirrus) covers part of the sky. Shadows are the same
field seen from the ground towards the sun (:func:`sun_position`) at the cloud's height; a
second height gives where a cloud mask that misjudges it puts them. Both sensors (:mod:`.hls`,
:mod:`.modis`) see the ground through these masks.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import ndtri

from .terrain import fractal_field
from .vegetation import block_mean
from .weather import CellSampler, Reanalysis
from .world import PIXEL, World

__all__ = [
    "CLOUD_CELL",
    "CLOUD_TOP",
    "OPAQUE_THICKNESS",
    "SHADOW_FACTOR",
    "CloudSky",
    "SkyMasks",
    "sun_position",
]

CLOUD_CELL = 240.0  #: m, the cloud field's grid
FINE_TEXTURE = 0.35  # weight of the 30 m texture, in units of the cloud field
#: Reflectance of a cloud top, per band (BANDS order).
CLOUD_TOP = np.array([0.45, 0.45, 0.44, 0.43, 0.45, 0.33, 0.22])
#: The factor of the ground's reflectance a full shadow leaves.
SHADOW_FACTOR = 0.35
#: A cloud this thick (field units above its threshold) is opaque; thinner, it lets the ground
#: show through; its shadow is as deep as the cloud is thick.
OPAQUE_THICKNESS = 0.35
_MIN_OPACITY = 0.015
_THIN_LAYER = 0.035  # the thin layer's greatest thickness: an opacity of 0.1


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
        opaque = np.clip(self.thickness / OPAQUE_THICKNESS, _MIN_OPACITY, 1.0)
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

"""The demo world's static layers: relief and land cover of a Korea-like mountain region.

The relief is fractal (a power-law spectrum, as real terrain has) with sharpened ridges and
flattened valley floors; land cover follows the terrain as it does in the Korean hills: paddy
rice and cropland on flat valley floors, towns on the flattest low ground, rivers and ponds in
the lowest hollows, and forest everywhere else — deciduous broadleaf on lower slopes, evergreen
needleleaf on high ground and ridges, mixed in between — patchy well below 500 m.

Cropland and paddy are cut into **parcels** of a few hectares (:func:`tessellate`: the cells of
a jittered grid, split where upland meets paddy): each parcel is one farmer's field, sown,
rotated and left fallow as a unit by the canopy (:mod:`.vegetation`).
Everything is deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from scipy import ndimage

__all__ = [
    "PFT",
    "PFT_TO_WORLDCOVER",
    "Terrain",
    "fractal_field",
    "make_parcels",
    "make_terrain",
    "tessellate",
]

#: Vegetation types of the demo world (finer than WorldCover's classes).
PFT: Mapping[int, str] = MappingProxyType(
    {
        1: "deciduous_broadleaf",
        2: "evergreen_needleleaf",
        3: "mixed_forest",
        4: "cropland",
        5: "paddy_rice",
        6: "grassland",
        7: "built_up",
        8: "water",
    }
)
#: Each vegetation type's ESA WorldCover class (what the published land-cover map shows).
PFT_TO_WORLDCOVER: Mapping[int, int] = MappingProxyType(
    {1: 10, 2: 10, 3: 10, 4: 40, 5: 40, 6: 30, 7: 50, 8: 80}
)


@dataclass(frozen=True)
class Terrain:
    """Static layers of the demo world."""

    elevation: np.ndarray
    """Elevation in metres on the 30 m grid (float32)."""
    pft_10m: np.ndarray
    """Vegetation type codes (:data:`PFT`) on the 10 m grid (uint8)."""
    parcels_10m: np.ndarray | None = None
    """Field parcel ids on the 10 m grid (int32; 0 where no cropland or paddy), or None: the
    canopy then cuts the fields into parcels itself (:func:`make_parcels`)."""

    @property
    def worldcover_10m(self) -> np.ndarray:
        """The WorldCover classes of :attr:`pft_10m` (uint8)."""
        lut = np.zeros(256, dtype="uint8")
        for pft, wc in PFT_TO_WORLDCOVER.items():
            lut[pft] = wc
        return lut[self.pft_10m]


def fractal_field(
    shape: tuple[int, int], pixel: float, rng: np.random.Generator, *, beta: float, scale_max: float
) -> np.ndarray:
    """Gaussian random field, power spectrum ∝ k^-beta, nothing larger than ``scale_max`` m.

    Returned with zero mean and unit standard deviation (float64).
    """
    ky = np.fft.fftfreq(shape[0], d=pixel)[:, None]
    kx = np.fft.rfftfreq(shape[1], d=pixel)[None, :]
    k = np.hypot(ky, kx)
    k_min = 1.0 / scale_max
    amplitude = np.where(k > 0, np.maximum(k, k_min) ** (-beta / 2), 0.0)
    noise = rng.standard_normal((shape[0], kx.shape[1])) + 1j * rng.standard_normal(
        (shape[0], kx.shape[1])
    )
    field = np.fft.irfft2(noise * amplitude, s=shape)
    return (field - field.mean()) / field.std()


def _rescale(values: np.ndarray) -> np.ndarray:
    low, high = np.percentile(values, [0.5, 99.5])
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def make_terrain(shape_30m: tuple[int, int], rng: np.random.Generator) -> Terrain:
    """Relief (30 m) and vegetation types (10 m) for a grid of ``shape_30m`` pixels of 30 m."""
    # Spectral slopes chosen so that slopes are those of the Korean hills: median ~15°, a
    # tenth of the land steeper than ~30°, valley floors mostly under 10°.
    relief = fractal_field(shape_30m, 30.0, rng, beta=4.4, scale_max=12_000)
    ridges = 1.0 - np.abs(fractal_field(shape_30m, 30.0, rng, beta=4.0, scale_max=6_000))
    height = _rescale(0.75 * relief + 0.35 * ridges)
    # Flatten the lowest ground into valley floors (a power > 1 squeezes the low end).
    height = height**2.2
    elevation = (15.0 + 1185.0 * height).astype("float32")

    elevation_10m = ndimage.zoom(elevation, 3, order=1, mode="nearest")  # exactly 3x the shape
    gy, gx = np.gradient(elevation_10m, 10.0)
    slope_10m = np.degrees(np.arctan(np.hypot(gx, gy)))
    pft = _land_cover(elevation_10m, slope_10m, rng)
    # A stream of its own: the parcels leave the draws that follow (site layout) unchanged.
    parcels = make_parcels(pft, rng.spawn(1)[0])
    return Terrain(elevation=elevation, pft_10m=pft, parcels_10m=parcels)


#: Mean side of a field parcel (m): ~2.3 ha, a Korean farm's plot of rice or upland crops.
PARCEL_SIDE_M = 150.0


def tessellate(shape: tuple[int, int], spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Voronoi cells of one seed per ``spacing`` x ``spacing`` pixels (jittered grid), labelled
    1..n (int32): polygons of about ``spacing``² pixels with straight, irregular edges."""
    ny, nx = shape
    rows = np.arange(0.0, ny, spacing)
    cols = np.arange(0.0, nx, spacing)
    seed_y = rows[:, None] + rng.uniform(0, spacing, (rows.size, cols.size))
    seed_x = cols[None, :] + rng.uniform(0, spacing, (rows.size, cols.size))
    seed_y = np.minimum(seed_y, ny - 1).astype(int).ravel()
    seed_x = np.minimum(seed_x, nx - 1).astype(int).ravel()
    labels = np.zeros(shape, dtype="int32")
    labels[seed_y, seed_x] = np.arange(1, seed_y.size + 1, dtype="int32")
    # Every pixel takes the label of its nearest seed.
    _, (iy, ix) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    return labels[iy, ix]


def make_parcels(
    pft_10m: np.ndarray, rng: np.random.Generator, side_m: float = PARCEL_SIDE_M
) -> np.ndarray:
    """Field parcels of the cropland and paddy of a 10 m land-cover map: ids 1..n (int32), 0
    elsewhere. A parcel is either upland (cropland) or paddy, never both."""
    cells = tessellate(pft_10m.shape, side_m / 10.0, rng).astype("int64")
    farmed = (pft_10m == 4) | (pft_10m == 5)
    keys = np.where(farmed, 2 * cells + (pft_10m == 5), 0)
    _, ids = np.unique(keys, return_inverse=True)
    # Key 0 (not farmed) sorts first and takes id 0, if there is any unfarmed pixel.
    ids = ids.reshape(pft_10m.shape).astype("int32") + int(farmed.all())
    return ids


def _land_cover(elevation: np.ndarray, slope: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    shape = elevation.shape
    # Patchiness: fields with structure of ~50-300 m, so 500 m pixels are mixed.
    patch = fractal_field(shape, 10.0, rng, beta=2.2, scale_max=300)
    patch2 = fractal_field(shape, 10.0, rng, beta=2.2, scale_max=600)
    towns = fractal_field(shape, 10.0, rng, beta=3.0, scale_max=1_500)
    low = np.percentile(elevation, 30)
    flat = slope < 5.0

    pft = np.where(elevation > np.percentile(elevation, 80) + 40 * patch, 2, 3).astype("uint8")
    pft[(elevation < np.percentile(elevation, 60) + 60 * patch2) & (pft == 3)] = 1
    pft[(pft == 3) & (patch > 0.8)] = 2
    pft[(pft == 3) & (patch < -0.9)] = 1
    valley = (elevation < low + 30 * patch) & (slope < 12.0)
    pft[valley & (patch2 > -0.6)] = 4
    pft[valley & flat & (elevation < np.percentile(elevation, 18)) & (patch > -0.6)] = 5
    pft[(slope < 15.0) & (patch2 < -1.6)] = 6
    pft[(slope < 8.0) & (elevation < low) & (towns > 1.2)] = 7
    pft[elevation < np.percentile(elevation, 1.5) + 8 * patch2] = 8
    return pft

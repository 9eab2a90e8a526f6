"""The grid arithmetic of a region: one home for it.

A product grid is a 30 m GeoBox (``pipeline.grid``); GPP_M lives on its coarse grid, the same
origin zoomed out by :data:`COARSE_FACTOR` (16 × 30 m = 480 m, MODIS-like), so every coarse
pixel is a 16 × 16 block of fine pixels (the blocks at the far edges may be cut). This module
holds what moves values between the two — :func:`block_view` and :func:`block_means` (fine →
coarse), :func:`upsample_bilinear` and :func:`blocks_window` (coarse → fine) — and the
:class:`Window` rectangles a day is made in (:func:`day_windows`), so that memory follows a
window, not the grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "COARSE_FACTOR",
    "Window",
    "bilinear_window",
    "block_means",
    "block_view",
    "blocks_window",
    "coarse_geobox",
    "coarse_shape",
    "day_windows",
    "fill_nearest",
    "fine_fraction",
    "from_blocks",
    "grid_latitude",
    "lonlat_bbox",
    "lonlat_pixels",
    "pixel_lonlat",
    "sites_in_region",
    "taken_whole",
    "upsample_bilinear",
    "utm_crs",
]


COARSE_FACTOR = 16  # 30 m x 16 = 480 m, the MODIS-like grid aligned with the 30 m one


def lonlat_bbox(geobox) -> list[float]:
    """A GeoBox's extent as a STAC search bbox (west, south, east, north in degrees)."""
    return list(geobox.extent.to_crs("EPSG:4326").boundingbox)


def grid_latitude(geobox) -> float:
    """The latitude of the grid's centre (degrees)."""
    _, south, _, north = lonlat_bbox(geobox)
    return (south + north) / 2


def utm_crs(lon: float, lat: float) -> str:
    """The WGS 84 UTM zone of a point: ``EPSG:326zz`` north of the equator, ``EPSG:327zz``
    south of it."""
    zone = int((lon + 180) // 6) % 60 + 1
    return f"EPSG:{(32600 if lat >= 0 else 32700) + zone}"


def lonlat_pixels(lon, lat, geobox) -> tuple[np.ndarray, np.ndarray]:
    """Row and column (integers) of the pixel of ``geobox`` (any CRS) holding each point
    ``lon``, ``lat`` (degrees); a point off the grid gets its would-be pixel, outside
    ``0..shape``; a point without finite coordinates gets (-1, -1)."""
    from odc.geo.crs import CRS

    # odc-geo keeps one transformer per pair of CRSs: a grid's is made once per process.
    to_grid = CRS("EPSG:4326").transformer_to_crs(geobox.crs)
    lon = np.atleast_1d(np.asarray(lon, dtype="float64"))
    lat = np.atleast_1d(np.asarray(lat, dtype="float64"))
    x, y = to_grid(lon, lat)
    cols, rows = ~geobox.transform * (np.asarray(x, "float64"), np.asarray(y, "float64"))
    rows, cols = np.floor(np.asarray(rows, "float64")), np.floor(np.asarray(cols, "float64"))
    bad = ~(np.isfinite(rows) & np.isfinite(cols))
    rows[bad], cols[bad] = -1, -1
    return rows.astype("int64"), cols.astype("int64")


def pixel_lonlat(geobox, rows, cols) -> tuple[np.ndarray, np.ndarray]:
    """Longitude and latitude (degrees) of pixel positions ``rows``, ``cols`` of ``geobox``
    (fractional: ``+ 0.5`` is a pixel's centre); the other way from :func:`lonlat_pixels`."""
    to_lonlat = geobox.crs.transformer_to_crs("EPSG:4326")
    x, y = geobox.transform * (np.asarray(cols, "float64"), np.asarray(rows, "float64"))
    lon, lat = to_lonlat(x, y)
    return np.asarray(lon, "float64"), np.asarray(lat, "float64")


def sites_in_region(sites: pd.DataFrame, geobox) -> pd.Series:
    """Which sites of a site table (columns ``lat``, ``lon`` in degrees) stand inside the grid
    ``geobox`` (odc-geo GeoBox, any CRS): a boolean Series on the table's index.

    Decided from the coordinates alone: a site on the grid's left or top edge is inside, on
    its right or bottom edge outside (a pixel's half-open bounds); text or missing
    coordinates are outside."""
    lon = pd.to_numeric(sites["lon"], errors="coerce").to_numpy(dtype="float64")
    lat = pd.to_numeric(sites["lat"], errors="coerce").to_numpy(dtype="float64")
    rows, cols = lonlat_pixels(lon, lat, geobox)
    ny, nx = geobox.shape
    inside = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
    return pd.Series(inside, index=sites.index, name="in_region", dtype=bool)


def coarse_geobox(geobox, factor: int = COARSE_FACTOR):
    """The region's grid coarsened by ``factor`` (same origin and CRS)."""
    return geobox.zoom_out(factor)


@dataclass(frozen=True)
class Window:
    """A rectangle of the grid, in pixels: rows ``y0:y1``, columns ``x0:x1``."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    def within(self, outer: Window) -> tuple[slice, slice]:
        """This window's rows and columns in an array that covers ``outer``."""
        return (slice(self.y0 - outer.y0, self.y1 - outer.y0),
                slice(self.x0 - outer.x0, self.x1 - outer.x0))  # fmt: skip

    @classmethod
    def covering(cls, shape: tuple[int, int]) -> Window:
        """The whole of a grid of ``shape``."""
        return cls(0, shape[0], 0, shape[1])

    def grown(self, pixels: int, shape: tuple[int, int]) -> Window:
        """Grown by ``pixels`` on every side, within a grid of ``shape``."""
        return Window(max(self.y0 - pixels, 0), min(self.y1 + pixels, shape[0]),
                      max(self.x0 - pixels, 0), min(self.x1 + pixels, shape[1]))  # fmt: skip


def taken_whole(shape: tuple[int, int], size: int, count: int) -> bool:
    """Whether a grid of ``shape`` holds no more pixels than ``count`` windows of ``size`` px
    (the downscalers then train on it whole)."""
    return shape[0] * shape[1] <= count * size * size


def day_windows(shape: tuple[int, int], size: int) -> list[Window]:
    """Windows of ``size`` pixels covering a grid of ``shape``, row by row (the last row and
    column end at the grid's edge)."""
    height, width = shape
    return [
        Window(y0, min(y0 + size, height), x0, min(x0 + size, width))
        for y0 in range(0, height, size)
        for x0 in range(0, width, size)
    ]


def _coarse_rows(start: int, stop: int, factor: int, size: int, halo: int) -> tuple[int, int]:
    return max(start // factor - halo, 0), min(-(-stop // factor) + halo, size)


def bilinear_window(filled: np.ndarray, factor: int, window: Window) -> np.ndarray:
    """The bilinear upsampling of a gap-free coarse map over ``window`` of the fine grid,
    equal to upsampling the whole map and cutting the window out of it: the coarse pixels
    under the window and one more on each side are all that bilinear weights reach."""
    cy0, cy1 = _coarse_rows(window.y0, window.y1, factor, filled.shape[0], 1)
    cx0, cx1 = _coarse_rows(window.x0, window.x1, factor, filled.shape[1], 1)
    fine = upsample_bilinear(filled[cy0:cy1, cx0:cx1], factor)
    top, left = window.y0 - cy0 * factor, window.x0 - cx0 * factor
    return fine[top : top + window.shape[0], left : left + window.shape[1]]


def blocks_window(coarse: np.ndarray, factor: int, window: Window) -> np.ndarray:
    """A coarse map repeated over its ``factor × factor`` blocks of the fine grid, cut to
    ``window`` (each fine pixel takes the value of the coarse pixel it lies in)."""
    cy0, cy1 = _coarse_rows(window.y0, window.y1, factor, coarse.shape[0], 0)
    cx0, cx1 = _coarse_rows(window.x0, window.x1, factor, coarse.shape[1], 0)
    part = coarse[cy0:cy1, cx0:cx1]
    fine = np.repeat(np.repeat(part, factor, axis=0), factor, axis=1)
    top, left = window.y0 - cy0 * factor, window.x0 - cx0 * factor
    return fine[top : top + window.shape[0], left : left + window.shape[1]]


def fine_fraction(coarse_mask: np.ndarray, factor: int, shape: tuple[int, int]) -> float:
    """The fraction of a fine grid of ``shape`` whose coarse pixel is in ``coarse_mask``
    (coarse pixels the grid's edge cuts count for the fine pixels they hold)."""
    rows = np.clip(shape[0] - factor * np.arange(coarse_mask.shape[0]), 0, factor)
    cols = np.clip(shape[1] - factor * np.arange(coarse_mask.shape[1]), 0, factor)
    return float(rows @ coarse_mask.astype("float64") @ cols) / (shape[0] * shape[1])


def upsample_bilinear(coarse: np.ndarray, factor: int) -> np.ndarray:
    """Bilinear upsampling of (..., cy, cx) by an integer factor (pixel-area aligned grids,
    edges clamped: ``align_corners=False``).

    NaN pixels (no coarse data) are filled from their neighbours before upsampling, so the
    holes do not spread; a map with no data at all stays NaN. Rows, then columns, with weights
    from each fine pixel's own index: a part of the map upsampled with one more coarse pixel
    around it equals that part of the whole upsampled map, to the bit."""
    array = np.asarray(coarse, dtype="float32")
    lead = array.shape[:-2]
    flat = array.reshape(-1, *array.shape[-2:])
    rows, cols = (
        _bilinear_weights(array.shape[-2], factor),
        _bilinear_weights(array.shape[-1], factor),
    )
    out = np.full((flat.shape[0], array.shape[-2] * factor, array.shape[-1] * factor), np.nan,
                  dtype="float32")  # fmt: skip
    for i, grid in enumerate(flat):
        if not np.isfinite(grid).any():
            continue
        filled = fill_nearest(grid)
        upper, lower, w = rows
        tall = filled[upper] * (1 - w)[:, None] + filled[lower] * w[:, None]
        left, right, v = cols
        out[i] = tall[:, left] * (1 - v) + tall[:, right] * v
    return out.reshape(*lead, *out.shape[-2:])


def _bilinear_weights(size: int, factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``size * factor`` fine pixels: its two coarse neighbours and the weight of
    the second."""
    centre = np.maximum((np.arange(size * factor) + 0.5) / factor - 0.5, 0.0)
    first = np.floor(centre).astype("int64")
    weight = (centre - first).astype("float32")
    first = np.minimum(first, size - 1)
    return first, np.minimum(first + 1, size - 1), weight


def fill_nearest(grid: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    missing = ~np.isfinite(grid)
    if not missing.any():
        return grid
    index = ndimage.distance_transform_edt(missing, return_distances=False, return_indices=True)
    return grid[tuple(index)]


def coarse_shape(shape: tuple[int, ...], factor: int) -> tuple[int, int]:
    """The block grid (cy, cx) over a fine grid (…, H, W): ceil(H/factor), ceil(W/factor)."""
    return -(-shape[-2] // factor), -(-shape[-1] // factor)


def block_view(
    fine: np.ndarray, factor: int, fill=np.nan, shape: tuple[int, int] | None = None
) -> np.ndarray:
    """(…, H, W) → (…, cy, factor, cx, factor): each coarse pixel's block of fine pixels.

    The coarse grid is ``shape`` (default: :func:`coarse_shape`); fine pixels beyond it are
    dropped and the blocks it holds beyond the fine grid (a ragged edge) are ``fill``."""
    cy, cx = shape if shape is not None else coarse_shape(fine.shape, factor)
    part = fine[..., : cy * factor, : cx * factor]
    pad = [(0, 0)] * (fine.ndim - 2)
    pad += [(0, cy * factor - part.shape[-2]), (0, cx * factor - part.shape[-1])]
    padded = np.pad(part, pad, constant_values=fill)
    return padded.reshape(*fine.shape[:-2], cy, factor, cx, factor)


def from_blocks(blocks: np.ndarray) -> np.ndarray:
    """The inverse of :func:`block_view`: (…, cy, factor, cx, factor) → (…, cy·f, cx·f)."""
    *lead, cy, fy, cx, fx = blocks.shape
    return blocks.reshape(*lead, cy * fy, cx * fx)


def block_means(fine: np.ndarray, factor: int, shape: tuple[int, int] | None = None) -> np.ndarray:
    """The mean of each coarse pixel's finite fine pixels (NaN where it has none)."""
    blocks = block_view(np.asarray(fine, dtype="float64"), factor, np.nan, shape)
    valid = np.isfinite(blocks)
    count = valid.sum(axis=(-3, -1))
    total = np.where(valid, blocks, 0.0).sum(axis=(-3, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)

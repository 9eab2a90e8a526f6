"""A product day in spatial windows: memory bounded by a window, not by the grid.

A day of a national grid (Korea: 2.9 × 10⁸ px at 30 m) does not fit in memory, so
``unique-cube run`` makes it window by window. The windows are squares of ``product.window``
pixels on the grid, aligned to the datacube's chunks and to the 480 m blocks, so that every
coarse pixel, chunk and shard belongs to one window.

The inference tiles stay those of the **whole grid** (:func:`~unique_cube.downscale.tile_plan`
of its shape, each tile seeded by its place in that plan). A window samples every tile that
touches it, on the conditions of their union (its *extent*), and blends them as the whole grid
would: each pixel gets the same tiles in the same order, so windowed maps equal whole-grid maps
and no seam follows a window's edge. A tile that touches two windows is sampled once; its
residual waits in a :class:`ResidualCache` until the last window that needs it is done.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported only where tiles are made
    from .downscale import Tile

__all__ = [
    "ResidualCache",
    "Window",
    "bilinear_window",
    "blocks_window",
    "day_windows",
    "extent_of",
    "fine_fraction",
    "local_plan",
    "tiles_touching",
]


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

    def grown(self, pixels: int, shape: tuple[int, int]) -> Window:
        """Grown by ``pixels`` on every side, within a grid of ``shape``."""
        return Window(max(self.y0 - pixels, 0), min(self.y1 + pixels, shape[0]),
                      max(self.x0 - pixels, 0), min(self.x1 + pixels, shape[1]))  # fmt: skip


def day_windows(shape: tuple[int, int], size: int) -> list[Window]:
    """Windows of ``size`` pixels covering a grid of ``shape``, row by row (the last row and
    column end at the grid's edge)."""
    height, width = shape
    return [
        Window(y0, min(y0 + size, height), x0, min(x0 + size, width))
        for y0 in range(0, height, size)
        for x0 in range(0, width, size)
    ]


def tiles_touching(window: Window, plan: Sequence[Tile]) -> list[Tile]:
    """The tiles of the grid's plan that cover a pixel of ``window``, in plan order."""
    return [
        t for t in plan
        if t.y0 < window.y1 and t.y0 + t.h > window.y0
        and t.x0 < window.x1 and t.x0 + t.w > window.x0
    ]  # fmt: skip


def extent_of(tiles: Sequence[Tile]) -> Window:
    """The smallest window holding all ``tiles``."""
    return Window(min(t.y0 for t in tiles), max(t.y0 + t.h for t in tiles),
                  min(t.x0 for t in tiles), max(t.x0 + t.w for t in tiles))  # fmt: skip


def local_plan(tiles: Sequence[Tile], extent: Window) -> list[Tile]:
    """The tiles placed in an array covering ``extent``; they keep their place in the grid's
    plan (``ty``, ``tx``), which seeds their generators."""
    from .downscale import Tile

    return [Tile(t.ty, t.tx, t.y0 - extent.y0, t.x0 - extent.x0, t.h, t.w) for t in tiles]


def _coarse_rows(start: int, stop: int, factor: int, size: int, halo: int) -> tuple[int, int]:
    return max(start // factor - halo, 0), min(-(-stop // factor) + halo, size)


def bilinear_window(filled: np.ndarray, factor: int, window: Window) -> np.ndarray:
    """The bilinear upsampling of a gap-free coarse map over ``window`` of the fine grid,
    equal to upsampling the whole map and cutting the window out of it: the coarse pixels
    under the window and one more on each side are all that bilinear weights reach."""
    from .downscale import upsample_bilinear

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


class ResidualCache:
    """Sampled tile residuals kept between the windows of a day: a tile touching several
    windows is sampled for the first and dropped after the last one that uses it."""

    def __init__(self, uses: Sequence[Sequence[Tile]]) -> None:
        self._left = Counter((t.ty, t.tx) for tiles in uses for t in tiles)
        self._kept: dict[tuple[int, int], np.ndarray] = {}

    def residuals(
        self, tiles: Sequence[Tile], sample: Callable[[list[Tile]], list[np.ndarray]]
    ) -> list[np.ndarray]:
        """The residuals of ``tiles`` (in their order); ``sample`` is given those not kept."""
        missing = [t for t in tiles if (t.ty, t.tx) not in self._kept]
        if missing:
            for tile, residual in zip(missing, sample(missing), strict=True):
                self._kept[(tile.ty, tile.tx)] = residual
        out = [self._kept[(t.ty, t.tx)] for t in tiles]
        for t in tiles:
            key = (t.ty, t.tx)
            self._left[key] -= 1
            if self._left[key] <= 0:
                del self._kept[key]
        return out

    def __len__(self) -> int:
        return len(self._kept)

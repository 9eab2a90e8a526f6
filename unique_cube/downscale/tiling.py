"""Tiles: a grid cut into overlapping squares, sampled one by one and blended back.

Every tile has its place in the plan of the **whole grid** (:func:`tile_plan`), which seeds its
generator, so the same seed gives the same map however the grid is cut. :func:`blend_tiles`
adds the tiles' residuals to the bilinear GPP_M with a raised-cosine window over the overlaps.
A product day is made in windows (:mod:`unique_cube.grid`): a window samples every tile that
touches it (:func:`tiles_touching`, placed by :func:`local_plan` in an array covering their
:func:`extent_of`), and a tile touching two windows is sampled once and kept in a
:class:`ResidualCache` until its last window is done, so windowed maps equal whole-grid maps.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from unique_cube.downscale.conditions import GPP_SCALE
from unique_cube.grid import Window

__all__ = [
    "ResidualCache",
    "Tile",
    "blend_tiles",
    "extent_of",
    "local_plan",
    "tile_plan",
    "tiles_touching",
]


def _blend_window(size: int, overlap: int) -> np.ndarray:
    ramp = np.ones(size, dtype="float64")
    if overlap > 0:
        edge = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap)
        ramp[:overlap] = edge
        ramp[-overlap:] = edge[::-1]
    return np.outer(ramp, ramp)


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return sorted(set(starts))


@dataclass(frozen=True)
class Tile:
    """One inference tile of a (H, W) grid."""

    ty: int
    """Row of the tile in the tile grid (part of its generator seed)."""
    tx: int
    """Column of the tile in the tile grid (part of its generator seed)."""
    y0: int
    """First row of the tile, in pixels."""
    x0: int
    """First column of the tile, in pixels."""
    h: int
    """Height in pixels (the same for every tile of a plan)."""
    w: int
    """Width in pixels (the same for every tile of a plan)."""

    @property
    def window(self) -> tuple[slice, slice]:
        """The tile's (rows, columns) in the full grid."""
        return slice(self.y0, self.y0 + self.h), slice(self.x0, self.x0 + self.w)


def tile_plan(height: int, width: int, *, tile: int = 128, overlap: int = 32) -> list[Tile]:
    """Overlapping tiles covering a (height, width) grid, row by row; the last row and column
    of tiles end at the grid's edge."""
    tile_h, tile_w = min(tile, height), min(tile, width)
    return [
        Tile(ty, tx, y0, x0, tile_h, tile_w)
        for ty, y0 in enumerate(_tile_starts(height, tile_h, overlap))
        for tx, x0 in enumerate(_tile_starts(width, tile_w, overlap))
    ]


def blend_tiles(
    condition: np.ndarray,
    plan: list[Tile],
    residuals: list[np.ndarray],
    *,
    overlap: int,
    scale: float = GPP_SCALE,
    non_negative: bool = True,
) -> np.ndarray:
    """Members (K, H, W) of the 30 m variable (GPP: gC m-2 d-1): the tiles' residuals
    (aligned with ``plan``) blended with a raised-cosine window and added to the base field
    of ``condition`` (C, H, W; layer 0: bilinear GPP_M for S1/S2, the fusion mean), both in
    network units (``scale`` per unit, a checkpoint's ``normalisation``); clamped at 0 for a
    ``non_negative`` variable. Accumulates in plan order, so the result does not depend on
    the order the tiles were sampled in."""
    _, height, width = condition.shape
    tile_h, tile_w = plan[0].h, plan[0].w
    total = np.zeros((residuals[0].shape[0], height, width))
    weight = np.zeros((height, width))
    window_weight = _blend_window(max(tile_h, tile_w), min(overlap, min(tile_h, tile_w) // 2))
    w = window_weight[:tile_h, :tile_w]
    for tile, residual in zip(plan, residuals, strict=True):
        total[(slice(None), *tile.window)] += residual * w
        weight[tile.window] += w
    values = (condition[0][None] + total / weight) * scale
    return (np.maximum(values, 0.0) if non_negative else values).astype("float32")


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
    return [Tile(t.ty, t.tx, t.y0 - extent.y0, t.x0 - extent.x0, t.h, t.w) for t in tiles]


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

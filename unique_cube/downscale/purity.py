"""Pure coarse pixels (Yu et al. 2022): where a 480 m block is homogeneous enough to stand for
its 30 m pixels, and the training rows of the pure-pixel baseline taken from them.

A coarse pixel (GPP_M, 480 m) is a ``factor`` × ``factor`` block of the 30 m grid, aligned at
the grid's origin; a block cut by the grid's far edges holds only its in-grid part. A block is
*pure* when the coefficient of variation (std/|mean|) of its valid 30 m NDVI is among the lowest
``fraction`` (30 %) of the blocks of its dominant vegetation type, per date. On pure blocks the
30 m inputs are averaged to the coarse grid (:func:`coarse_samples`): the rows
:mod:`unique_cube.downscale.pure_pixel` learns from.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from unique_cube import grid
from unique_cube.errors import PurePixelError

__all__ = [
    "YU_2022",
    "Purity",
    "Samples",
    "block_aggregate",
    "check_stack",
    "coarse_samples",
    "coarse_shape",
    "dominant_type",
    "integer_types",
    "ndvi_cov",
    "pure_pixels",
    "why_no_rows",
]


def coarse_shape(shape: tuple[int, ...], factor: int) -> tuple[int, int]:
    """The block grid (cy, cx) over a 30 m grid (…, H, W): ceil(H/factor), ceil(W/factor)."""
    if factor < 1:
        raise PurePixelError(f"factor must be a positive integer, not {factor}")
    return grid.coarse_shape(shape, factor)


def _blocks(array: np.ndarray, factor: int, fill) -> np.ndarray:
    """(…, H, W) → (…, cy, factor, cx, factor), the ragged edge padded with ``fill``."""
    return grid.block_view(array, factor, fill, coarse_shape(array.shape, factor))


def _block_moments(array: np.ndarray, factor: int, min_valid: float):
    """Mean and population std over each block's finite pixels; NaN below ``min_valid``."""
    blocks = _blocks(np.asarray(array, dtype="float64"), factor, np.nan)
    valid = np.isfinite(blocks)
    count = valid.sum(axis=(-3, -1))
    values = np.where(valid, blocks, 0.0)
    enough = count >= max(min_valid * factor * factor, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = values.sum(axis=(-3, -1)) / count
        centred = np.where(valid, blocks - np.expand_dims(mean, (-3, -1)), 0.0)
        std = np.sqrt((centred**2).sum(axis=(-3, -1)) / count)
    return np.where(enough, mean, np.nan), np.where(enough, std, np.nan)


def block_aggregate(features: np.ndarray, factor: int, min_valid: float = 0.5) -> np.ndarray:
    """Mean of each block's finite 30 m pixels, (F, H, W) → (F, cy, cx) float32.

    NaN where fewer than ``min_valid`` of the block's factor² pixels are finite (the part of a
    block beyond the grid's edge counts as missing)."""
    features = np.asarray(features)
    out = np.empty((features.shape[0], *coarse_shape(features.shape, factor)), dtype="float32")
    for i, layer in enumerate(features):  # one layer at a time bounds the float64 copies
        out[i] = _block_moments(layer, factor, min_valid)[0]
    return out


def ndvi_cov(ndvi: np.ndarray, factor: int, min_valid: float = 0.5) -> np.ndarray:
    """Coefficient of variation std/|mean| of each block's finite 30 m NDVI, (H, W) → (cy, cx).

    NaN where fewer than ``min_valid`` of the block is finite or the mean is zero."""
    mean, std = _block_moments(ndvi, factor, min_valid)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = std / np.abs(mean)
    return np.where(np.isfinite(cov), cov, np.nan)


def dominant_type(types: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """The most frequent type code of each block and its share of the block's in-grid pixels.

    (H, W) integer codes → (cy, cx) codes, (cy, cx) shares in (0, 1]; ties go to the lower code.
    """
    types = integer_types(types)
    blocks = _blocks(types, factor, 0)
    inside = _blocks(np.ones(types.shape, dtype=bool), factor, False)
    codes = np.unique(types)
    counts = np.stack([((blocks == code) & inside).sum(axis=(-3, -1)) for code in codes])
    best = counts.argmax(axis=0)
    share = np.take_along_axis(counts, best[None], axis=0)[0] / inside.sum(axis=(-3, -1))
    return codes[best], share


def pure_pixels(
    cov: np.ndarray, dominant: np.ndarray, vegetated: Iterable[int], fraction: float = 0.3
) -> np.ndarray:
    """Pure blocks: per vegetated type, the ``fraction`` lowest-CoV blocks of that dominant type.

    Of the n blocks of a type with a finite CoV, ceil(fraction · n) are kept (ties in row-major
    order); blocks of other types are never pure. Returns a boolean (cy, cx) mask."""
    if cov.shape != dominant.shape:
        raise PurePixelError(f"CoV {cov.shape} and dominant types {dominant.shape} differ in shape")
    if not 0 < fraction <= 1:
        raise PurePixelError(f"fraction must be in (0, 1], not {fraction}")
    pure = np.zeros(cov.shape, dtype=bool)
    flat_cov, flat_type, flat_pure = cov.ravel(), dominant.ravel(), pure.ravel()
    for code in set(vegetated):
        candidates = np.flatnonzero((flat_type == code) & np.isfinite(flat_cov))
        keep = math.ceil(round(fraction * candidates.size, 9))
        order = np.argsort(flat_cov[candidates], kind="stable")
        flat_pure[candidates[order[:keep]]] = True
    return pure


@dataclass(frozen=True)
class Samples:
    """Training rows: pure blocks with their aggregated features and GPP_M."""

    features: np.ndarray
    """Block means of the 30 m features (N, F)."""
    types: np.ndarray
    """Dominant vegetation type code of each block (N,)."""
    gpp: np.ndarray
    """GPP_M of each block (N,), gC m-2 d-1."""

    @staticmethod
    def concat(parts: Sequence[Samples]) -> Samples:
        return Samples(*(np.concatenate([getattr(p, k) for p in parts]) for k in
                         ("features", "types", "gpp")))  # fmt: skip

    def counts(self) -> dict[int, int]:
        """Rows per vegetation type code."""
        codes, n = np.unique(self.types, return_counts=True)
        return {int(c): int(k) for c, k in zip(codes, n, strict=True)}


@dataclass(frozen=True)
class Purity:
    """How pure blocks are chosen."""

    fraction: float = 0.3
    """The share of each type's blocks, lowest NDVI CoV first, that are pure (Yu et al.: 30 %)."""
    min_valid: float = 0.5
    """A block needs this share of its pixels valid (clear) for its CoV and means."""
    min_purity: float = 0.0
    """A block whose dominant type covers less than this of it is no candidate."""
    ndvi: str = "ndvi"
    """The feature whose coefficient of variation ranks the blocks."""


#: The selection of Yu et al. (2022): the 30 % most homogeneous blocks of each type.
YU_2022 = Purity()


def coarse_samples(
    features: np.ndarray,
    names: Sequence[str],
    types: np.ndarray,
    gpp_m: np.ndarray,
    factor: int,
    vegetated: Iterable[int],
    purity: Purity = YU_2022,
) -> Samples:
    """The training rows of one date: the pure blocks with finite features and GPP_M.

    ``features`` (F, H, W) in the order of ``names``, NaN where a 30 m pixel is not clear;
    ``types`` (H, W) vegetation type codes; ``gpp_m`` on the block grid, (ceil(H/factor),
    ceil(W/factor)), or (H//factor, W//factor) when the ragged edge was dropped."""
    fraction, min_valid, min_purity, ndvi = (
        purity.fraction,
        purity.min_valid,
        purity.min_purity,
        purity.ndvi,
    )
    features = np.asarray(features)
    check_stack(features, names, "features")
    if ndvi not in names:
        raise PurePixelError(f"the features {list(names)} lack {ndvi!r}, needed for the CoV")
    if np.shape(types) != features.shape[1:]:
        raise PurePixelError(f"types {np.shape(types)} do not match the features' 30 m grid "
                             f"{features.shape[1:]}")  # fmt: skip
    full = coarse_shape(features.shape, factor)
    cropped = (features.shape[1] // factor, features.shape[2] // factor)
    if np.shape(gpp_m) not in (full, cropped):
        raise PurePixelError(f"GPP_M {np.shape(gpp_m)} is not the block grid of the 30 m grid "
                             f"{features.shape[1:]} at factor {factor}: expected {full}"
                             + (f" or {cropped}" if cropped != full else ""))  # fmt: skip
    cy, cx = np.shape(gpp_m)  # blocks beyond GPP_M's grid take no part in the ranking
    cov = ndvi_cov(features[list(names).index(ndvi)], factor, min_valid)[:cy, :cx]
    dominant, share = (a[:cy, :cx] for a in dominant_type(types, factor))
    cov = np.where(share >= min_purity, cov, np.nan)
    pure = pure_pixels(cov, dominant, vegetated, fraction)
    x = block_aggregate(features, factor, min_valid)[:, :cy, :cx].reshape(len(names), -1).T
    y = np.asarray(gpp_m, dtype="float32").ravel()
    keep = pure.ravel() & np.isfinite(y) & np.isfinite(x).all(axis=1)
    return Samples(x[keep], dominant.ravel()[keep], y[keep])


def check_stack(features: np.ndarray, names: Sequence[str], what: str) -> None:
    if features.ndim != 3 or features.shape[0] != len(names):
        raise PurePixelError(f"{what} must be (F, H, W) with F = {len(names)} features "
                             f"{list(names)}, not {features.shape}")  # fmt: skip
    if len(set(names)) != len(names):
        raise PurePixelError(f"feature names repeat: {list(names)}")


def integer_types(types: np.ndarray) -> np.ndarray:
    types = np.asarray(types)
    if not np.issubdtype(types.dtype, np.integer):
        raise PurePixelError(f"vegetation types must be integer codes, not {types.dtype}")
    return types.astype("int64")


def why_no_rows(features, names, types, gpp_m, factor, vegetated, min_valid, ndvi) -> str:
    """Say which of the conditions for a training row no block met."""
    head = "no pure coarse pixel to train on: "
    if not any(np.isfinite(g).any() for g in gpp_m):
        return head + "GPP_M is NaN on every date"
    index = list(names).index(ndvi)
    if not any(np.isfinite(ndvi_cov(f[index], factor, min_valid)).any() for f in features):
        return head + (f"no block has {min_valid:.0%} of its 30 m {ndvi} finite (with a non-zero "
                       "mean) on any date")  # fmt: skip
    dominant, _ = dominant_type(types, factor)
    if not np.isin(dominant, vegetated).any():
        present = sorted(int(c) for c in np.unique(dominant))
        return head + f"no block is dominated by a vegetated type {vegetated} (found {present})"
    return head + "the pure blocks have no finite GPP_M or aggregated features on any date"

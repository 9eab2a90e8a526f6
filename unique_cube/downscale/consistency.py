"""Coarse consistency: a 30 m map held to the 480 m GPP_M it came from.

:func:`coarse_errors` and :func:`coarse_mismatch` measure how far a map's 480 m block means
are from GPP_M; :func:`coarse_consistency` shifts each block so that its mean equals GPP_M
(GPP kept non-negative), and :func:`make_consistent` does it on a grid the coarse one
overhangs.
"""

from __future__ import annotations

import numpy as np

from unique_cube.grid import block_means, block_view, from_blocks

__all__ = ["coarse_consistency", "coarse_errors", "coarse_mismatch", "make_consistent"]


def coarse_consistency(fine: np.ndarray, coarse: np.ndarray, factor: int) -> np.ndarray:
    """Shift each coarse block of ``fine`` so that its mean equals the coarse value, GPP kept
    non-negative: the shift ``s`` solving mean(max(x + s, 0)) = coarse, found by bisection
    (the left side grows monotonically with ``s``), exact for any coarse value >= 0."""
    original = block_view(fine, factor, shape=coarse.shape)
    blocks = original.astype("float64")
    known = np.isfinite(coarse)[:, None, :, None] & np.isfinite(blocks).any(
        axis=(1, 3), keepdims=True
    )
    target = np.where(known, np.maximum(np.nan_to_num(coarse), 0.0)[:, None, :, None], 0.0)
    blocks = np.where(known, blocks, np.where(np.isfinite(blocks), blocks, 0.0))
    low = -np.nanmax(blocks, axis=(1, 3), keepdims=True)  # every pixel at 0: mean 0
    high = target - np.nanmin(blocks, axis=(1, 3), keepdims=True)  # mean >= target
    for _ in range(40):
        middle = 0.5 * (low + high)
        above = np.nanmean(np.maximum(blocks + middle, 0.0), axis=(1, 3), keepdims=True) > target
        high = np.where(above, middle, high)
        low = np.where(above, low, middle)
    shift = np.where(known, 0.5 * (low + high), 0.0)
    return from_blocks(np.where(known, np.maximum(blocks + shift, 0.0), original)).astype("float32")


def coarse_errors(fine: np.ndarray, coarse: np.ndarray, factor: int) -> np.ndarray:
    """The 30 m map averaged over each coarse pixel minus the coarse map, where both exist
    (``fine`` starts on a coarse pixel's corner; the coarse grid may overhang it)."""
    means = block_means(fine, factor, coarse.shape)  # NaN wholly outside the 30 m grid
    ok = np.isfinite(means) & np.isfinite(coarse)
    return means[ok] - coarse[ok]


def coarse_mismatch(fine: np.ndarray, coarse: np.ndarray, factor: int) -> float:
    """RMSE between the 30 m map averaged over each coarse pixel and the coarse map."""
    errors = coarse_errors(fine, coarse, factor)
    return float(np.sqrt(np.mean(errors**2))) if errors.size else float("nan")


def make_consistent(fine: np.ndarray, coarse: np.ndarray, factor: int) -> np.ndarray:
    """:func:`coarse_consistency` on a 30 m grid that the coarse one
    may overhang: padded to whole blocks, shifted, cropped back."""
    return coarse_consistency(fine, coarse, factor)[: fine.shape[0], : fine.shape[1]]

"""What the downscaler is conditioned on, per 30 m pixel, in network units.

The network learns the **residual** of GPP_L over bilinearly upsampled GPP_M, in units of
:data:`GPP_SCALE`; the conditions are the bilinear GPP_M (S1) plus the normalised static
layers — elevation, slope, aspect (sine, cosine), land-cover fractions (S2). The static layers'
statistics travel with the checkpoint, so inference normalises them as training did.
"""

from __future__ import annotations

import numpy as np

from unique_cube.errors import DownscaleError

__all__ = [
    "GPP_SCALE",
    "RESIDUAL_CLIP",
    "SCHEMES",
    "apply_static_normalisation",
    "condition_stack",
    "normalise_static",
    "validate_condition",
]


GPP_SCALE = 5.0  # gC m-2 d-1 per unit of the network's target


RESIDUAL_CLIP = 4.0  # |GPP_L - bilinear GPP_M| never exceeds 20 gC m-2 d-1


SCHEMES = ("s1", "s2")


def condition_stack(gpp_m_30m: np.ndarray, static: np.ndarray | None, scheme: str) -> np.ndarray:
    """Conditions (C, H, W): bilinear GPP_M scaled, plus the normalised static layers for S2."""
    if scheme not in SCHEMES:
        raise DownscaleError(f"unknown scheme {scheme!r}; expected one of {SCHEMES}")
    layers = [np.nan_to_num(gpp_m_30m / GPP_SCALE)[None]]
    if scheme == "s2":
        if static is None:
            raise DownscaleError("scheme s2 needs the static layers (DEM, land cover)")
        layers.append(np.nan_to_num(static))
    return np.concatenate(layers).astype("float32")


def normalise_static(static: np.ndarray, names: list[str]) -> tuple[np.ndarray, dict]:
    """Zero-mean unit-variance static layers and the statistics used (kept in checkpoints)."""
    mean = np.nanmean(static, axis=(1, 2))
    std = np.nanstd(static, axis=(1, 2))
    std[std == 0] = 1.0
    info = {"names": names, "mean": mean.tolist(), "std": std.tolist()}
    return apply_static_normalisation(static, info), info


def apply_static_normalisation(static: np.ndarray, info: dict) -> np.ndarray:
    """Static layers normalised with the statistics of :func:`normalise_static` (a checkpoint's
    ``static``), so inference sees them as training did."""
    mean = np.asarray(info["mean"])[:, None, None]
    std = np.asarray(info["std"])[:, None, None]
    return ((static - mean) / std).astype("float32")


def validate_condition(condition: np.ndarray, channels: int, scheme: str) -> None:
    """Raise :class:`DownscaleError` unless ``condition`` (C, H, W) has the ``channels`` a
    checkpoint of ``scheme`` takes and only finite values."""
    if condition.ndim != 3 or condition.shape[0] != channels:
        got = condition.shape[0] if condition.ndim == 3 else f"an array of shape {condition.shape}"
        raise DownscaleError(
            f"the checkpoint ({scheme}) takes {channels} condition layers, got {got}"
        )
    if not np.isfinite(condition).all():
        raise DownscaleError("the condition stack has NaN or infinite values")

"""Scores shared by the stages and the report: r, R², RMSE and bias; the CRPS of an ensemble."""

from __future__ import annotations

import numpy as np

__all__ = ["crps_ensemble", "metrics"]


def metrics(observed: np.ndarray, predicted: np.ndarray) -> dict:
    """r, R², RMSE and bias (mean of predicted − observed), and n."""
    observed, predicted = np.asarray(observed, float), np.asarray(predicted, float)
    n = observed.size
    if n < 2:
        return {"n": int(n), "r": None, "r2": None, "rmse": None, "bias": None}
    residual = predicted - observed
    ss_tot = float(((observed - observed.mean()) ** 2).sum())
    r = float(np.corrcoef(observed, predicted)[0, 1]) if observed.std() > 0 else None
    return {
        "n": int(n),
        "r": r,
        "r2": 1 - float((residual**2).sum()) / ss_tot if ss_tot > 0 else None,
        "rmse": float(np.sqrt((residual**2).mean())),
        "bias": float(residual.mean()),
    }


def crps_ensemble(members: np.ndarray, observed: np.ndarray) -> float:
    """Mean CRPS of an ensemble (K, …) against observations (…), the energy form."""
    k = members.shape[0]
    term1 = np.nanmean(np.abs(members - observed[None]), axis=0)
    term2 = np.abs(members[:, None] - members[None]).sum(axis=(0, 1)) / (2 * k * k)
    return float(np.nanmean(term1 - term2))

"""Scores shared by the stages and the report: r, R², RMSE and bias; an ensemble's CRPS (plain
and fair), rank histogram and spread/RMSE ratio; the RMSE within coarse blocks."""

from __future__ import annotations

import warnings

import numpy as np

__all__ = [
    "SEASONS",
    "Moments",
    "block_anomalies",
    "crps_ensemble",
    "fair_crps",
    "metrics",
    "rank_histogram",
    "spread_rmse_ratio",
    "within_block_rmse",
]

#: Meteorological seasons by month (northern hemisphere labels), for scores by season.
SEASONS = {12: "DJF", 1: "DJF", 2: "DJF", 3: "MAM", 4: "MAM", 5: "MAM",
           6: "JJA", 7: "JJA", 8: "JJA", 9: "SON", 10: "SON", 11: "SON"}  # fmt: skip


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


def _finite_pairs(members: np.ndarray, observed: np.ndarray,
                  what: str) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Members (K, n) and observations (n) where all are finite, in float64; K ≥ 2."""
    if members.shape[0] < 2:
        raise ValueError(f"{what} needs at least 2 members, got {members.shape[0]}")
    ok = np.isfinite(observed) & np.isfinite(members).all(axis=0)
    return members[:, ok].astype("float64"), observed[ok].astype("float64")


def fair_crps(members: np.ndarray, observed: np.ndarray) -> float:
    """Mean fair CRPS of a K-member ensemble (K, …) against observations (…), NaNs ignored.

    The fair form (Ferro 2014) divides the members' mutual distance by 2·K·(K−1): it is the
    CRPS the ensemble would score with infinitely many members drawn from the same
    distribution, so scores of ensembles of different sizes compare."""
    k = members.shape[0]
    m, o = _finite_pairs(members, observed, "the fair CRPS")
    if o.size == 0:
        return float("nan")
    skill = np.abs(m - o[None]).mean(axis=0)
    # Σ_i Σ_j |x_i − x_j| from the sorted members: 2 Σ_i (2i − K + 1) x_(i).
    ranked = np.sort(m, axis=0)
    weights = (2 * np.arange(k) - k + 1)[:, None]
    spread = 2 * (weights * ranked).sum(axis=0) / (2 * k * (k - 1))
    return float((skill - spread).mean())


def rank_histogram(members: np.ndarray, observed: np.ndarray) -> list[float]:
    """Share of observations at each rank among the K members (K + 1 bins; flat when the
    observations are indistinguishable from members; U-shaped when the ensemble is too
    narrow). Ties are broken at random (a fixed seed)."""
    k = members.shape[0]
    ok = np.isfinite(observed) & np.isfinite(members).all(axis=0)
    m, o = members[:, ok], observed[ok]
    if o.size == 0:
        return [float("nan")] * (k + 1)
    below = (m < o[None]).sum(axis=0)
    ties = (m == o[None]).sum(axis=0)
    rank = below + np.random.default_rng(0).integers(0, ties + 1)
    counts = np.bincount(rank, minlength=k + 1)
    return [float(c) for c in counts / counts.sum()]


def spread_rmse_ratio(members: np.ndarray, observed: np.ndarray) -> float:
    """√((K+1)/K) · ensemble spread / RMSE of the ensemble mean, over finite pixels: near 1
    for a calibrated ensemble, below 1 when it is over-confident. The spread is the root of
    the mean unbiased member variance (Fortin et al. 2014)."""
    k = members.shape[0]
    m, o = _finite_pairs(members, observed, "a spread")
    if o.size == 0:
        return float("nan")
    spread = np.sqrt(m.var(axis=0, ddof=1).mean())
    rmse = np.sqrt(((m.mean(axis=0) - o) ** 2).mean())
    return float(np.sqrt((k + 1) / k) * spread / rmse) if rmse > 0 else float("nan")


def block_anomalies(values: np.ndarray, factor: int) -> np.ndarray:
    """``values`` (…, H, W) minus the mean of its ``factor`` × ``factor`` block (NaNs ignored
    in the mean, kept in the result); H and W whole multiples of ``factor``."""
    *lead, h, w = values.shape
    if h % factor or w % factor:
        raise ValueError(f"{h} x {w} is not a whole number of {factor} x {factor} blocks")
    blocks = values.reshape(*lead, h // factor, factor, w // factor, factor)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
        means = np.nanmean(blocks, axis=(-3, -1), keepdims=True)
    return (blocks - means).reshape(values.shape)


def within_block_rmse(observed: np.ndarray, predicted: np.ndarray, factor: int) -> float:
    """RMSE after each block's mean is removed from both, over the pixels where both are
    finite (the block means taken over those pixels): the skill of the 30 m pattern alone,
    the 480 m error left out."""
    ok = np.isfinite(observed) & np.isfinite(predicted)
    o = block_anomalies(np.where(ok, observed, np.nan), factor)
    p = block_anomalies(np.where(ok, predicted, np.nan), factor)
    if not ok.any():
        return float("nan")
    return float(np.sqrt(np.mean((p[ok] - o[ok]) ** 2)))


class Moments:
    """Running sums of (observed, predicted) pairs: RMSE, bias and r of arrays too many to
    hold at once (a year of 30 m maps), added a day at a time; float64 sums."""

    def __init__(self) -> None:
        self.n = 0
        self.sums = np.zeros(5)  # o, p, o², p², o·p

    def add(self, observed: np.ndarray, predicted: np.ndarray) -> None:
        """Add the pairs where both are finite."""
        ok = np.isfinite(observed) & np.isfinite(predicted)
        o, p = observed[ok].astype("float64"), predicted[ok].astype("float64")
        self.n += o.size
        self.sums += (o.sum(), p.sum(), (o * o).sum(), (p * p).sum(), (o * p).sum())

    def scores(self) -> dict:
        """n, RMSE, bias (predicted − observed) and r; None where undefined."""
        if self.n < 2:
            return {"n": self.n, "rmse": None, "bias": None, "r": None}
        so, sp, soo, spp, sop = self.sums / self.n
        mse = max(spp - 2 * sop + soo, 0.0)
        var_o, var_p = soo - so * so, spp - sp * sp
        r = (sop - so * sp) / np.sqrt(var_o * var_p) if var_o > 0 and var_p > 0 else None
        return {"n": self.n, "rmse": float(np.sqrt(mse)), "bias": float(sp - so),
                "r": None if r is None else float(np.clip(r, -1, 1))}  # fmt: skip

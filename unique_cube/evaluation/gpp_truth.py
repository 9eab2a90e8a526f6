"""Step 1 against the truth: GPP_L at 30 m and GPP_M at 480 m on the test period's clear dates.

GPP_L is the downscalers' target and the product's value on a clear day, so its error is a
floor under everything after it. :func:`gpp_vs_truth` scores both maps against the world's
true GPP (GPP_M against the truth's 480 m block means) pooled, by slope class (a block's mean
slope for GPP_M) and by season: RMSE, bias (map − truth) and r.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence

import numpy as np

from unique_cube.config.catalog import Catalog
from unique_cube.config.pipeline import Pipeline
from unique_cube.downscale.pairs import Pairs, cached_pairs
from unique_cube.errors import ConfigError
from unique_cube.evaluation.strata import SLOPE_CLASSES, season, slope_classes
from unique_cube.evaluation.truth import open_truth
from unique_cube.inputs.static import static_layers
from unique_cube.scores import metrics

__all__ = ["block_means", "gpp_truth_scores", "gpp_vs_truth", "pairs_vs_truth", "scores_by"]

log = logging.getLogger(__name__)

#: Strata with fewer valid values are left out of a table (a score of a handful of pixels).
MIN_VALUES = 100


def block_means(values: np.ndarray, factor: int) -> np.ndarray:
    """Means of ``factor`` × ``factor`` blocks over the last two axes (NaN ignored; NaN where
    a block holds no value). The grid's sides are multiples of ``factor``."""
    *lead, h, w = values.shape
    blocks = values.reshape(*lead, h // factor, factor, w // factor, factor)
    valid = np.isfinite(blocks)
    total = np.where(valid, blocks, 0.0).sum(axis=(-3, -1))
    count = valid.sum(axis=(-3, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan).astype("float32")


def scores_by(labels: np.ndarray, observed: np.ndarray, predicted: np.ndarray,
              min_values: int = MIN_VALUES) -> dict:  # fmt: skip
    """RMSE, bias, r and n of ``predicted`` vs ``observed`` per label (finite pairs only)."""
    valid = np.isfinite(observed) & np.isfinite(predicted)
    out = {}
    for label in sorted({str(v) for v in np.unique(labels[valid])} - {""}):
        chosen = valid & (labels == label)
        if chosen.sum() >= min_values:
            out[label] = metrics(observed[chosen], predicted[chosen])
    return out


def _table(observed: np.ndarray, predicted: np.ndarray, slope: np.ndarray,
           seasons: np.ndarray) -> dict:  # fmt: skip
    """Pooled, by slope class and by season; ``slope`` is per pixel, ``seasons`` per date."""
    valid = np.isfinite(observed) & np.isfinite(predicted)
    slope_label = np.broadcast_to(slope_classes(slope), observed.shape)
    season_label = np.broadcast_to(seasons[:, None, None], observed.shape)
    return {
        **metrics(observed[valid], predicted[valid]),
        "by_slope": scores_by(slope_label, observed, predicted),
        "by_season": scores_by(season_label, observed, predicted),
    }


def gpp_vs_truth(dates: Sequence[dt.date], gpp_l: np.ndarray, gpp_m: np.ndarray,
                 truth: np.ndarray, slope: np.ndarray, factor: int) -> dict:  # fmt: skip
    """GPP_L (N, H, W; NaN where not clear) and GPP_M (N, H/f, W/f) against the truth
    (N, H, W) on ``dates``; ``slope`` (H, W) in degrees. Returns ``gpp_l_vs_truth`` and
    ``gpp_m_vs_truth`` tables: the pooled keys of :func:`~unique_cube.scores.metrics`,
    ``by_slope`` with the classes of :data:`~unique_cube.evaluation.strata.SLOPE_CLASSES`,
    ``by_season``, ``n_dates`` and the slope classes' upper bounds."""
    seasons = np.array([season(d) for d in dates], dtype=object)
    coarse_truth = block_means(truth, factor)
    coarse_slope = block_means(slope[None], factor)[0]
    about = {
        "n_dates": len(dates),
        "slope_classes_deg": {label: None if np.isinf(high) else high
                              for high, label in SLOPE_CLASSES},  # upper bounds
    }  # fmt: skip
    return {
        "gpp_l_vs_truth": {**_table(truth, gpp_l, slope, seasons), **about},
        "gpp_m_vs_truth": {**_table(coarse_truth, gpp_m, coarse_slope, seasons), **about},
    }


def pairs_vs_truth(pairs: Pairs, truth: np.ndarray, slope: np.ndarray) -> dict:
    """:func:`gpp_vs_truth` of a period's GPP_L/GPP_M pairs (the truth on their dates)."""
    dates = [d.date() if hasattr(d, "date") else d for d in pairs.dates]
    return gpp_vs_truth(dates, pairs.target, pairs.gpp_m, truth, slope, pairs.factor)


def gpp_truth_scores(pipeline: Pipeline, catalog: Catalog,
                     say: Callable[[str], None] = log.info) -> dict:  # fmt: skip
    """:func:`gpp_vs_truth` on the clear dates of ``downscale.test`` (``evaluation.
    min_clear_fraction`` of the region clear) for the pipeline's trained GPP models; the
    pairs are those the evaluation uses (cached beside the downscalers)."""
    spec = pipeline.downscale
    if spec is None or not spec.truth:
        raise ConfigError(f"{pipeline.path or pipeline.name}: GPP vs truth needs "
                          "downscale.test and downscale.truth (a demo world's)")  # fmt: skip
    threshold = pipeline.evaluation.min_clear_fraction if pipeline.evaluation else None
    pairs = cached_pairs(pipeline, catalog, spec.test, say, min_clear=threshold)
    raw, names = static_layers(catalog, pipeline.grid.geobox)
    truth = open_truth(pipeline)
    return pairs_vs_truth(pairs, truth(pairs.dates), raw[names.index("slope")])

"""The fusion downscaler's inputs and its mean: today's coarse field plus the 30 m last seen.

Spatiotemporal fusion (STARFM and its heirs) predicts a fine image from a **reference fine
image and the coarse change since then**. :func:`fusion_features` is the one definition of
what the fusion downscaler sees per 30 m pixel, in training and in the product:

* today's GPP_M — bilinear (``gpp_m``) and its 480 m block value (``gpp_m_block``);
* the reference (:mod:`unique_cube.downscale.reference`): the last clear GPP_L
  (``ref_gpp``), its age in days, GPP_M on that date (``ref_gpp_m``), the coarse change
  since (``gpp_m_change``), the STARFM one-pair rule ``ref_gpp + gpp_m_change``
  (``starfm``), the reference's own within-block pattern (``ref_anomaly``: the pixel
  minus the mean of its 480 m block's seen pixels) — NaN where a pixel was never seen — and
  the mean GPP_L − GPP_M over the ``ref_count`` clear dates seen (``ref_offset``);
* terrain: elevation, slope, slope-weighted northness and eastness (flat ground is neither
  north- nor south-facing), the day's clear-sky illumination at solar noon relative to flat
  ground; the WorldCover fractions; the day of year.

:class:`FusionMean` is the conditional mean: a per-pixel LightGBM on these features
predicting GPP_L − bilinear GPP_M (LightGBM handles the never-seen NaNs itself). The diffusion
residual over it is trained in :mod:`unique_cube.downscale.fusion_train`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from unique_cube.downscale.reference import Reference
from unique_cube.errors import DownscaleError
from unique_cube.gpp.features import illumination as sun_on_slope
from unique_cube.grid import COARSE_FACTOR
from unique_cube.inputs.static import TERRAIN_LAYERS

__all__ = [
    "DYNAMIC_FEATURES",
    "FusionMean",
    "block_anomaly",
    "fusion_features",
    "illumination",
    "terrain_features",
]


DYNAMIC_FEATURES = ("gpp_m", "gpp_m_block", "ref_gpp", "ref_age", "ref_gpp_m", "gpp_m_change",
                    "starfm", "ref_anomaly", "ref_offset", "ref_count", "doy_sin",
                    "doy_cos")  # fmt: skip
TERRAIN_FEATURES = ("elevation", "slope", "northness", "eastness", "illumination")


def illumination(slope_deg: np.ndarray, aspect_cos: np.ndarray, day: dt.date,
                 latitude: float) -> np.ndarray:  # fmt: skip
    """Clear-sky direct irradiance on the slope relative to flat ground at solar noon
    (:func:`unique_cube.gpp.features.illumination`, the GPP models' own definition) from the
    slope (degrees) and the cosine of the aspect (NaN on flat ground)."""
    slope = np.radians(slope_deg)
    southness = -np.sin(slope) * np.nan_to_num(aspect_cos)
    doy = day.timetuple().tm_yday
    return sun_on_slope(np.cos(slope), southness, latitude, doy).astype("float32")


def terrain_features(static: np.ndarray, names: Sequence[str], day: dt.date,
                     latitude: float) -> tuple[np.ndarray, list[str]]:  # fmt: skip
    """Elevation, slope, northness, eastness, illumination and the land-cover fractions
    (``lc_*``) from the static layers of :func:`unique_cube.inputs.static.static_layers`."""
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in TERRAIN_LAYERS if n not in index]
    if missing:
        raise DownscaleError(f"the fusion downscaler needs the static layers {missing}; "
                             f"got {list(names)}")  # fmt: skip
    slope = static[index["slope"]]
    steepness = np.sin(np.radians(slope))
    layers = [static[index["elevation"]], slope,
              steepness * np.nan_to_num(static[index["aspect_cos"]]),
              steepness * np.nan_to_num(static[index["aspect_sin"]]),
              illumination(slope, static[index["aspect_cos"]], day, latitude)]  # fmt: skip
    cover = [n for n in names if n.startswith("lc_")]
    layers += [static[index[n]] for n in cover]
    return np.stack(layers).astype("float32"), [*TERRAIN_FEATURES, *cover]


def block_anomaly(values: np.ndarray, factor: int = COARSE_FACTOR,
                  offset: tuple[int, int] = (0, 0)) -> np.ndarray:  # fmt: skip
    """Each pixel minus the mean of the finite pixels of its ``factor`` block; ``offset``
    is the array's first (row, column) in the grid, whose blocks start at 0."""
    oy, ox = offset[0] % factor, offset[1] % factor
    height, width = values.shape
    padded = np.full((-(-(height + oy) // factor) * factor, -(-(width + ox) // factor) * factor),
                     np.nan)  # fmt: skip
    padded[oy : oy + height, ox : ox + width] = values
    cy, cx = padded.shape[0] // factor, padded.shape[1] // factor
    blocks = padded.reshape(cy, factor, cx, factor)
    seen = np.isfinite(blocks)
    count = seen.sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(seen, blocks, 0).sum(axis=(1, 3)) / count
    fine = np.repeat(np.repeat(means, factor, axis=0), factor, axis=1)
    return (values - fine[oy : oy + height, ox : ox + width]).astype("float32")


def fusion_features(
    day: dt.date,
    gpp_m_30m: np.ndarray,
    gpp_m_block: np.ndarray,
    reference: Reference,
    terrain: np.ndarray,
    terrain_names: Sequence[str],
    *,
    offset: tuple[int, int] = (0, 0),
    anomaly: np.ndarray | None = None,
) -> tuple[np.ndarray, list[str]]:
    """The fusion features (F, H, W) of one day and their names: GPP_M (bilinear and its
    block value), the reference and the coarse change since, the terrain layers of
    :func:`terrain_features` and the day of year. ``offset``: the arrays' first pixel in the
    grid (the 480 m blocks are the grid's); ``anomaly``: the reference's block anomalies when
    computed over whole blocks beyond the arrays (a window of the product)."""
    if gpp_m_30m.shape != reference.shape or terrain.shape[1:] != reference.shape:
        raise DownscaleError(
            f"fusion inputs of different shapes: GPP_M {gpp_m_30m.shape}, "
            f"reference {reference.shape}, terrain {terrain.shape[1:]}"
        )
    reference.check_before(day)
    change = gpp_m_30m - reference.gpp_m
    angle = 2 * np.pi * day.timetuple().tm_yday / 365.25
    ones = np.ones(reference.shape, "float32")
    dynamic = [gpp_m_30m, gpp_m_block, reference.gpp, reference.age(day), reference.gpp_m,
               change, reference.gpp + change,
               block_anomaly(reference.gpp, COARSE_FACTOR, offset) if anomaly is None else anomaly,
               reference.offset,
               reference.count, np.sin(angle) * ones, np.cos(angle) * ones]  # fmt: skip
    stack = np.concatenate([np.stack(dynamic).astype("float32"), terrain.astype("float32")])
    return stack, [*DYNAMIC_FEATURES, *terrain_names]


#: LightGBM settings of the mean: many rows of few, smooth features.
MEAN_PARAMS = {"objective": "regression", "learning_rate": 0.08, "num_leaves": 63,
               "min_data_in_leaf": 200, "feature_fraction": 0.9, "bagging_fraction": 0.7,
               "bagging_freq": 1, "lambda_l2": 1.0, "verbose": -1,
               # The same model from the same rows on any machine and thread count (a paused
               # training resumes only on the same residual scale).
               "deterministic": True, "force_col_wise": True}  # fmt: skip


@dataclass
class FusionMean:
    """The conditional mean of GPP_L given the fusion features: bilinear GPP_M plus a
    LightGBM prediction of GPP_L − GPP_M (its model text travels in the checkpoint)."""

    model_text: str
    features: list[str]

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, features: Sequence[str], *, rounds: int = 300,
            threads: int = 1, seed: int = 0) -> FusionMean:  # fmt: skip
        """``x`` (N, F) rows of :func:`fusion_features` (columns ``features``, the first
        ``gpp_m``), ``y`` (N,) GPP_L."""
        import lightgbm

        features = list(features)
        if features[0] != "gpp_m" or x.shape[1] != len(features):
            raise DownscaleError(f"fusion mean: {x.shape[1]} columns for features {features}")
        params = {**MEAN_PARAMS, "num_threads": threads, "seed": seed}
        data = lightgbm.Dataset(x, y - x[:, 0], feature_name=features, free_raw_data=True)
        booster = lightgbm.train(params, data, num_boost_round=rounds)
        return cls(booster.model_to_string(), features)

    def booster(self):
        """The LightGBM booster, loaded from the model text once."""
        import lightgbm

        booster = getattr(self, "_loaded", None)
        if booster is None:
            booster = lightgbm.Booster(model_str=self.model_text)
            self._loaded = booster
        return booster

    def predict_rows(self, x: np.ndarray, threads: int = 1) -> np.ndarray:
        """GPP_L expected for rows ``x`` (N, F)."""
        return (x[:, 0] + self.booster().predict(x, num_threads=threads)).astype("float32")

    def predict(self, stack: np.ndarray, names: Sequence[str], threads: int = 1) -> np.ndarray:
        """The mean map (H, W) of a feature stack (F, H, W) of :func:`fusion_features`; NaN
        where GPP_M is missing."""
        if list(names) != self.features:
            raise DownscaleError(f"the fusion checkpoint takes the features {self.features}, "
                                 f"the pipeline gives {list(names)}")  # fmt: skip
        rows = stack.reshape(stack.shape[0], -1).T
        out = np.full(rows.shape[0], np.nan, "float32")
        ok = np.isfinite(rows[:, 0])
        if ok.any():
            out[ok] = self.predict_rows(rows[ok], threads)
        return out.reshape(stack.shape[1:])

"""The learners the GPP models choose from: LightGBM, LightGBM in random-forest mode, ridge.

:func:`fit_learner` fits one on rows of features; :class:`Fitted` predicts. A new learner is
a name here (its parameters in :data:`LEARNER_PARAMS`, its fit in :func:`fit_learner`) and in
``config.pipeline.LEARNERS``; the spatial CV of :mod:`unique_cube.gpp.train` compares it with
the others. :func:`save_model` writes a fitted model in its learner's file format, with the
feature names it takes (checked against its card when loaded, :mod:`unique_cube.gpp.model`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unique_cube.errors import ModelError
from unique_cube.files import write_atomic

__all__ = ["LEARNER_PARAMS", "Fitted", "fit_learner", "save_model"]


LEARNER_PARAMS = {
    "lightgbm": {
        "objective": "regression",
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_data_in_leaf": 20,
        "feature_fraction": 0.9,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "num_boost_round": 400,
    },
    "lightgbm_rf": {
        "objective": "regression",
        "boosting": "rf",
        "num_leaves": 255,
        "min_data_in_leaf": 10,
        "feature_fraction": 0.7,
        "bagging_fraction": 0.632,
        "bagging_freq": 1,
        # 100 trees: the 20-fold CV of the compact demo's MODIS table (6696 rows) gave RMSE
        # 1.2136 with 100 and 1.2135 with 300, in 14 s instead of 40 s.
        "num_boost_round": 100,
    },
}


@dataclass
class Fitted:
    learner: str
    booster: object | None = None
    coef: np.ndarray | None = None
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None

    def predict(self, x: np.ndarray, num_threads: int = 0) -> np.ndarray:
        if self.booster is not None:
            return self.booster.predict(x, num_threads=num_threads)
        filled = np.where(np.isnan(x), self.mean, x)
        z = (filled - self.mean) / self.scale
        return z @ self.coef[1:] + self.coef[0]


def fit_learner(
    learner: str,
    x: np.ndarray,
    y: np.ndarray,
    threads: int,
    seed: int,
    features: Sequence[str] | None = None,
) -> Fitted:
    """``learner`` fitted on rows ``x`` (columns ``features``, whose names LightGBM keeps in
    its model) and targets ``y``."""
    if learner == "linear":
        mean = np.nanmean(x, axis=0)
        scale = np.nanstd(x, axis=0)
        scale[scale == 0] = 1.0
        z = (np.where(np.isnan(x), mean, x) - mean) / scale
        design = np.column_stack([np.ones(len(z)), z])
        ridge = 1.0 * np.eye(design.shape[1])
        ridge[0, 0] = 0.0
        coef = np.linalg.solve(design.T @ design + ridge, design.T @ y)
        return Fitted(learner, coef=coef, mean=mean, scale=scale)
    import lightgbm as lgb

    params = dict(LEARNER_PARAMS[learner])
    rounds = params.pop("num_boost_round")
    params.update({"verbose": -1, "num_threads": threads, "seed": seed, "deterministic": True})
    names = list(features) if features is not None else "auto"
    data = lgb.Dataset(x, y, feature_name=names, free_raw_data=False)
    booster = lgb.train(params, data, num_boost_round=rounds)
    return Fitted(learner, booster=booster)


def save_model(model: Fitted, path: Path, features: Sequence[str]) -> str:
    """Write ``model`` to ``path`` whole or not at all — LightGBM's text format, or the ridge
    coefficients as JSON with the ``features`` they take — and return the file's SHA-256."""
    if model.booster is not None:
        names = model.booster.feature_name()
        if names != list(features):
            raise ModelError(f"{path}: the booster's features {names} are not {list(features)}")
        text = model.booster.model_to_string()
    else:
        text = json.dumps(
            {"features": list(features), "coef": model.coef.tolist(),
             "mean": model.mean.tolist(), "scale": model.scale.tolist()}
        )  # fmt: skip
    data = text.encode()
    with write_atomic(Path(path)) as partial:
        partial.write_bytes(data)
    return hashlib.sha256(data).hexdigest()

"""Step 1 of UNIQUE: daily GPP from vegetation indices and weather, learned from flux towers.

* :func:`spatial_folds` groups sites by location (k-means on their coordinates) so that a
  fold holds out whole sites and their neighbours;
* :func:`cross_validate` fits each learner (LightGBM, LightGBM in random-forest mode, a ridge
  regression on the same features) on all folds but one and predicts the held-out sites;
* :func:`train` picks the learner with the lowest cross-validated RMSE, fits it on every site
  and writes the model with a JSON model card (features, the range of each seen in training,
  CV metrics overall / per vegetation type / per fold, training-data hash, library versions);
* :func:`predict` applies a saved model to a lazy cube chunk by chunk: the model is loaded once
  per worker process from its path, never serialised into the tasks.

Features: the indices of :data:`unique_cube.sites.FEATURE_INDICES`, daily air temperature,
VPD, shortwave and precipitation from the reanalysis, and the day of year as sine and cosine.
Land cover is left out: WorldCover cannot tell deciduous from evergreen forest, so a map could
not give the model the class the towers were labelled with; the indices carry the difference.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .errors import UniqueCubeError
from .sites import FEATURE_INDICES

__all__ = [
    "FEATURES",
    "GppModel",
    "ModelError",
    "add_time_features",
    "cross_validate",
    "metrics",
    "predict",
    "spatial_folds",
    "train",
]

WEATHER = ("tair", "vpd", "shortwave", "precipitation")
FEATURES = (*FEATURE_INDICES, *WEATHER, "doy_sin", "doy_cos")
GPP_ATTRS = {
    "units": "g m-2 day-1",
    "standard_name": "gross_primary_productivity_of_biomass_expressed_as_carbon",
    "long_name": "gross primary productivity",
}
_LGB_PARAMS = {
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


class ModelError(UniqueCubeError):
    """A model file, card or feature set is unusable."""

    exit_code = 3


def add_time_features(table: pd.DataFrame, date_column: str = "date") -> pd.DataFrame:
    """Day of year as a point on the circle (no jump at New Year)."""
    doy = pd.to_datetime(table[date_column]).dt.dayofyear.to_numpy()
    angle = 2 * np.pi * (doy - 1) / 365.25
    return table.assign(doy_sin=np.sin(angle), doy_cos=np.cos(angle))


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


def spatial_folds(sites: pd.DataFrame, n_folds: int, seed: int = 0) -> dict[str, int]:
    """Fold of each site: k-means clusters of the site coordinates (whole sites held out,
    nearby sites together). With fewer sites than folds, one site per fold."""
    names = sites["site"].to_numpy()
    if len(names) <= n_folds:
        return {name: i for i, name in enumerate(names)}
    lat = sites["lat"].to_numpy(float)
    xy = np.column_stack([sites["lon"].to_numpy(float) * np.cos(np.radians(lat)), lat])
    rng = np.random.default_rng(seed)
    centres = xy[rng.choice(len(xy), n_folds, replace=False)]
    for _ in range(100):
        label = np.argmin(((xy[:, None] - centres[None]) ** 2).sum(-1), axis=1)
        for k in range(n_folds):
            if not (label == k).any():  # an empty cluster takes the farthest site
                far = np.argmax(((xy - centres[label]) ** 2).sum(-1))
                label[far] = k
        new = np.array([xy[label == k].mean(axis=0) for k in range(n_folds)])
        if np.allclose(new, centres):
            break
        centres = new
    return {name: int(k) for name, k in zip(names, label, strict=True)}


@dataclass
class _Fitted:
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


def _fit(learner: str, x: np.ndarray, y: np.ndarray, threads: int, seed: int) -> _Fitted:
    if learner == "linear":
        mean = np.nanmean(x, axis=0)
        scale = np.nanstd(x, axis=0)
        scale[scale == 0] = 1.0
        z = (np.where(np.isnan(x), mean, x) - mean) / scale
        design = np.column_stack([np.ones(len(z)), z])
        ridge = 1.0 * np.eye(design.shape[1])
        ridge[0, 0] = 0.0
        coef = np.linalg.solve(design.T @ design + ridge, design.T @ y)
        return _Fitted(learner, coef=coef, mean=mean, scale=scale)
    import lightgbm as lgb

    params = dict(_LGB_PARAMS[learner])
    rounds = params.pop("num_boost_round")
    params.update({"verbose": -1, "num_threads": threads, "seed": seed, "deterministic": True})
    booster = lgb.train(params, lgb.Dataset(x, y, free_raw_data=False), num_boost_round=rounds)
    return _Fitted(learner, booster=booster)


def cross_validate(
    table: pd.DataFrame,
    folds: dict[str, int],
    learners: Sequence[str],
    *,
    features: Sequence[str] = FEATURES,
    threads: int = 2,
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """Out-of-fold predictions per learner: the table's rows with a ``predicted`` column."""
    _check_columns(table, [*features, "gpp", "site"])
    x = table[list(features)].to_numpy(np.float64)
    y = table["gpp"].to_numpy(np.float64)
    fold = table["site"].map(folds).to_numpy()
    out = {}
    for learner in learners:
        predicted = np.full(len(table), np.nan)
        for k in np.unique(fold):
            held = fold == k
            model = _fit(learner, x[~held], y[~held], threads, seed)
            predicted[held] = model.predict(x[held])
        out[learner] = table.assign(predicted=predicted, fold=fold)
    return out


def _report(oof: pd.DataFrame) -> dict:
    overall = metrics(oof["gpp"], oof["predicted"])
    by_type = {
        str(k): metrics(g["gpp"], g["predicted"]) for k, g in oof.groupby("igbp", dropna=False)
    }
    by_fold = {
        str(int(k)): {**metrics(g["gpp"], g["predicted"]), "sites": sorted(g["site"].unique())}
        for k, g in oof.groupby("fold")
    }
    return {"overall": overall, "per_vegetation_type": by_type, "per_fold": by_fold}


def _check_columns(table: pd.DataFrame, needed: Sequence[str]) -> None:
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ModelError(f"the training table lacks column(s) {', '.join(missing)}")


def train(
    table: pd.DataFrame,
    sites: pd.DataFrame,
    output: str | Path,
    name: str,
    *,
    learners: Sequence[str] = ("lightgbm", "lightgbm_rf", "linear"),
    n_folds: int = 20,
    features: Sequence[str] = FEATURES,
    threads: int = 2,
    seed: int = 0,
    metadata: dict | None = None,
) -> dict:
    """Cross-validate the learners, fit the best on all data, write ``<name>.model`` (LightGBM
    text, or the ridge coefficients as JSON) and ``<name>.card.json``; return the card.
    ``metadata`` (the source, how windows were accepted …) is copied into the card."""
    import lightgbm

    from . import __version__

    table = table.dropna(subset=["gpp"]).reset_index(drop=True)
    if table.empty:
        raise ModelError(f"{name}: the training table has no rows")
    used = sites[sites["site"].isin(table["site"].unique())]
    folds = spatial_folds(used, n_folds, seed)
    oof = cross_validate(table, folds, learners, features=features, threads=threads, seed=seed)
    reports = {learner: _report(frame) for learner, frame in oof.items()}
    best = min(reports, key=lambda k: reports[k]["overall"]["rmse"])
    x = table[list(features)].to_numpy(np.float64)
    model = _fit(best, x, table["gpp"].to_numpy(np.float64), threads, seed)

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model_path = output / f"{name}.model"
    if model.booster is not None:
        model.booster.save_model(str(model_path))
    else:
        model_path.write_text(
            json.dumps(
                {"coef": model.coef.tolist(), "mean": model.mean.tolist(),
                 "scale": model.scale.tolist()}
            )
        )  # fmt: skip
    digest = hashlib.sha256(
        pd.util.hash_pandas_object(table[["site", "date", "gpp", *features]], index=False).values
    ).hexdigest()
    card = {
        **(metadata or {}),
        "name": name,
        "learner": best,
        "model_file": model_path.name,
        "features": list(features),
        "feature_ranges": {
            f: [float(np.nanmin(table[f])), float(np.nanmax(table[f]))] for f in features
        },
        "target": "GPP (gC m-2 day-1)",
        "n_rows": len(table),
        "n_sites": int(table["site"].nunique()),
        "folds": n_folds,
        "fold_of_site": folds,
        "cv": reports[best],
        "learner_comparison": {k: v["overall"] for k, v in reports.items()},
        "params": _LGB_PARAMS.get(best, {"ridge_alpha": 1.0}),
        "training_data_sha256": digest,
        "versions": {
            "unique_cube": __version__,
            "lightgbm": lightgbm.__version__,
            "numpy": np.__version__,
            "pandas": pd.__version__,
        },
    }
    (output / f"{name}.card.json").write_text(json.dumps(card, indent=1))
    oof[best].to_parquet(output / f"{name}.cv.parquet")
    return card


class GppModel:
    """A saved model and its card. ``predict`` takes rows of the card's features in order."""

    def __init__(self, card_path: str | Path):
        card_path = Path(card_path)
        try:
            self.card = json.loads(card_path.read_text())
            self.features = list(self.card["features"])
            model_file = card_path.parent / self.card["model_file"]
            learner = self.card["learner"]
        except (OSError, ValueError, KeyError) as err:
            raise ModelError(f"{card_path}: not a unique-cube model card ({err})") from err
        if learner == "linear":
            try:
                data = json.loads(model_file.read_text())
                coef, mean, scale = (np.array(data[k]) for k in ("coef", "mean", "scale"))
            except (OSError, ValueError, KeyError) as err:
                raise ModelError(f"{model_file}: not a linear model file ({err})") from err
            self._fitted = _Fitted("linear", coef=coef, mean=mean, scale=scale)
        else:
            import lightgbm as lgb

            try:
                booster = lgb.Booster(model_file=str(model_file))
            except (lgb.basic.LightGBMError, OSError) as err:
                raise ModelError(f"{model_file}: not a LightGBM model ({err})") from err
            names = booster.feature_name()
            if len(names) != len(self.features):
                raise ModelError(
                    f"{model_file}: the model takes {len(names)} features, its card lists "
                    f"{len(self.features)}"
                )
            self._fitted = _Fitted(learner, booster=booster)
        self.path = card_path

    def predict(self, x: np.ndarray, num_threads: int = 0) -> np.ndarray:
        """GPP for rows of features in the card's order (``num_threads`` 0: LightGBM's
        default; 1 inside Dask tasks, whose threads already run in parallel)."""
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ModelError(
                f"{self.path}: expected rows of {len(self.features)} features "
                f"({', '.join(self.features)}), got shape {x.shape}"
            )
        return np.asarray(self._fitted.predict(x, num_threads), dtype="float32")


_MODELS: dict[str, GppModel] = {}


def _model(card_path: str) -> GppModel:
    # One load per process: tasks carry the path, never the Booster.
    if card_path not in _MODELS:
        _MODELS[card_path] = GppModel(card_path)
    return _MODELS[card_path]


def _predict_block(*arrays: np.ndarray, card_path: str) -> np.ndarray:
    model = _model(card_path)
    stacked = np.stack([np.asarray(a, dtype="float64") for a in arrays], axis=-1)
    flat = stacked.reshape(-1, stacked.shape[-1])
    valid = ~np.isnan(flat).any(axis=1)
    out = np.full(flat.shape[0], np.nan, dtype="float32")
    if valid.any():
        out[valid] = np.maximum(model.predict(flat[valid], num_threads=1), 0.0)
    return out.reshape(stacked.shape[:-1])


def _outside_block(*arrays: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> np.ndarray:
    outside = np.zeros(np.shape(arrays[0]), dtype=bool)
    for values, low, high in zip(arrays, lows, highs, strict=True):
        outside |= (values < low) | (values > high)
    return outside


def predict(features: xr.Dataset, card_path: str | Path) -> xr.Dataset:
    """Lazy GPP (``gpp``, gC m-2 day-1, NaN where a feature is missing) and ``out_of_range``
    (a feature outside the range seen in training) from a Dataset holding the card's features
    as variables of the same shape."""
    card_path = str(Path(card_path).resolve())
    model = _model(card_path)
    missing = [f for f in model.features if f not in features]
    if missing:
        raise ModelError(
            f"{card_path}: the input lacks feature(s) {', '.join(missing)} "
            f"(the model needs, in order: {', '.join(model.features)})"
        )
    arrays = [features[f] for f in model.features]
    gpp = xr.apply_ufunc(
        _predict_block,
        *arrays,
        kwargs={"card_path": card_path},
        dask="parallelized",
        output_dtypes=["float32"],
    )
    ranges = model.card["feature_ranges"]
    outside = xr.apply_ufunc(
        _outside_block,
        *arrays,
        kwargs={
            "lows": np.array([ranges[f][0] for f in model.features]),
            "highs": np.array([ranges[f][1] for f in model.features]),
        },
        dask="parallelized",
        output_dtypes=[bool],
    )
    gpp.attrs = {**GPP_ATTRS, "model": model.card["name"], "learner": model.card["learner"]}
    outside.attrs = {"long_name": "an input outside the range seen in training"}
    return xr.Dataset({"gpp": gpp, "out_of_range": outside})

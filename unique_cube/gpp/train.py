"""Training the GPP models: spatial cross-validation, the best learner, a model and its card.

* :func:`spatial_folds` groups sites by location (k-means on their coordinates) so that a
  fold holds out whole sites and their neighbours;
* :func:`cross_validate` fits each learner (:mod:`unique_cube.gpp.learners`) on all folds but
  one and predicts the held-out sites;
* :func:`train` picks the learner with the lowest cross-validated RMSE, fits it on every site
  and writes the model with its :class:`~unique_cube.gpp.model.ModelCard`;
* :func:`train_gpp` is ``unique-cube train-gpp``: both models of a pipeline from the tower
  tables of :mod:`unique_cube.gpp.towers`, with a CV report (JSON) and scatter plots (PNG).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import dask
import numpy as np
import pandas as pd

from unique_cube.config.pipeline import Pipeline
from unique_cube.errors import ModelError
from unique_cube.gpp.features import FEATURES
from unique_cube.gpp.learners import LEARNER_PARAMS, Fitted, fit_learner, save_model
from unique_cube.gpp.model import ModelCard
from unique_cube.gpp.towers import MODELS, training_tables
from unique_cube.inputs.search import open_catalog
from unique_cube.scores import SEASONS, metrics
from unique_cube.version import __version__

__all__ = ["cross_validate", "spatial_folds", "train", "train_gpp"]


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
            model = fit_learner(learner, x[~held], y[~held], threads, seed, features)
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
    by_season = {}
    if "date" in oof:
        seasons = pd.to_datetime(oof["date"]).dt.month.map(SEASONS)
        by_season = {str(k): metrics(g["gpp"], g["predicted"]) for k, g in oof.groupby(seasons)}
    return {"overall": overall, "per_vegetation_type": by_type, "per_season": by_season,
            "per_fold": by_fold}  # fmt: skip


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
) -> tuple[Fitted, ModelCard]:
    """Cross-validate the learners, fit the best on all data, write ``<name>.model`` (LightGBM
    text, or the ridge coefficients as JSON) and ``<name>.card.json``; return the fitted
    model and its card.
    ``metadata`` (the source, how windows were accepted …) is copied into the card."""
    import lightgbm

    table = table.dropna(subset=["gpp"]).reset_index(drop=True)
    if table.empty:
        raise ModelError(f"{name}: the training table has no rows")
    used = sites[sites["site"].isin(table["site"].unique())]
    folds = spatial_folds(used, n_folds, seed)
    oof = cross_validate(table, folds, learners, features=features, threads=threads, seed=seed)
    reports = {learner: _report(frame) for learner, frame in oof.items()}
    best = min(reports, key=lambda k: reports[k]["overall"]["rmse"])
    x = table[list(features)].to_numpy(np.float64)
    model = fit_learner(best, x, table["gpp"].to_numpy(np.float64), threads, seed, features)

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model_path = output / f"{name}.model"
    model_sha256 = save_model(model, model_path, features)
    digest = hashlib.sha256(
        pd.util.hash_pandas_object(table[["site", "date", "gpp", *features]], index=False).values
    ).hexdigest()
    card = ModelCard(
        **(metadata or {}),
        name=name,
        learner=best,
        model_file=model_path.name,
        model_sha256=model_sha256,
        features=tuple(features),
        feature_ranges={
            f: (float(np.nanmin(table[f])), float(np.nanmax(table[f]))) for f in features
        },
        target="GPP (gC m-2 day-1)",
        n_rows=len(table),
        n_sites=int(table["site"].nunique()),
        folds=n_folds,
        fold_of_site=folds,
        cv=reports[best],
        learner_comparison={k: v["overall"] for k, v in reports.items()},
        params=LEARNER_PARAMS.get(best, {"ridge_alpha": 1.0}),
        training_data_sha256=digest,
        versions={
            "unique_cube": __version__,
            "lightgbm": lightgbm.__version__,
            "numpy": np.__version__,
            "pandas": pd.__version__,
        },
    )
    card.write(output / f"{name}.card.json")
    oof[best].to_parquet(output / f"{name}.cv.parquet")
    return model, card


log = logging.getLogger(__name__)


def train_gpp(pipeline: Pipeline, say: Callable[[str], None] = log.info) -> dict:
    """Train both models of a pipeline; returns the CV report (also written as JSON)."""
    spec = pipeline.gpp
    output = Path(spec.output)
    output.mkdir(parents=True, exist_ok=True)
    with open_catalog(pipeline) as catalog, dask.config.set(num_workers=pipeline.gpp.threads):
        tables, sites = training_tables(pipeline, catalog, say)
    report = {}
    for key in MODELS:
        tables[key].to_parquet(output / f"{key}_training.parquet")
        model_spec = getattr(spec, key)
        _, card = train(
            tables[key], sites, output, f"gpp_{key}",
            learners=spec.learners, n_folds=spec.folds, threads=spec.threads,
            metadata={"source": model_spec.source, "min_clear": model_spec.min_clear,
                      "gap_fill_days": model_spec.gap_fill_days,
                      "train_period": [str(spec.train.start), str(spec.train.end)]},
        )  # fmt: skip
        report[key] = {
            "learner": card.learner,
            "cv": card.cv,
            "learner_comparison": card.learner_comparison,
            "n_rows": card.n_rows,
            "n_sites": card.n_sites,
            "folds": card.folds,
        }
        overall = card.cv["overall"]
        say(f"{key}: {card.learner} r {overall['r']:.3f} RMSE {overall['rmse']:.2f} "
            f"bias {overall['bias']:+.2f} gC m-2 d-1 ({card.n_sites} sites)")  # fmt: skip
        _scatter(pd.read_parquet(output / f"gpp_{key}.cv.parquet"), key, card,
                 output / f"gpp_{key}_cv.png")  # fmt: skip
    (output / "cv_report.json").write_text(json.dumps(report, indent=1))
    return report


def _scatter(oof: pd.DataFrame, key: str, card: ModelCard, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overall = card.cv["overall"]
    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    ax.hexbin(oof["gpp"], oof["predicted"], gridsize=60, mincnt=1, bins="log", cmap="viridis")
    top = float(max(oof["gpp"].max(), oof["predicted"].max()))
    ax.plot([0, top], [0, top], color="0.3", lw=1)
    ax.set_xlabel("tower GPP (gC m$^{-2}$ d$^{-1}$)")
    ax.set_ylabel("cross-validated prediction (gC m$^{-2}$ d$^{-1}$)")
    label = "GPP_M" if key == "modis" else "GPP_L"
    ax.set_title(
        f"{label} ({card.learner}, {card.folds}-fold spatial CV)\n"
        f"r {overall['r']:.2f}  RMSE {overall['rmse']:.2f}  bias {overall['bias']:+.2f}  "
        f"n {overall['n']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

"""GPP models: spatial folds, metrics, training with a model card, chunked prediction."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import raise_if_dask_computes

from unique_cube.errors import ModelError
from unique_cube.gpp.features import FEATURES
from unique_cube.gpp.model import GppModel
from unique_cube.gpp.predict import predict
from unique_cube.gpp.train import spatial_folds, train
from unique_cube.scores import metrics


def _sites(n: int = 24) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    # Three clusters of towers far apart.
    centres = np.array([[127.0, 37.0], [128.5, 36.0], [126.5, 38.3]])
    pick = np.arange(n) % 3
    lonlat = centres[pick] + rng.normal(0, 0.05, (n, 2))
    return pd.DataFrame(
        {"site": [f"S{i:02d}" for i in range(n)], "lon": lonlat[:, 0], "lat": lonlat[:, 1],
         "igbp": np.where(pick == 0, "DBF", "ENF"), "cluster": pick}
    )  # fmt: skip


def _table(sites: pd.DataFrame, days: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for site in sites["site"]:
        frame = pd.DataFrame({f: rng.normal(size=days) for f in FEATURES})
        frame["ndvi"] = rng.uniform(0.1, 0.9, days)
        frame["gpp"] = 12 * frame["ndvi"] + 0.8 * frame["tair_local"] + rng.normal(0, 0.5, days)
        frame["site"] = site
        frame["date"] = pd.date_range("2021-05-01", periods=days)
        rows.append(frame)
    table = pd.concat(rows, ignore_index=True)
    return table.merge(sites[["site", "igbp"]], on="site")


def test_metrics_on_known_values() -> None:
    m = metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 3.0, 4.0, 5.0]))
    assert m["r"] == pytest.approx(1.0)
    assert m["rmse"] == pytest.approx(1.0)
    assert m["bias"] == pytest.approx(1.0)
    assert m["r2"] == pytest.approx(1 - 4 / 5)


def test_spatial_folds_hold_out_whole_neighbourhoods() -> None:
    sites = _sites(24)
    folds = spatial_folds(sites, 3)
    assert set(folds) == set(sites["site"])
    assert len(set(folds.values())) == 3
    by_cluster = sites.assign(fold=sites["site"].map(folds)).groupby("cluster")["fold"].nunique()
    assert (by_cluster == 1).all()  # the three groups of towers are the three folds
    assert spatial_folds(sites.head(5), 20) == {s: i for i, s in enumerate(sites.head(5)["site"])}


#: LightGBM threads for the tests' training. Its OpenMP threads meet at a barrier several times
#: per tree; with more threads than cores free, each meeting waits for a descheduled thread. On
#: a 2-core machine the 7 fits x 400 trees below take 4 s with 1 or 2 threads when it is quiet;
#: beside four CPU-burning processes, 18 s with 1 thread and more than 190 s with 2 (a loaded
#: CI run hit the 300 s timeout).
TRAIN_THREADS = 1


def test_train_writes_model_and_card(tmp_path: Path) -> None:
    sites = _sites(24)
    table = _table(sites)
    _, card = train(table, sites, tmp_path, "gpp_test", learners=["lightgbm", "linear"],
                    n_folds=6, threads=TRAIN_THREADS)  # fmt: skip
    assert set(card.learner_comparison) == {"lightgbm", "linear"}
    rmse = {k: v["rmse"] for k, v in card.learner_comparison.items()}
    assert card.learner == min(rmse, key=rmse.get)
    assert card.cv["overall"]["r"] > 0.9
    assert set(card.cv["per_vegetation_type"]) == {"DBF", "ENF"}
    assert len(card.cv["per_fold"]) == 6
    held = [set(f["sites"]) for f in card.cv["per_fold"].values()]
    assert sum(len(h) for h in held) == 24 and not set.intersection(*held[:2])
    assert card.features == FEATURES
    low, high = card.feature_ranges["ndvi"]
    assert low == pytest.approx(table["ndvi"].min()) and high == pytest.approx(table["ndvi"].max())
    assert len(card.training_data_sha256) == 64
    assert {"lightgbm", "numpy", "unique_cube"} <= set(card.versions)
    on_disk = json.loads((tmp_path / "gpp_test.card.json").read_text())
    assert on_disk["learner"] == card.learner
    # Same data, same card hash; different data, different hash.
    _, again = train(table, sites, tmp_path / "b", "gpp_test", learners=["linear"], n_folds=6)
    assert again.training_data_sha256 == card.training_data_sha256
    changed = table.assign(gpp=table["gpp"] + 0.1)
    _, other = train(changed, sites, tmp_path / "c", "gpp_test", learners=["linear"], n_folds=6)
    assert other.training_data_sha256 != card.training_data_sha256


@pytest.fixture(scope="module")
def model_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sites = _sites(12)
    folder = tmp_path_factory.mktemp("model")
    train(_table(sites), sites, folder, "gpp_m", learners=["lightgbm"], n_folds=3,
          threads=TRAIN_THREADS)  # fmt: skip
    return folder / "gpp_m.card.json"


def _features(shape=(2, 30, 40), seed=2) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    data = {f: (("time", "y", "x"), rng.normal(size=shape).astype("float32")) for f in FEATURES}
    ds = xr.Dataset(data)
    ds["ndvi"] = ds["ndvi"] * 0 + rng.uniform(0.1, 0.9, shape).astype("float32")
    return ds


def test_predict_is_lazy_and_matches_the_booster(model_card: Path) -> None:
    features = _features().chunk({"time": 1, "y": 15, "x": 40})
    features["tair_local"][0, 0, 0] = np.nan
    features["ndvi"][1, 5, 5] = 5.0  # far outside what training saw
    with raise_if_dask_computes():
        result = predict(features, model_card)
    assert result.gpp.attrs["units"] == "g m-2 day-1"
    assert result.gpp.attrs["standard_name"].startswith("gross_primary_productivity")
    out = result.compute()
    model = GppModel(model_card)
    rows = np.stack([features[f].values.ravel() for f in model.features], axis=1)
    direct = np.maximum(model.predict(rows.astype("float64")), 0).reshape(out.gpp.shape)
    valid = np.isfinite(rows).all(axis=1).reshape(out.gpp.shape)
    assert np.isnan(out.gpp.values[0, 0, 0]) and not valid[0, 0, 0]
    np.testing.assert_allclose(out.gpp.values[valid], direct[valid], rtol=1e-5)
    assert bool(out.out_of_range.values[1, 5, 5])
    assert out.out_of_range.values.mean() < 0.5


def test_the_booster_is_not_serialised_into_tasks(model_card: Path) -> None:
    features = _features((4, 30, 40)).chunk({"time": 1})
    graph = dict(predict(features, model_card).gpp.__dask_graph__())
    model_bytes = (model_card.parent / "gpp_m.model").stat().st_size
    task_bytes = len(pickle.dumps(graph)) - len(pickle.dumps(dict(features.__dask_graph__())))
    assert task_bytes < model_bytes / 4, "the model travels with the tasks"
    with dask.config.set(scheduler="processes"):
        values = predict(features, model_card).gpp.compute().values
    assert np.isfinite(values).all()


def test_bad_models_and_features_are_named(model_card: Path, tmp_path: Path) -> None:
    features = _features().drop_vars("vpd_local")
    with pytest.raises(ModelError, match=r"lacks feature\(s\) vpd_local"):
        predict(features, model_card)
    card = json.loads(model_card.read_text())
    (tmp_path / "gpp_m.model").write_text("this is not a model\n")
    (tmp_path / "gpp_m.card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="not a LightGBM model"):
        GppModel(tmp_path / "gpp_m.card.json")
    (tmp_path / "broken.card.json").write_text("{}")
    with pytest.raises(ModelError, match="not a unique-cube model card"):
        GppModel(tmp_path / "broken.card.json")
    model = GppModel(model_card)
    with pytest.raises(ModelError, match=f"expected rows of {len(FEATURES)} features"):
        model.predict(np.zeros((3, 5)))
    # Features are taken by name: a Dataset in another variable order predicts the same.
    shuffled = _features()[list(reversed(FEATURES))]
    np.testing.assert_array_equal(
        predict(shuffled, model_card).gpp.values, predict(_features(), model_card).gpp.values
    )

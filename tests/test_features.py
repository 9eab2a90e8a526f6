"""The GPP models' features: the training table and a map compute the same features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from unique_cube.gpp.features import (
    FEATURE_INDICES,
    FEATURES,
    WEATHER,
    day_of_year_terms,
    fill_gaps,
    model_features,
)
from unique_cube.gpp.towers import training_table

DAYS = pd.date_range("2023-05-01", periods=60, freq="D")
SITES = ["KR-AAA", "KR-BBB", "KR-CCC"]


def _tower_inputs(seed: int = 3) -> tuple[xr.Dataset, xr.Dataset]:
    """Tower windows (time, site) with clouds — gaps of 1 to 30 days — and the weather."""
    rng = np.random.default_rng(seed)
    shape = (len(DAYS), len(SITES))
    base = np.linspace(0.2, 0.8, len(DAYS))[:, None] + rng.normal(0, 0.02, shape)
    data = {name: (("time", "site"), (base * (1 + k / 10)).astype("float32"))
            for k, name in enumerate(FEATURE_INDICES)}  # fmt: skip
    n_clear = np.full(shape, 9, dtype="int16")
    n_clear[3:5, 0] = 0  # a 2-day gap at the first tower
    n_clear[10:40, 1] = 0  # a 30-day gap (monsoon) at the second
    n_clear[20:32, 2] = 2  # 12 days with too few clear pixels at the third
    n_clear[50, 2] = 0
    features = xr.Dataset(
        {**data, "n_clear": (("time", "site"), n_clear)},
        coords={"time": DAYS + pd.Timedelta(hours=2), "site": SITES},  # overpass time
    )
    weather = xr.Dataset(
        {name: (("time", "site"), rng.normal(10, 3, shape).astype("float32")) for name in WEATHER},
        coords={"time": DAYS, "site": SITES},
    )
    return features, weather


def test_fill_gaps_fills_short_gaps_and_leaves_long_ones_whole() -> None:
    days = np.arange(40.0)
    values = np.full(40, np.nan, dtype="float32")
    values[[0, 5, 35, 39]] = [0.0, 5.0, 35.0, 39.0]
    filled = fill_gaps(values, days, max_gap=16)
    np.testing.assert_allclose(filled[:6], np.arange(6.0))  # 5 days apart: filled
    assert np.isnan(filled[6:35]).all()  # 30 days apart: not even its first days
    np.testing.assert_allclose(filled[35:], np.arange(35.0, 40.0))


def test_training_table_and_map_features_are_the_same() -> None:
    features, weather = _tower_inputs()
    flux = pd.DataFrame([(s, d, 5.0) for s in SITES for d in DAYS], columns=["site", "date", "gpp"])
    sites = pd.DataFrame({"site": SITES, "igbp": "CRO", "lat": 37.7, "lon": 127.1})
    table = training_table(flux, sites, features, weather, min_clear=5, gap_fill_days=16)

    # The same towers as pixels of a (time, y, x) grid, made as a map's features are.
    grid = features[list(FEATURE_INDICES)].where(features["n_clear"] >= 5)
    grid = grid.assign_coords(time=DAYS).rename(site="x").expand_dims(y=[0])
    grid = grid.transpose("time", "y", "x").chunk({"time": -1, "x": 1})
    met = weather.rename(site="x").expand_dims(y=[0]).transpose("time", "y", "x")
    mapped = model_features(grid, met, gap_fill_days=16).compute()

    for i, site in enumerate(SITES):
        rows = table[table["site"] == site].set_index("date")
        pixel = mapped.isel(y=0, x=i).to_dataframe()[list(FEATURES)].dropna(how="any")
        assert list(rows.index) == list(pixel.index), site  # the same days ...
        np.testing.assert_allclose(rows[list(FEATURES)].to_numpy(), pixel.to_numpy(), rtol=1e-6)
    by_site = table.groupby("site").size()
    assert by_site["KR-AAA"] == 60  # the 2-day gap is filled
    assert by_site["KR-BBB"] == 30  # the 30-day gap is not, not even its first 16 days
    assert by_site["KR-CCC"] == 60  # 12 days of too few clear pixels: filled


def test_day_of_year_terms_have_no_jump_at_new_year() -> None:
    first = np.array(day_of_year_terms(1))
    last = np.array(day_of_year_terms(365))
    step = np.hypot(*(np.array(day_of_year_terms(101)) - np.array(day_of_year_terms(100))))
    assert np.hypot(*(first - last)) < 1.3 * step  # 31 Dec → 1 Jan is about one day's step
    assert day_of_year_terms(1) == pytest.approx((0.0, 1.0))

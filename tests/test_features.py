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
    diffuse_fraction,
    fill_gaps,
    illumination,
    local_weather,
    model_features,
    toa_shortwave,
)
from unique_cube.gpp.towers import training_table

DAYS = pd.date_range("2023-05-01", periods=60, freq="D")
SITES = ["KR-AAA", "KR-BBB", "KR-CCC"]


def _tower_inputs(seed: int = 3) -> tuple[xr.Dataset, xr.Dataset, xr.Dataset]:
    """Tower windows (time, site) with clouds — gaps of 1 to 30 days —, the weather and the
    towers' terrain."""
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
    weather["vpd"] = np.abs(weather["vpd"]) / 10  # kPa
    terrain = xr.Dataset(
        {
            "elevation": ("site", np.array([100.0, 650.0, 1200.0], "float32")),
            "elevation_reference": ("site", np.array([150.0, 400.0, 700.0], "float32")),
            "cos_slope": ("site", np.cos(np.radians([0.0, 12.0, 30.0])).astype("float32")),
            "southness": ("site", np.array([0.0, -0.2, 0.45], "float32")),
            "latitude": ("site", np.array([36.5, 37.7, 38.2], "float32")),
        },
        coords={"site": SITES},
    )
    return features, weather, terrain


def test_fill_gaps_fills_short_gaps_and_leaves_long_ones_whole() -> None:
    days = np.arange(40.0)
    values = np.full(40, np.nan, dtype="float32")
    values[[0, 5, 35, 39]] = [0.0, 5.0, 35.0, 39.0]
    filled = fill_gaps(values, days, max_gap=16)
    np.testing.assert_allclose(filled[:6], np.arange(6.0))  # 5 days apart: filled
    assert np.isnan(filled[6:35]).all()  # 30 days apart: not even its first days
    np.testing.assert_allclose(filled[35:], np.arange(35.0, 40.0))


def test_training_table_and_map_features_are_the_same() -> None:
    features, weather, terrain = _tower_inputs()
    flux = pd.DataFrame([(s, d, 5.0) for s in SITES for d in DAYS], columns=["site", "date", "gpp"])
    sites = pd.DataFrame({"site": SITES, "igbp": "CRO", "lat": 37.7, "lon": 127.1})
    table = training_table(flux, sites, features, weather, terrain.isel(site=[2, 0, 1]),
                           min_clear=5, gap_fill_days=16)  # fmt: skip

    # The same towers as pixels of a (time, y, x) grid, made as a map's features are.
    grid = features[list(FEATURE_INDICES)].where(features["n_clear"] >= 5)
    grid = grid.assign_coords(time=DAYS).rename(site="x").expand_dims(y=[0])
    grid = grid.transpose("time", "y", "x").chunk({"time": -1, "x": 1})
    met = weather.rename(site="x").expand_dims(y=[0]).transpose("time", "y", "x")
    land = terrain.rename(site="x").expand_dims(y=[0]).transpose("y", "x")
    mapped = model_features(grid, met, land, gap_fill_days=16).compute()

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


def _place(**overrides) -> dict:
    place = {"elevation": 500.0, "elevation_reference": 500.0, "cos_slope": 1.0,
             "southness": 0.0, "latitude": 37.5}  # fmt: skip
    return {**place, **overrides}


WEATHER_DAY = {"tair": 20.0, "vpd": 1.2, "shortwave": 22.0, "precipitation": 3.0}


def test_flat_ground_at_the_reanalysis_elevation_keeps_the_reanalysis_weather() -> None:
    local = local_weather(WEATHER_DAY, _place(), 172)
    assert local["tair_local"] == pytest.approx(20.0)
    assert local["vpd_local"] == pytest.approx(1.2, rel=1e-4)
    assert local["shortwave_local"] == pytest.approx(22.0)
    assert local["precipitation"] == 3.0
    assert 0 < local["clearness"] < 1


def test_a_ridge_is_colder_and_moister_in_deficit_terms_than_its_cell() -> None:
    ridge = local_weather(WEATHER_DAY, _place(elevation=1500.0), 172)
    valley = local_weather(WEATHER_DAY, _place(elevation=100.0), 172)
    assert ridge["tair_local"] == pytest.approx(20.0 - 6.5)  # 1000 m above the cell
    assert valley["tair_local"] == pytest.approx(20.0 + 2.6)
    # Air cools faster than the dew point with height: the deficit shrinks on the ridge.
    assert ridge["vpd_local"] < 1.2 < valley["vpd_local"]
    assert ridge["vpd_local"] >= 0


def test_a_south_slope_gets_more_winter_light_than_a_north_slope() -> None:
    tilt = np.radians(30.0)
    south = _place(cos_slope=np.cos(tilt), southness=np.sin(tilt))
    north = _place(cos_slope=np.cos(tilt), southness=-np.sin(tilt))
    winter_south = local_weather(WEATHER_DAY | {"shortwave": 8.0}, south, 355)
    winter_north = local_weather(WEATHER_DAY | {"shortwave": 8.0}, north, 355)
    day = 355
    assert illumination(south["cos_slope"], south["southness"], 37.5, day) > 1.5
    assert illumination(north["cos_slope"], north["southness"], 37.5, day) == 0.0
    assert winter_south["shortwave_local"] > 8.0 > winter_north["shortwave_local"] > 0.0
    # Overcast days: mostly diffuse light, so the slopes differ much less.
    dull_south = local_weather(WEATHER_DAY | {"shortwave": 1.5}, south, 355)
    dull_north = local_weather(WEATHER_DAY | {"shortwave": 1.5}, north, 355)
    ratio_dull = dull_south["shortwave_local"] / dull_north["shortwave_local"]
    assert ratio_dull < winter_south["shortwave_local"] / winter_north["shortwave_local"]


def test_illumination_of_mean_terms_is_the_mean_illumination_where_lit() -> None:
    slopes = np.radians([5.0, 10.0, 20.0, 25.0])
    aspects = np.radians([150.0, 200.0, 90.0, 180.0])
    cos_slope, southness = np.cos(slopes), -np.sin(slopes) * np.cos(aspects)
    pixels = illumination(cos_slope, southness, 37.5, 100)
    block = illumination(cos_slope.mean(), southness.mean(), 37.5, 100)
    assert (pixels > 0).all()
    assert block == pytest.approx(pixels.mean())


def test_toa_and_diffuse_fraction_are_sane() -> None:
    assert toa_shortwave(37.5, 172) == pytest.approx(41.8, abs=0.5)  # FAO-56 tables
    assert toa_shortwave(37.5, 355) == pytest.approx(14.9, abs=0.6)
    fractions = diffuse_fraction(np.array([0.05, 0.3, 0.5, 0.7, 0.9]))
    assert (np.diff(fractions) <= 0).all() and fractions[0] > 0.95 and fractions[-1] < 0.2

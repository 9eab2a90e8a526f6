"""`unique-cube evaluate`: the scores (fair CRPS, rank histogram, spread/RMSE, within-block
RMSE), the strata, the checks of its configuration and truth store, and the evaluation the
demo run made on the small world."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_config import SMALLEST as EVERY_SECTION

from unique_cube.errors import ConfigError
from unique_cube.scores import (
    Moments,
    crps_ensemble,
    fair_crps,
    metrics,
    rank_histogram,
    spread_rmse_ratio,
    within_block_rmse,
)

# --- scores ------------------------------------------------------------------------------------


def _calibrated(k: int, n: int, seed: int, shrink: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """K members and an observation per pixel, all drawn around the same random mean (the
    members' spread times ``shrink``): (K, n) and (n,)."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(0.0, 2.0, n)
    members = mean + shrink * rng.normal(0.0, 1.0, (k, n))
    return members, mean + rng.normal(0.0, 1.0, n)


def test_fair_crps_of_a_standard_normal_ensemble_is_one_over_root_pi() -> None:
    rng = np.random.default_rng(0)
    n = 200_000
    observed = rng.normal(size=n)
    # The CRPS of N(0, 1) against N(0, 1) observations is E|X - Y| - E|X - X'| / 2 = 1/√π.
    for k in (2, 16):
        assert fair_crps(rng.normal(size=(k, n)), observed) == pytest.approx(
            1 / math.sqrt(math.pi), abs=0.01
        )


def test_fair_crps_does_not_depend_on_the_ensemble_size_but_the_plain_one_does() -> None:
    rng = np.random.default_rng(1)
    n = 20_000
    observed = rng.normal(size=n)
    small, large = rng.normal(size=(2, n)), rng.normal(size=(16, n))
    assert fair_crps(small, observed) == pytest.approx(fair_crps(large, observed), abs=0.02)
    # The plain form charges a small ensemble for its size: 1.5/√π with 2 members,
    # 1.0625/√π with 16.
    plain_small, plain_large = crps_ensemble(small, observed), crps_ensemble(large, observed)
    assert plain_small == pytest.approx(1.5 / math.sqrt(math.pi), abs=0.02)
    assert plain_large == pytest.approx(1.0625 / math.sqrt(math.pi), abs=0.02)
    assert plain_small - plain_large > 0.2


def test_spread_rmse_ratio_is_one_when_calibrated_and_a_tenth_when_ten_times_too_narrow() -> None:
    k, n = 8, 100_000
    assert spread_rmse_ratio(*_calibrated(k, n, seed=2)) == pytest.approx(1.0, abs=0.02)
    # Members 10x too close together: spread 0.1, error of the mean √(1 + 0.01/K).
    narrow = spread_rmse_ratio(*_calibrated(k, n, seed=3, shrink=0.1))
    assert narrow == pytest.approx(math.sqrt((k + 1) / k) * 0.1 / math.sqrt(1 + 0.01 / k),
                                   rel=0.03)  # fmt: skip


def test_rank_histogram_is_flat_when_calibrated_and_u_shaped_when_too_narrow() -> None:
    k, n = 8, 90_000
    flat = rank_histogram(*_calibrated(k, n, seed=4))
    assert len(flat) == k + 1 and sum(flat) == pytest.approx(1.0)
    assert flat == pytest.approx([1 / (k + 1)] * (k + 1), abs=0.01)
    narrow = rank_histogram(*_calibrated(k, n, seed=5, shrink=0.3))
    assert len(narrow) == k + 1 and sum(narrow) == pytest.approx(1.0)
    middle = narrow[1:-1]
    assert min(narrow[0], narrow[-1]) > 2 / (k + 1)  # the observation often outside them all
    assert max(middle) < 1 / (k + 1) < min(narrow[0], narrow[-1])


def test_ensemble_scores_ignore_nans() -> None:
    members, observed = _calibrated(4, 2_000, seed=6)
    holed_members, holed_observed = members.copy(), observed.copy()
    holed_observed[:50] = np.nan
    holed_members[2, 50:120] = np.nan
    keep = slice(120, None)
    for score in (fair_crps, spread_rmse_ratio):
        got = score(holed_members, holed_observed)
        assert math.isfinite(got)
        assert got == pytest.approx(score(members[:, keep], observed[keep]), rel=1e-12)
    assert rank_histogram(holed_members, holed_observed) == pytest.approx(
        rank_histogram(members[:, keep], observed[keep])
    )


@pytest.mark.parametrize("score", [fair_crps, spread_rmse_ratio])
def test_an_ensemble_of_one_member_is_refused(score) -> None:
    members, observed = _calibrated(1, 100, seed=7)
    with pytest.raises(ValueError, match="at least 2 members, got 1"):
        score(members, observed)


def test_within_block_rmse_leaves_out_an_error_constant_over_each_block() -> None:
    rng = np.random.default_rng(8)
    truth = rng.gamma(2.0, 3.0, (64, 48))
    offsets = np.array([[1.0, -2.0, 0.5], [3.0, 0.0, -1.5], [2.0, 2.5, -0.5], [1.0, 1.0, 4.0]])
    predicted = truth + np.kron(offsets, np.ones((16, 16)))
    truth[3:9, 20:30] = np.nan  # missing pixels do not move a block's mean
    assert within_block_rmse(truth, predicted, 16) == pytest.approx(0.0, abs=1e-9)
    ok = np.isfinite(truth)
    assert metrics(truth[ok], predicted[ok])["rmse"] == pytest.approx(
        math.sqrt((np.kron(offsets, np.ones((16, 16)))[ok] ** 2).mean())
    )
    # A pattern error inside the blocks is what it measures.
    noise = rng.normal(0.0, 0.7, truth.shape)
    assert within_block_rmse(truth, predicted + noise, 16) == pytest.approx(0.7, rel=0.05)


def test_moments_added_in_chunks_match_the_scores_of_all_the_pairs_at_once() -> None:
    rng = np.random.default_rng(9)
    observed = rng.gamma(2.0, 3.0, 5_000).astype("float32")
    predicted = (0.8 * observed + rng.normal(1.0, 2.0, observed.size)).astype("float32")
    observed[::17] = np.nan  # dropped, like every non-finite pair
    predicted[::23] = np.inf
    moments = Moments()
    for chunk in np.array_split(np.arange(observed.size), 7):
        moments.add(observed[chunk], predicted[chunk])
    ok = np.isfinite(observed) & np.isfinite(predicted)
    expected = metrics(observed[ok], predicted[ok])
    got = moments.scores()
    assert got["n"] == expected["n"] == ok.sum()
    for key in ("rmse", "bias", "r"):
        assert got[key] == pytest.approx(expected[key], rel=1e-9), key


# --- strata ------------------------------------------------------------------------------------


def test_clear_history_counts_the_days_since_each_pixels_last_clear_date() -> None:
    from unique_cube.evaluation.strata import ClearHistory

    d0 = dt.date(2023, 6, 1)
    dates = [d0 + dt.timedelta(days=16), d0, d0 + dt.timedelta(days=8)]  # sorted by it
    # Pixels: clear on every date; on the second only; never.
    clear = np.array([[[True, False, False]], [[True, False, False]], [[True, True, False]]])
    history = ClearHistory(dates, clear)

    def age(days: int) -> list[float]:
        return history.age(d0 + dt.timedelta(days=days))[0].tolist()

    assert np.isnan(age(-1)).all()  # before any clear date
    assert age(0)[0] == 0 and np.isnan(age(0)[1:]).all()
    assert age(3)[0] == 3 and np.isnan(age(3)[1])
    assert age(8)[:2] == [0, 0]  # the first pixel starts again
    assert age(10)[:2] == [2, 2]
    assert age(16)[:2] == [0, 8]
    assert age(40)[:2] == [24, 32] and np.isnan(age(40)[2])


def test_age_and_slope_classes_have_the_documented_edges() -> None:
    from unique_cube.evaluation.strata import age_classes, slope_classes

    ages = np.array([0, 1, 8, 9, 16, 17, 32, 33, 400, np.nan])
    assert age_classes(ages).tolist() == [
        "0", "1-8", "1-8", "9-16", "9-16", "17-32", "17-32", "gt32", "gt32", "never"
    ]  # fmt: skip
    slopes = np.array([0.0, 4.9, 5.0, 14.9, 15.0, 60.0, np.nan])
    assert slope_classes(slopes).tolist() == ["lt5", "lt5", "5to15", "5to15", "gt15", "gt15", ""]


def test_scoreboard_pools_each_class_over_days_like_a_direct_computation() -> None:
    from unique_cube.evaluation.strata import Scoreboard

    rng = np.random.default_rng(10)
    board = Scoreboard()
    days = []
    for _ in range(3):
        labels = rng.choice(np.array(["forest", "crop", ""], dtype=object), (20, 20))
        observed = rng.gamma(2.0, 3.0, (20, 20))
        observed[rng.random((20, 20)) < 0.1] = np.nan
        bilinear = observed + rng.normal(0.5, 1.0, (20, 20))
        s2 = observed + rng.normal(-0.2, 0.5, (20, 20))
        s2[rng.random((20, 20)) < 0.1] = np.nan  # not scored for bilinear either
        board.add({"land_cover": labels}, observed, {"bilinear": bilinear, "s2": s2})
        days.append((labels, observed, bilinear, s2))
    table = board.table(min_n=1)
    assert set(table) == {"land_cover"}
    assert set(table["land_cover"]) == {"forest", "crop"}  # unlabelled pixels are left out
    for name in ("forest", "crop"):
        for method, which in (("bilinear", 2), ("s2", 3)):
            obs, pred = [], []
            for day in days:
                ok = (day[0] == name) & np.isfinite(day[1]) & np.isfinite(day[2])
                ok &= np.isfinite(day[3])
                obs.append(day[1][ok])
                pred.append(day[which][ok])
            expected = metrics(np.concatenate(obs), np.concatenate(pred))
            got = table["land_cover"][name][method]
            assert got["n"] == expected["n"]
            for key in ("rmse", "bias", "r"):
                assert got[key] == pytest.approx(expected[key], rel=1e-9)
    assert board.table(min_n=10_000) == {}  # classes with too few pixels are not reported


def test_sample_days_takes_one_day_in_every_from_the_first() -> None:
    from unique_cube.config.pipeline import Period
    from unique_cube.evaluation.daily import sample_days

    period = Period(dt.date(2023, 6, 1), dt.date(2023, 6, 14))
    days = sample_days(period, 4)
    assert days == [dt.date(2023, 6, d) for d in (1, 5, 9, 13)]
    assert sample_days(period, 1) == [dt.date(2023, 6, 1) + dt.timedelta(days=i)
                                      for i in range(14)]  # fmt: skip
    assert sample_days(Period(dt.date(2023, 6, 1), dt.date(2023, 6, 1)), 16) == [
        dt.date(2023, 6, 1)
    ]


# --- configuration ------------------------------------------------------------------------------

#: A pipeline with every section the evaluation needs, its grid one 480 m block.
SMALLEST = EVERY_SECTION + "evaluation:\n  output: eval\n  members: 2\n"


def _pipeline(tmp_path: Path, changes: dict[str, dict] | None = None, drop: tuple = ()):
    """:data:`SMALLEST` with ``{section: {key: value}}`` set and ``section.key`` dropped,
    written and loaded: (path, pipeline)."""
    from unique_cube.config.pipeline import load_pipeline

    data = yaml.safe_load(SMALLEST)
    for section, values in (changes or {}).items():
        data[section].update(values)
    for where in drop:
        section, key = where.split(".")
        del data[section][key]
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, load_pipeline(path)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [("members", 1, "must be at least 2 (a spread needs two), got 1"),
     ("min_clear_fraction", 1.5, "must be within [0, 1], got 1.5"),
     ("daily_every", 0, "must be at least 1, got 0"),
     ("history_days", -1, "must be within [0, 366]")],
)  # fmt: skip
def test_an_evaluation_value_out_of_range_names_the_key_and_its_line(
    tmp_path: Path, key: str, value, expected: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _pipeline(tmp_path, {"evaluation": {key: value}})
    message = str(err.value)
    path = tmp_path / "pipeline.yaml"
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1)
                if text.strip().startswith(f"{key}:"))  # fmt: skip
    assert message.startswith(f"{path}: evaluation.{key}: "), message
    assert expected in message and f"(line {line}" in message, message


def test_a_test_period_overlapping_the_training_period_is_refused(tmp_path: Path) -> None:
    from unique_cube.evaluation.evaluate import check_periods

    # No downscale.train: the downscaler trains on gpp.train.
    _, pipeline = _pipeline(tmp_path)
    with pytest.raises(ConfigError) as err:
        check_periods(pipeline)
    message = str(err.value)
    assert "downscale.test 2023-06-01..2023-10-31 overlaps gpp.train 2023-01-01..2023-12-31" in (
        message
    )
    _, pipeline = _pipeline(
        tmp_path, {"downscale": {"train": {"start": "2023-01-01", "end": "2023-06-01"}}}
    )
    with pytest.raises(ConfigError) as err:
        check_periods(pipeline)
    assert (
        "downscale.test 2023-06-01..2023-10-31 overlaps downscale.train 2023-01-01..2023-06-01"
        in str(err.value)
    )


def test_disjoint_test_and_training_periods_pass(tmp_path: Path) -> None:
    from unique_cube.evaluation.evaluate import check_periods

    _, pipeline = _pipeline(
        tmp_path, {"downscale": {"train": {"start": "2023-01-01", "end": "2023-05-31"}}}
    )
    check_periods(pipeline)  # gpp.train overlaps, but the downscaler trains on downscale.train
    _, pipeline = _pipeline(tmp_path, {"gpp": {"train": {"start": "2022-01-01",
                                                         "end": "2022-12-31"}}})  # fmt: skip
    check_periods(pipeline)


# --- the truth store ----------------------------------------------------------------------------


def _write_truth(path: Path, pipeline, *, shift: float = 0.0, variable: str = "gpp") -> np.ndarray:
    """A truth store on the pipeline's grid (moved by ``shift`` m) for 2023-06-01..03."""
    import xarray as xr

    coords = pipeline.grid.geobox.coords
    times = np.array(["2023-06-01", "2023-06-02", "2023-06-03"], dtype="datetime64[ns]")
    ny, nx = pipeline.grid.geobox.shape
    values = np.random.default_rng(11).gamma(2.0, 3.0, (3, ny, nx)).astype("float32")
    xr.Dataset(
        {variable: (("time", "y", "x"), values)},
        coords={"time": times, "y": coords["y"].values + shift, "x": coords["x"].values + shift},
    ).to_zarr(path, consolidated=False)
    return values


def test_the_truth_is_read_by_day(tmp_path: Path) -> None:
    from unique_cube.evaluation.truth import open_truth

    store = tmp_path / "truth.zarr"
    path, pipeline = _pipeline(tmp_path, {"downscale": {"truth": str(store)}})
    values = _write_truth(store, pipeline)
    read = open_truth(pipeline)
    np.testing.assert_array_equal(read([dt.date(2023, 6, 3), dt.date(2023, 6, 1)]),
                                  values[[2, 0]])  # fmt: skip
    with pytest.raises(ConfigError) as err:
        read([dt.date(2023, 6, 2), dt.date(2023, 7, 1)])
    message = str(err.value)
    assert f"{path}: downscale.truth: {store}" in message
    assert "no truth for 2023-07-01" in message and "2023-06-01..2023-06-03" in message
    _, pipeline = _pipeline(tmp_path)
    assert open_truth(pipeline) is None  # no truth store named: nothing to read


def test_a_missing_truth_store_is_named(tmp_path: Path) -> None:
    from unique_cube.evaluation.truth import open_truth

    store = tmp_path / "nowhere" / "gpp.zarr"
    path, pipeline = _pipeline(tmp_path, {"downscale": {"truth": str(store)}})
    with pytest.raises(ConfigError, match="does not exist") as err:
        open_truth(pipeline)
    assert str(err.value).startswith(f"{path}: downscale.truth: {store}")


def test_a_truth_store_on_another_grid_is_refused(tmp_path: Path) -> None:
    from unique_cube.evaluation.truth import open_truth

    store = tmp_path / "truth.zarr"
    path, pipeline = _pipeline(tmp_path, {"downscale": {"truth": str(store)}})
    _write_truth(store, pipeline, shift=30.0)  # one pixel to the north-east
    with pytest.raises(ConfigError, match=r"is on another grid than grid\.bounds") as err:
        open_truth(pipeline)
    assert str(err.value).startswith(f"{path}: downscale.truth: {store}")


def test_a_truth_store_without_gpp_is_refused(tmp_path: Path) -> None:
    from unique_cube.evaluation.truth import open_truth

    store = tmp_path / "truth.zarr"
    path, pipeline = _pipeline(tmp_path, {"downscale": {"truth": str(store)}})
    _write_truth(store, pipeline, variable="npp")
    with pytest.raises(ConfigError, match=r"holds no 'gpp' variable \(has \['npp'\]\)") as err:
        open_truth(pipeline)
    assert str(err.value).startswith(f"{path}: downscale.truth: {store}")


# --- the demo's evaluation (small world) --------------------------------------------------------

METHODS = {"bilinear", "fusion", "fusion_mean", "s1", "s2", "pure_pixel_oracle"}
AGE_LABELS = {"0", "1-8", "9-16", "17-32", "gt32", "never"}


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _evaluation(out: Path) -> dict:
    return json.loads((out / "eval" / "evaluation.json").read_text())


def test_the_demo_evaluation_holds_every_figure(trained_downscalers: Path) -> None:
    result = _evaluation(trained_downscalers)
    dates = result["dates"]
    assert dates and all(d[:4] == "2023" and "2023-06-01" <= d <= "2023-10-31" for d in dates)
    assert set(result["vs_gpp_l"]) == METHODS
    pixels = {scores["n"] for scores in result["vs_gpp_l"].values()}
    assert len(pixels) == 1 and pixels.pop() > 0  # every method on the same pixels
    for method, scores in result["vs_gpp_l"].items():
        assert scores["n_dates"] == len(dates), method
        assert scores["rmse"] > 0 and scores["within_block_rmse"] > 0, (method, scores)
        assert _finite(scores["bias"]) and -1 <= scores["r"] <= 1, (method, scores)
    assert [row["date"] for row in result["per_date"]] == dates

    assert set(result["ensemble"]) == {"s1", "s2", "fusion"}
    for scheme, scores in result["ensemble"].items():
        assert scores["members"] == 2, scheme  # evaluation.members
        assert scores["crps"] > 0 and scores["spread_rmse_ratio"] > 0, (scheme, scores)
        histogram = scores["rank_histogram"]
        assert len(histogram) == scores["members"] + 1
        assert sum(histogram) == pytest.approx(1.0) and min(histogram) >= 0

    daily, sample = result["daily_vs_truth"], result["daily_sample"]
    assert set(daily) == {"bilinear", "fusion"}  # product.scheme (the default) beside bilinear
    assert sample["every"] == 16 and sample["days_asked"] == 10  # 2023-06-01..10-31, 1 in 16
    assert 0 < sample["days_scored"] <= sample["days_asked"]
    assert len(result["days"]) == sample["days_scored"]
    for method, scores in daily.items():
        assert scores["n_days"] == sample["days_scored"], method
        assert scores["n"] > 0 and scores["rmse"] > 0 and scores["within_block_rmse"] > 0
        assert _finite(scores["bias"]) and -1 <= scores["r"] <= 1, (method, scores)
    nrt = result["daily_vs_truth_nrt"]  # the same days, near-real-time
    assert set(nrt) == set(daily) and all(s["rmse"] > 0 for s in nrt.values())
    modes = result["nrt_vs_final"]
    assert modes["method"] == "fusion" and 0 < modes["n_days"] <= sample["days_scored"]
    assert modes["rmse_nrt"] > 0 and modes["rmse_final"] > 0 and modes["rmse_between"] > 0
    assert 0 < modes["final_inputs_differ_fraction"] <= 1  # final days read after the day

    assert {"season", "land_cover", "slope", "gpp_m"} <= set(result["strata"])
    assert set(result["strata"]["season"]) <= {"JJA", "SON"}
    assert set(result["strata"]["slope"]) <= {"lt5", "5to15", "gt15"}
    assert set(result["strata"]["gpp_m"]) <= {"observed", "gap_filled"}
    for stratum, classes in result["strata"].items():
        for name, methods in classes.items():
            assert set(methods) == {"bilinear", "fusion"}, (stratum, name)
            assert all(s["n"] >= 100 and s["rmse"] > 0 for s in methods.values()), (stratum, name)
    # Each stratum splits the same scored pixels.
    for classes in result["strata"].values():
        assert sum(m["bilinear"]["n"] for m in classes.values()) <= daily["bilinear"]["n"]
    seasons = result["strata"]["season"].values()
    assert sum(m["bilinear"]["n"] for m in seasons) == daily["bilinear"]["n"]
    assert result["by_age"] and set(result["by_age"]) <= AGE_LABELS
    assert all(m["fusion"]["rmse"] > 0 for m in result["by_age"].values())
    ages = result["by_reference_age"]  # the clear dates by the age of the fusion reference
    assert ages and set(ages) <= AGE_LABELS
    assert all(set(m) == METHODS for m in ages.values())

    holdout = result["spatial_holdout"]
    assert {"bilinear", "fusion", "fusion_seen"} <= set(holdout)
    assert holdout["west_columns"] + holdout["east_columns"] == 160
    for method in ("bilinear", "fusion", "fusion_seen"):
        assert holdout[method]["rmse"] > 0 and _finite(holdout[method]["bias"]), method

    # The small world's 2 towers inside its region, held out of training (hold_out_region):
    # the product's 7 x 7 px window and GPP_M's pixel against the tower GPP, on the same days.
    towers = result["towers"]
    assert towers["window_px"] == 7 and towers["days"] == sample["days_scored"]
    assert len(towers["sites"]) == 2 and all(s.startswith("DR-") for s in towers["sites"])
    for method in ("product", "gpp_m"):
        assert towers[method]["n_sites"] == 2 and towers[method]["n_days"] >= 4, towers[method]
        assert towers[method]["rmse"] > 0 and _finite(towers[method]["bias"]), towers[method]
        assert towers[method]["n_days"] == sum(s["n_days"] for s in towers["sites"].values())
    assert towers["rmse_ratio"] == pytest.approx(towers["product"]["rmse"] /
                                                 towers["gpp_m"]["rmse"])  # fmt: skip
    metrics = json.loads((trained_downscalers / "report" / "metrics.json").read_text())
    for method in ("product", "gpp_m"):  # the keys dashboards read
        scores = metrics["evaluation"]["towers"][method]
        assert scores["rmse"] == towers[method]["rmse"] and scores["n_sites"] == 2
        assert scores["r"] == towers[method]["r"]
    assert metrics["evaluation"]["towers"]["rmse_ratio"] == towers["rmse_ratio"]

    # Step 1 against the truth on the same clear dates, by slope class and season.
    for key in ("gpp_l_vs_truth", "gpp_m_vs_truth"):
        table = result[key]
        assert table["rmse"] > 0 and _finite(table["bias"]) and table["n_dates"] >= 1, key
        assert set(table["by_slope"]) <= {"lt5", "5to15", "gt15"} and table["by_slope"], key
        assert table["by_season"], key
        shown = metrics["evaluation"][key]
        assert shown["rmse"] == table["rmse"] and shown["bias"] == table["bias"]
        for name, scores in table["by_slope"].items():
            assert shown["by_slope"][name]["bias"] == scores["bias"]
    assert result["gpp_l_vs_truth"]["n"] > 1000
    for model in ("modis", "landsat"):  # the spatial CV per plant type and per season
        cv = metrics["gpp_models"][model]
        assert cv["per_vegetation_type"] and cv["per_season"], model
        assert all(_finite(v["rmse"]) for v in cv["per_season"].values())

    assert "daily_vs_truth" in result["future_data"]
    assert "pure_pixel_oracle" in result["future_data"] and "fusion" in result["future_data"]
    assert (trained_downscalers / "eval" / "fusion_quicklook.png").stat().st_size > 10_000


def test_the_demo_evaluation_matches_its_own_maps(
    trained_downscalers: Path, demo_world: tuple[Path, dict]
) -> None:
    """The daily figures recomputed from the evaluation's product days and the truth store,
    and bilinear GPP_M's within-block RMSE from the test dates' cached pairs."""
    import xarray as xr

    from unique_cube.grid import COARSE_FACTOR, upsample_bilinear
    from unique_cube.product.variables import QA_PATH_MASK

    result = _evaluation(trained_downscalers)
    days = np.array(result["days"], dtype="datetime64[D]")
    truth = xr.open_zarr(demo_world[0] / "truth" / "gpp.zarr", consolidated=False)
    truth_days = truth["time"].values.astype("datetime64[D]")
    product = xr.open_zarr(trained_downscalers / "eval" / "product" / "gpp.zarr",
                           consolidated=False)  # fmt: skip
    product_days = product["time"].values.astype("datetime64[D]")
    errors: dict[str, list[np.ndarray]] = {"bilinear": [], "fusion": []}
    for day in days:
        layer = product.isel(time=int(np.flatnonzero(product_days == day)[0]))
        true = truth["gpp"].isel(time=int(np.flatnonzero(truth_days == day)[0])).values
        qa = layer["qa"].values
        bilinear = upsample_bilinear(layer["gpp_m"].values, COARSE_FACTOR)
        maps = {"bilinear": np.where(qa & QA_PATH_MASK, bilinear, np.nan),
                "fusion": layer["gpp"].values}  # fmt: skip
        ok = np.isfinite(true) & np.isfinite(maps["bilinear"]) & np.isfinite(maps["fusion"])
        for name, values in maps.items():
            errors[name].append(values[ok].astype("float64") - true[ok])
    for name, parts in errors.items():
        error = np.concatenate(parts)
        scores = result["daily_vs_truth"][name]
        assert scores["n"] == error.size, name
        assert scores["rmse"] == pytest.approx(np.sqrt(np.mean(error**2)), rel=1e-5), name
        assert scores["bias"] == pytest.approx(error.mean(), rel=1e-4, abs=1e-6), name

    # The pairs evaluate cached for the clear test dates: GPP_L and bilinear GPP_M.
    dates = result["dates"]
    for path in sorted((trained_downscalers / "ds").glob("pairs-2023-06-01-2023-10-31-*.npz")):
        pairs = np.load(path)
        if pairs["dates"].tolist() == dates:
            break
    else:
        pytest.fail(f"no cached pairs of the test dates {dates}")
    within = [within_block_rmse(t, b, COARSE_FACTOR)
              for t, b in zip(pairs["target"], pairs["gpp_m_30m"], strict=True)]  # fmt: skip
    assert result["vs_gpp_l"]["bilinear"]["within_block_rmse"] == pytest.approx(
        float(np.nanmean(within)), rel=1e-9
    )


# --- bad input through the command line ---------------------------------------------------------

#: The product section the evaluation's pipelines add (the fixture's pipeline has none): the
#: evaluation makes its days in its own folder, never here.
PRODUCT = """
product:
  output: {out}
  samples: 2
  ddim_steps: 3
  tile: 96
  overlap: 16
  max_gap_days: 16
"""


def _evaluation_pipeline(out: Path, tmp_path: Path, old: str = "", new: str = "") -> Path:
    """The pipeline of the trained downscalers with its evaluation written to ``tmp_path``,
    a product section, and ``old`` replaced by ``new``."""
    text = (out / "pipeline.yaml").read_text()
    assert f"output: {out}/eval" in text
    text = text.replace(f"output: {out}/eval", f"output: {tmp_path}/eval")
    if "\nproduct:" not in text:
        text += PRODUCT.format(out=tmp_path / "product")
    if old:
        assert old in text, old
        text = text.replace(old, new)
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(text)
    return spec


def _evaluate(spec: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from unique_cube.cli import main

    code = main(["evaluate", str(spec)])
    return code, capsys.readouterr().err


def test_evaluate_names_a_missing_truth_store(
    trained_downscalers: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (trained_downscalers / "pipeline.yaml").read_text()
    truth = next(line.split(": ", 1)[1] for line in text.splitlines()
                 if line.strip().startswith("truth:"))  # fmt: skip
    missing = tmp_path / "no-world" / "truth" / "gpp.zarr"
    spec = _evaluation_pipeline(trained_downscalers, tmp_path, f"truth: {truth}",
                                f"truth: {missing}")  # fmt: skip
    code, err = _evaluate(spec, capsys)
    assert code == 3, err[-2000:]
    assert f"downscale.truth: {missing} does not exist" in err
    assert "Traceback" not in err
    assert not (tmp_path / "eval" / "evaluation.json").exists()


def test_evaluate_refuses_a_test_period_overlapping_the_training(
    trained_downscalers: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _evaluation_pipeline(trained_downscalers, tmp_path,
                                "test: {start: 2023-06-01, end: 2023-10-31}",
                                "test: {start: 2023-05-01, end: 2023-06-30}")  # fmt: skip
    code, err = _evaluate(spec, capsys)
    assert code == 3, err[-2000:]
    assert ("downscale.test 2023-05-01..2023-06-30 overlaps downscale.train "
            "2023-01-01..2023-05-31") in err  # fmt: skip
    assert "Traceback" not in err
    assert not (tmp_path / "eval" / "evaluation.json").exists()


def test_evaluate_says_a_test_period_has_no_hls_date(
    trained_downscalers: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Landsat 8 and 9 pass over the small world every 8 days: 2023-06-01, then 2023-06-09.
    spec = _evaluation_pipeline(trained_downscalers, tmp_path,
                                "test: {start: 2023-06-01, end: 2023-10-31}",
                                "test: {start: 2023-06-02, end: 2023-06-03}")  # fmt: skip
    code, err = _evaluate(spec, capsys)
    assert code == 3, err[-2000:]
    assert "Traceback" not in err
    assert "downscale.test" in err and "2023-06-02..2023-06-03" in err, err[-2000:]
    assert "nothing to score against GPP_L" in err
    assert not (tmp_path / "eval" / "evaluation.json").exists()

"""Step 1 against the truth: GPP_L and GPP_M by slope class and by season."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from unique_cube.evaluation.gpp_truth import block_means, gpp_vs_truth, scores_by


def test_block_means_ignore_gaps_and_leave_empty_blocks_nan() -> None:
    values = np.arange(16, dtype="float32").reshape(4, 4)
    values[0, 0] = np.nan
    values[2:, 2:] = np.nan
    means = block_means(values[None], 2)[0]
    assert means[0, 0] == pytest.approx((1 + 4 + 5) / 3)
    assert means[1, 0] == pytest.approx((8 + 9 + 12 + 13) / 4)
    assert np.isnan(means[1, 1])


def test_biases_land_in_their_slope_class_and_season() -> None:
    dates = [dt.date(2023, 1, 10), dt.date(2023, 7, 10)]  # DJF, JJA
    slope = np.zeros((32, 32), "float32")
    slope[:, 16:] = 20.0  # the east half steep: its own 480 m blocks (factor 16)
    truth = np.full((2, 32, 32), 5.0, "float32")
    gpp_l = truth.copy()
    gpp_l[1, :, 16:] += 2.0  # summer, steep: +2
    gpp_l[0, :4] = np.nan  # cloud
    gpp_m = block_means(truth, 16) + np.array([0.0, -1.0])[:, None, None]  # summer: -1
    out = gpp_vs_truth(dates, gpp_l, gpp_m, truth, slope, 16)

    landsat = out["gpp_l_vs_truth"]
    assert landsat["n"] == 2 * 32 * 32 - 4 * 32
    assert landsat["by_slope"]["lt5"]["bias"] == pytest.approx(0.0)
    assert landsat["by_slope"]["gt15"]["bias"] == pytest.approx(2 * 512 / (512 + 448))
    assert landsat["by_season"]["DJF"]["bias"] == pytest.approx(0.0)
    assert landsat["by_season"]["JJA"]["bias"] == pytest.approx(1.0)
    assert "5to15" not in landsat["by_slope"]  # no pixel in that class
    assert landsat["n_dates"] == 2 and landsat["slope_classes_deg"]["gt15"] is None

    modis = out["gpp_m_vs_truth"]
    assert modis["n"] == 2 * 2 * 2
    assert modis["bias"] == pytest.approx(-0.5)
    # A handful of coarse cells is below the table's minimum: no strata at 480 m here.
    assert modis["by_season"] == {}


def test_scores_by_skips_small_and_unlabelled_strata() -> None:
    labels = np.array(["a"] * 150 + ["b"] * 20 + [""] * 200, dtype=object)
    observed = np.ones(labels.size)
    predicted = observed + 0.5
    table = scores_by(labels, observed, predicted)
    assert set(table) == {"a"} and table["a"]["bias"] == pytest.approx(0.5)

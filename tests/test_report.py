"""The report's pieces from small synthetic inputs: the per-day status table from run logs,
integer counts, the day selector's maps and figure sizes (a browser is not used here)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from unique_cube import report
from unique_cube.report import day_maps, day_status

DAYS = [dt.date(2023, 6, 1), dt.date(2023, 6, 2), dt.date(2023, 6, 3), dt.date(2023, 6, 4)]


def write_log(product: Path, name: str, started: str, days: list[dict]) -> None:
    (product / "runs").mkdir(parents=True, exist_ok=True)
    (product / "runs" / f"{name}.json").write_text(json.dumps({"started": started, "days": days}))


def test_status_table_takes_each_days_last_outcome_from_the_run_logs(tmp_path: Path) -> None:
    write_log(tmp_path, "20230605T000000-1", "2023-06-05T00:00:00+00:00", [
        {"day": "2023-06-01", "status": "done", "reason": "", "seconds": 41.5},
        {"day": "2023-06-02", "status": "failed", "reason": "GPP_M: read timed out",
         "seconds": 3.0},
        {"day": "2023-06-03", "status": "skipped", "reason": "no MODIS item", "seconds": 0.0},
    ])  # fmt: skip
    write_log(tmp_path, "20230606T000000-2", "2023-06-06T00:00:00+00:00", [
        {"day": "2023-06-01", "status": "already done", "reason": "", "seconds": 0.0},
        {"day": "2023-06-02", "status": "done", "reason": "", "seconds": 38.25, "mode": "nrt",
         "input_lag_hours": 31.5},
    ])  # fmt: skip
    (tmp_path / "runs" / "20230607T000000-3.json").write_text('{"days": [')  # killed mid-write

    status = day_status(tmp_path, DAYS)
    assert [(d, s["status"]) for d, s in status.items()] == [
        ("2023-06-01", "done"), ("2023-06-02", "done"), ("2023-06-03", "skipped"),
        ("2023-06-04", "not run"),
    ]  # fmt: skip
    assert status["2023-06-01"]["seconds"] == 41.5  # kept by the later run, made by the first
    assert status["2023-06-03"]["reason"] == "no MODIS item"

    page = "".join(report._status_section(status))
    assert "2 done, 1 skipped, 1 not run" in page
    row = re.search(r"<tr class='skipped'>(.*?)</tr>", page).group(1)
    assert re.findall(r"<td[^>]*>(.*?)</td>", row) == [
        "2023-06-03", "skipped", "no MODIS item", "–", "0.000", "–", "2023-06-05T00:00:00+00:00"
    ]  # fmt: skip
    row = re.search(r"<tr class='done'><td>2023-06-02(.*?)</tr>", page).group(1)
    assert re.findall(r"<td[^>]*>(.*?)</td>", row)[2:4] == ["nrt", "38.250"]
    assert status["2023-06-02"]["input_lag_hours"] == 31.5


def test_counts_print_as_integers_and_scores_with_decimals() -> None:
    rows = {"modis": {"r": 0.81234, "rmse": 1.0, "n_sites": 24.0, "folds": 20, "n": 1200.0}}
    table = report._table(rows, ("r", "rmse", "n_sites", "folds", "n"))
    cells = re.findall(r"<td>(.*?)</td>", table)
    assert cells == ["modis", "0.812", "1.000", "24", "20", "1,200"]
    assert report._cell(None) == "–"


def synthetic_cube(days: list[dt.date]) -> xr.Dataset:
    rng = np.random.default_rng(0)
    shape = (len(days), 16, 16)
    return xr.Dataset(
        {
            "gpp": (("time", "y", "x"), rng.uniform(0, 12, shape).astype("float32")),
            "gpp_sd": (("time", "y", "x"), rng.uniform(0, 2, shape).astype("float32")),
            "qa": (("time", "y", "x"), rng.integers(1, 6, shape).astype("uint8")),
        },
        coords={"time": [np.datetime64(d, "ns") for d in days]},
    )


def test_each_day_has_maps_behind_a_selector_shown_at_their_own_size() -> None:
    figures = day_maps(synthetic_cube(DAYS[:3]), DAYS[:3])
    assert sorted(figures) == [f"day:{d}" for d in DAYS[:3]]
    width, height = report._png_size(figures["day:2023-06-02"])
    assert 600 <= width <= 1100 and height > 200  # fits the 1100 px page unshrunk

    page = "".join(report._day_selector(figures))
    assert page.count("<option") == 3 and "<option value='2023-06-03' selected>" in page
    assert page.count(" hidden>") == 2  # one day shown at a time: the latest
    assert page.count(f'width="{width}"') >= 1 and "<script>" in page
    assert "http" not in page  # self-contained: nothing fetched


@pytest.mark.parametrize("width", [400, 1920])
def test_figures_keep_their_pixel_size(width: int) -> None:
    header = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + width.to_bytes(4, "big")
    uri = "data:image/png;base64," + base64.b64encode(header + (340).to_bytes(4, "big")).decode()
    tag = report._img(uri, "wide")
    assert f'width="{width}" height="340"' in tag
    assert tag.startswith('<div class="fig">')  # scrolls sideways instead of shrinking

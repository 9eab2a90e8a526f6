"""The unique-cube command line: help, catalogs, search, exit codes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from unique_cube.cli import main


def test_console_script_help() -> None:
    script = Path(sys.executable).parent / "unique-cube"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    for command in ("catalogs", "search", "serve", "demo-world", "serve-catalog", "demo"):
        assert command in result.stdout


def test_catalogs_lists_sources(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["catalogs"]) == 0
    out = capsys.readouterr().out
    assert "planetary-computer: https://planetarycomputer.microsoft.com/api/stac/v1" in out
    assert "hls2-l30" in out and "cop-dem-glo-30" in out


def test_bad_catalog_file_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstac_url: 3\nsources: {}\n")
    assert main(["catalogs", str(bad)]) == 3
    assert f"{bad}: stac_url: expected a string, got 3 (int)" in capsys.readouterr().err


@pytest.mark.integration
def test_search_prints_items(stac_world, capsys: pytest.CaptureFixture[str]) -> None:
    bbox = [str(v) for v in stac_world.bbox]
    args = ["search", "hls-l30", "--stac-url", stac_world.catalog.stac_url, "--bbox", *bbox]
    assert main([*args, "--datetime", "2023-05-01/2023-05-31"]) == 0
    captured = capsys.readouterr()
    assert "HLS.L30.T52SCG.2023123T022000.v2.0" in captured.out
    assert "2 item(s)" in captured.err
    assert main([*args, "--datetime", "2023-05-01/2023-05-31", "--json"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert [it["id"] for it in items][-1] == "HLS.L30.T52SCG.2023139T022000.v2.0"


@pytest.mark.integration
def test_search_exit_codes(stac_world, capsys: pytest.CaptureFixture[str]) -> None:
    bbox = [str(v) for v in stac_world.bbox]
    args = ["search", "hls-l30", "--stac-url", stac_world.catalog.stac_url, "--bbox", *bbox]
    assert main([*args, "--datetime", "2023-05-31/2023-05-01"]) == 3
    assert "the range is reversed" in capsys.readouterr().err
    assert main([*args, "--datetime", "2019-01-01/2019-01-02"]) == 4
    assert "no items for collection 'hls2-l30'" in capsys.readouterr().err


@pytest.mark.integration
def test_demo_runs_the_main_job_end_to_end_and_reuses_it(demo_run, capsys) -> None:
    """`unique-cube demo` on the small world (run once per session by the ``demo_run``
    fixture): every stage, the product, the report and metrics.json; a second run reuses
    all."""
    err, out = demo_run.said, demo_run.out
    for stage in range(1, 7):
        assert f"[{stage}/6]" in err
    assert "GPP models: training" in err and "downscaler s2: training" in err
    assert "downscaler fusion: training" in err
    assert "dashboard http" in err
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    for model in ("modis", "landsat"):
        assert set(metrics["gpp_models"][model]) == {
            "r", "rmse", "bias", "n_sites", "folds", "per_vegetation_type", "per_season"
        }  # fmt: skip
    for against in ("vs_gpp_l", "vs_truth"):
        assert set(metrics["downscaling"][against]) == {
            "bilinear", "pure_pixel", "ddpm_s1", "ddpm_s2", "fusion", "fusion_mean"
        }  # fmt: skip
        assert all(
            set(v) == {"r", "rmse", "bias"} for v in metrics["downscaling"][against].values()
        )
    _check_evaluation_metrics(metrics["evaluation"])
    world = metrics["world"]
    assert {"last_year_analog_r2", "fmask_omission"} <= set(world)
    r2 = world["last_year_analog_r2"]  # None in a one-year world: no last year to match
    assert r2 is None or (isinstance(r2, float) and r2 <= 1)
    omission = world["fmask_omission"]
    assert omission is None or (isinstance(omission, float) and 0 <= omission <= 1)
    product = metrics["product"]
    assert product["days"] == 3 and product["pixels_per_day"] == 160 * 160
    assert product["seconds_per_day"] > 0 and product["peak_rss_mb"] > 0
    html = (out / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4
    assert len(list((out / "product/stac/unique-cube-gpp/items").glob("*.json"))) == 3

    assert main(demo_run.argv) == 0  # everything reused: no training, no day made again
    err = capsys.readouterr().err
    assert "GPP models: reusing" in err and "downscaler s2: reusing" in err
    assert "evaluation: reusing" in err and "3 of 3 days already done" in err
    assert "training" not in err


def _number(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _check_evaluation_metrics(evaluation: dict) -> None:
    """metrics.json's ``evaluation`` keys (those dashboards read), each a finite number."""
    methods = {"bilinear", "fusion", "fusion_mean", "s1", "s2", "pure_pixel_oracle"}
    assert set(evaluation["vs_gpp_l"]) == methods
    for scores in evaluation["vs_gpp_l"].values():
        assert all(_number(scores[k]) for k in ("rmse", "bias", "r", "n_dates")), scores
        assert scores["rmse"] > 0 and scores["n_dates"] >= 1
    daily = evaluation["daily_vs_truth"]
    assert set(daily) == {"bilinear", "fusion"}  # the product's scheme: fusion, the default
    for scores in daily.values():
        assert all(_number(scores[k]) for k in ("rmse", "bias", "r", "within_block_rmse",
                                                 "n_days")), scores  # fmt: skip
        assert scores["rmse"] > 0 and scores["n_days"] >= 1
        assert scores["mode"]["final"]["rmse"] == scores["rmse"]  # the figures above: final
        assert _number(scores["mode"]["nrt"]["rmse"]), scores["mode"]
    modes = evaluation["nrt_vs_final"]
    assert all(_number(modes[k]) for k in ("rmse_nrt", "rmse_final", "rmse_between",
                                           "nrt_over_final")), modes  # fmt: skip
    assert modes["rmse_final"] > 0 and modes["rmse_between"] >= 0
    assert {"season", "land_cover", "slope", "gpp_m"} <= set(evaluation["strata"])
    for classes in evaluation["strata"].values():
        for by_method in classes.values():
            assert set(by_method) <= methods
            assert all(_number(s["rmse"]) for s in by_method.values())
    assert evaluation["by_age"]
    assert set(evaluation["by_age"]) <= {"0", "1-8", "9-16", "17-32", "gt32", "never"}
    for by_method in evaluation["by_age"].values():
        assert set(by_method) <= methods and all(_number(s["rmse"]) for s in by_method.values())
    assert {"bilinear", "fusion", "fusion_seen"} <= set(evaluation["spatial_holdout"])
    assert all(_number(s["rmse"]) for s in evaluation["spatial_holdout"].values())
    assert set(evaluation["ensemble"]) == {"s1", "s2", "fusion"}
    ages = evaluation["by_reference_age"]  # the clear dates by the fusion reference's age
    assert ages and set(ages) <= {"0", "1-8", "9-16", "17-32", "gt32", "never"}
    for by_method in ages.values():
        assert set(by_method) <= methods and all(_number(s["rmse"]) for s in by_method.values())
    for scores in evaluation["ensemble"].values():
        assert _number(scores["crps"]) and _number(scores["spread_rmse_ratio"])
        assert scores["members"] == 2  # the pipeline's evaluation.members

"""Validation at towers inside the region (issue 21): which towers are inside the product grid,
the product's window and GPP_M's pixel at them scored against the tower GPP, the demo world's
towers inside its region, the ``flux.hold_out_region`` key, and what the report shows."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj import Transformer
from test_config import SMALLEST

from unique_cube.config.pipeline import load_pipeline
from unique_cube.demo.towers import TowerRecorder
from unique_cube.demo.world import (
    REGION_SITE_MARGIN,
    REGION_SITE_SPACING,
    SIZES,
    make_world,
)
from unique_cube.errors import ConfigError, FluxError
from unique_cube.evaluation.evaluate import evaluate
from unique_cube.evaluation.towers import (
    NO_TOWER,
    held_out_towers,
    score_towers,
    sites_in_region,
    validate_at_towers,
    window_means,
)

#: SMALLEST's grid: one 480 m block of 16 x 16 pixels of 30 m in UTM 52N.
LEFT, BOTTOM, RIGHT, TOP = 346020.0, 4171890.0, 346500.0, 4172370.0
GRID = GeoBox((16, 16), Affine(30.0, 0.0, LEFT, 0.0, -30.0, TOP), "EPSG:32652")
TO_LONLAT = Transformer.from_crs("EPSG:32652", "EPSG:4326", always_xy=True)


def _site_table(points: dict[str, tuple[float, float]]) -> pd.DataFrame:
    """A site table (site, lat, lon, igbp) of points given in UTM 52N metres."""
    rows = []
    for site, (x, y) in points.items():
        lon, lat = TO_LONLAT.transform(x, y)
        rows.append({"site": site, "lat": lat, "lon": lon, "igbp": "DBF"})
    return pd.DataFrame(rows)


def _pixel_centre(row: int, col: int) -> tuple[float, float]:
    return LEFT + (col + 0.5) * 30.0, TOP - (row + 0.5) * 30.0


# --- which towers are inside the region ---------------------------------------------------------


def test_sites_in_region_are_decided_from_their_coordinates() -> None:
    table = _site_table({
        "IN-ctr": _pixel_centre(8, 8),
        "IN-lft": (LEFT + 1.0, 4172000.0),  # a metre inside each edge
        "IN-top": (346200.0, TOP - 1.0),
        "IN-rgt": (RIGHT - 1.0, 4172000.0),
        "IN-bot": (346200.0, BOTTOM + 1.0),
        "OU-lft": (LEFT - 1.0, 4172000.0),  # a metre outside
        "OU-rgt": (RIGHT + 1.0, 4172000.0),
        "OU-top": (346200.0, TOP + 1.0),
        "OU-bot": (346200.0, BOTTOM - 1.0),
        "OU-far": (500000.0, 4000000.0),
    })  # fmt: skip
    no_lat = pd.DataFrame([{"site": "NO-lat", "lat": "n/a", "lon": 127.0, "igbp": "DBF"}])
    table = pd.concat([table, no_lat], ignore_index=True)
    table.index = table.index * 10 + 3  # the table's own index is kept
    inside = sites_in_region(table, GRID)
    assert inside.dtype == bool and list(inside.index) == list(table.index)
    assert list(table["site"][inside]) == ["IN-ctr", "IN-lft", "IN-top", "IN-rgt", "IN-bot"]


def test_sites_in_region_work_on_a_grid_in_another_crs() -> None:
    # The same block in geographic coordinates (a 0.01° grid around the towers).
    lonlat_grid = GeoBox((10, 10), Affine(0.01, 0.0, 127.2, 0.0, -0.01, 37.75), "EPSG:4326")
    table = pd.DataFrame({"site": ["IN-a", "OU-b"], "lat": [37.70, 37.60], "lon": [127.25, 127.25]})
    assert list(sites_in_region(table, lonlat_grid)) == [True, False]


# --- the product's window and GPP_M's pixel, scored ---------------------------------------------


def test_window_means_are_centred_cut_at_the_edges_and_need_half_the_window() -> None:
    values = np.arange(2 * 5 * 5, dtype="float32").reshape(2, 5, 5)
    # A linear field: the centred window's mean is its centre value.
    assert window_means(values, 2, 2, 3) == pytest.approx(values[:, 2, 2])
    assert window_means(values, 2, 2, 5) == pytest.approx(values[:, 2, 2])
    # At the grid's edge the window is cut to it; in a corner, less than half of it is left.
    assert window_means(values, 0, 1, 3) == pytest.approx(values[:, :2, :3].mean(axis=(1, 2)))
    assert np.isnan(window_means(values, 0, 0, 3)).all()
    holed = values.copy()
    holed[0, 1:3, 1:4] = np.nan  # 6 of the day's 9 pixels missing: not the footprint
    holed[1, 1, 1:4] = np.nan  # 3 of 9 missing: the mean of the other 6
    got = window_means(holed, 2, 2, 3)
    assert math.isnan(got[0])
    assert got[1] == pytest.approx(values[1, 2:4, 1:4].mean())


def test_scores_pool_the_days_where_the_tower_the_product_and_gpp_m_all_have_a_value() -> None:
    days = pd.date_range("2023-06-01", periods=6)
    gpp = np.array([2.0, 4.0, 6.0, 8.0, 5.0, 3.0])
    table = pd.concat([
        pd.DataFrame({"site": "AA-one", "date": days, "tower": gpp, "product": gpp + 1.0,
                      "gpp_m": gpp - 2.0}),
        pd.DataFrame({"site": "BB-two", "date": days, "tower": gpp, "product": gpp - 1.0,
                      "gpp_m": gpp - 2.0}),
    ], ignore_index=True)  # fmt: skip
    table.loc[7, "tower"] = np.nan  # BB-two: a day without tower GPP
    table.loc[8, "product"] = np.nan  # and one without the product: dropped for GPP_M too
    scores = score_towers(table)
    assert scores["sites"]["AA-one"]["n_days"] == 6 and scores["sites"]["BB-two"]["n_days"] == 4
    assert scores["sites"]["AA-one"]["product"]["bias"] == pytest.approx(1.0)
    assert scores["sites"]["AA-one"]["product"]["r"] == pytest.approx(1.0)
    assert scores["sites"]["BB-two"]["product"]["bias"] == pytest.approx(-1.0)
    pooled = scores["product"]
    assert pooled["n_sites"] == 2 and pooled["n_days"] == pooled["n"] == 10
    assert pooled["rmse"] == pytest.approx(1.0) and pooled["bias"] == pytest.approx(0.2)
    assert scores["gpp_m"]["rmse"] == pytest.approx(2.0)
    assert scores["gpp_m"]["n_days"] == 10  # the same tower-days as the product
    assert scores["rmse_ratio"] == pytest.approx(0.5)


# --- held-out towers, their flux files, and the product store -----------------------------------

DAYS = [dt.date(2023, 6, 1) + dt.timedelta(days=i) for i in range(8)]
TOWER_GPP = np.array([3.0, 5.0, 7.0, 6.0, 8.0, 4.0, 2.0, 9.0])
INSIDE = {"DR-101": (3, 5), "DR-202": (12, 10)}  # their pixels (row, col)


def _flux_file(folder: Path, site: str, gpp: np.ndarray) -> None:
    """A FLUXNET2015 FULLSET daily file (TIMESTAMP, GPP_NT_VUT_REF, NEE_VUT_REF_QC)."""
    frame = pd.DataFrame({
        "TIMESTAMP": [d.strftime("%Y%m%d") for d in DAYS],
        "GPP_NT_VUT_REF": np.where(np.isfinite(gpp), gpp, -9999),
        "NEE_VUT_REF_QC": 0.9,
    })  # fmt: skip
    frame.to_csv(folder / f"FLX_{site}_FLUXNET2015_FULLSET_DD_2023-2023_1-4.csv", index=False)


def _tower_pipeline(tmp_path: Path, hold_out: bool = True, points: dict | None = None):
    """SMALLEST (its grid: 16 x 16 px) with a flux folder: two towers inside the grid, one
    outside; the second tower's first day missing."""
    flux = tmp_path / "flux"
    flux.mkdir(parents=True)
    points = points or {site: _pixel_centre(*at) for site, at in INSIDE.items()}
    points = {**points, "DW-301": (RIGHT + 5_000.0, TOP)}
    _site_table(points).to_csv(flux / "sites.csv", index=False)
    for site in points:
        gpp = TOWER_GPP.copy()
        if site == "DR-202":
            gpp[0] = np.nan
        _flux_file(flux, site, gpp)
    data = yaml.safe_load(SMALLEST)
    data["flux"] = {"directory": str(flux), "sites": str(flux / "sites.csv"),
                    "hold_out_region": hold_out}  # fmt: skip
    data["downscale"]["train"] = {"start": dt.date(2023, 1, 1), "end": dt.date(2023, 5, 31)}
    data["evaluation"] = {"output": str(tmp_path / "eval"), "members": 2}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_pipeline(path)


def _product_store(path: Path, product: np.ndarray, gpp_m: np.ndarray) -> Path:
    """A product Zarr store as the product writes it: ``gpp`` (time, y, x) at 30 m and
    ``gpp_m`` (time, y_m, x_m) on the 480 m grid."""
    times = np.array(DAYS, dtype="datetime64[ns]")
    ds = xr.Dataset(
        {"gpp": (("time", "y", "x"), product.astype("float32")),
         "gpp_m": (("time", "y_m", "x_m"), gpp_m.astype("float32"))},
        coords={"time": times, "y": TOP - 15.0 - 30.0 * np.arange(16),
                "x": LEFT + 15.0 + 30.0 * np.arange(16)},
    )  # fmt: skip
    ds.to_zarr(path, zarr_format=3, consolidated=False)
    return path


def test_held_out_towers_are_those_inside_the_grid_with_their_flux(tmp_path: Path) -> None:
    towers = held_out_towers(_tower_pipeline(tmp_path))
    assert towers.note is None
    assert list(towers.sites["site"]) == list(INSIDE)
    assert [(r.row, r.col) for r in towers.sites.itertuples()] == list(INSIDE.values())
    assert set(towers.flux["site"]) == set(INSIDE) and towers.target == "GPP_NT_VUT_REF"
    assert len(towers.flux) == 2 * len(DAYS) - 1  # DR-202's missing first day


def test_the_product_and_gpp_m_are_scored_at_the_held_out_towers(tmp_path: Path) -> None:
    towers = held_out_towers(_tower_pipeline(tmp_path))
    gpp = TOWER_GPP[:, None, None]
    product = np.broadcast_to(gpp, (len(DAYS), 16, 16)).copy()
    (r1, c1), (r2, c2) = INSIDE.values()
    product[:, r1 - 1 : r1 + 2, c1 - 1 : c1 + 2] += 1.0  # DR-101's 3 x 3 window: +1
    product[:, r1, c1] += 9.0  # its own pixel +10: the window's mean is +2
    product[:, r2 - 1 : r2 + 2, c2 - 1 : c2 + 2] -= 1.0  # DR-202's: -1
    product[:3, r1 + 2 :, :] = np.nan  # below DR-101's window, DR-202's too: no value on
    # days 0-2 (day 0 has no tower GPP at DR-202 anyway)
    gpp_m = np.broadcast_to(gpp - 3.0, (len(DAYS), 1, 1))
    store = _product_store(tmp_path / "gpp.zarr", product, gpp_m)
    result = validate_at_towers(towers, store, DAYS, window=3)
    assert result["window_px"] == 3 and result["days"] == len(DAYS)
    one, two = result["sites"]["DR-101"], result["sites"]["DR-202"]
    assert one["n_days"] == 8 and one["product"]["bias"] == pytest.approx(2.0)
    assert one["row"] == r1 and one["col"] == c1 and one["igbp"] == "DBF"
    assert two["n_days"] == 5  # days 3-7 have a window (day 0 has no tower GPP anyway)
    assert two["product"]["bias"] == pytest.approx(-1.0)
    assert two["gpp_m"]["bias"] == pytest.approx(-3.0)
    pooled = result["product"]
    assert pooled["n_sites"] == 2 and pooled["n_days"] == 13
    assert pooled["rmse"] == pytest.approx(math.sqrt((8 * 4 + 5 * 1) / 13), rel=1e-6)
    assert result["gpp_m"]["rmse"] == pytest.approx(3.0, rel=1e-6)
    assert result["rmse_ratio"] == pytest.approx(pooled["rmse"] / 3.0)


def test_a_held_out_tower_without_a_flux_file_is_named(tmp_path: Path) -> None:
    pipeline = _tower_pipeline(tmp_path)
    next((tmp_path / "flux").glob("FLX_DR-202_*.csv")).unlink()
    with pytest.raises(FluxError, match=r"held-out tower\(s\) DR-101, DR-202, inside the "
                       r"grid by .*sites.csv.*DR-202"):  # fmt: skip
        held_out_towers(pipeline)
    next((tmp_path / "flux").glob("FLX_DW-301_*.csv")).unlink()  # outside: not needed
    (tmp_path / "flux" / "sites.csv").write_text(
        (tmp_path / "flux" / "sites.csv").read_text().replace("DR-202", "XX-999")
    )
    with pytest.raises(FluxError, match=r"held-out tower\(s\) DR-101, XX-999.*XX-999"):
        held_out_towers(pipeline)


def test_evaluate_names_a_missing_tower_file_before_computing_anything(tmp_path: Path) -> None:
    pipeline = _tower_pipeline(tmp_path)
    next((tmp_path / "flux").glob("FLX_DR-101_*.csv")).unlink()
    with pytest.raises(FluxError, match="DR-101"):
        evaluate(pipeline)
    assert not (tmp_path / "eval").exists()


def test_no_tower_inside_or_no_hold_out_is_a_note(tmp_path: Path) -> None:
    outside = {"DR-101": (LEFT - 2_000.0, TOP), "DR-202": (LEFT, TOP + 2_000.0)}
    towers = held_out_towers(_tower_pipeline(tmp_path / "a", points=outside))
    assert towers.note == NO_TOWER == "no tower inside the region: tower validation skipped"
    assert validate_at_towers(towers, tmp_path / "none.zarr", DAYS, 7) == {"note": NO_TOWER}
    towers = held_out_towers(_tower_pipeline(tmp_path / "b", hold_out=False))
    assert "flux.hold_out_region is false" in towers.note and towers.sites.empty


# --- the demo world's towers inside its region --------------------------------------------------


@pytest.mark.parametrize(("size", "count"), [("small", 2), ("compact", 4)])
def test_the_world_places_towers_inside_its_region(size: str, count: int) -> None:
    world = make_world(size, 5)
    assert SIZES[size].n_region_sites == count and len(world.region_sites) == count
    geobox = world.area_geobox(world.region)
    table = pd.DataFrame([{"site": s.id, "lat": s.lat, "lon": s.lon} for s in world.towers])
    inside = sites_in_region(table, geobox)
    assert list(table["site"][inside]) == [s.id for s in world.region_sites]
    n = world.region.shape[0]
    pixels = []
    for site in world.region_sites:
        row = int((geobox.transform.f - site.y) // 30.0)
        col = int((site.x - geobox.transform.c) // 30.0)
        pixels.append((row, col))
        # The whole footprint inside the region; the tower in a vegetated type.
        assert min(row, col) >= REGION_SITE_MARGIN and max(row, col) < n - REGION_SITE_MARGIN
        assert (min(row, col, n - 1 - row, n - 1 - col) + 0.5) * 30.0 >= 300.0
        assert site.area == 0 and site.igbp in {"DBF", "ENF", "MF", "CRO", "GRA"}
        assert site.id.startswith("DR-") and len(site.id) == 6
    for i, a in enumerate(pixels):
        for b in pixels[i + 1 :]:
            assert math.dist(a, b) >= REGION_SITE_SPACING


def test_the_rest_of_the_world_is_the_same_with_or_without_its_region_towers() -> None:
    without = dataclasses.replace(SIZES["small"], n_region_sites=0)
    a, b = make_world("small", 9), make_world(without, 9)
    assert len(a.region_sites) == 2 and b.region_sites == ()
    assert a.sites == b.sites
    for one, other in zip(a.areas, b.areas, strict=True):
        assert (one.row, one.col) == (other.row, other.col)
        assert np.array_equal(one.terrain.elevation, other.terrain.elevation)
        assert np.array_equal(one.terrain.pft_10m, other.terrain.pft_10m)


def test_region_towers_record_their_footprint_and_leave_the_other_files_alone(
    tmp_path: Path,
) -> None:
    with_towers = make_world("small", 9)
    without = make_world(dataclasses.replace(SIZES["small"], n_region_sites=0), 9)
    n = with_towers.size.site_pixels
    rows = [(site.area, slice(i * n, (i + 1) * n)) for i, site in enumerate(with_towers.sites)]
    canopy = SimpleNamespace(parts=rows)
    patches = SimpleNamespace(**{k: np.full((len(rows) * n, n), v, "float32") for k, v in
                                 {"gpp": 6.0, "tair": 20.0, "shortwave": 20.0, "vpd": 1.0,
                                  "precipitation": 0.0, "fapar": 0.8}.items()})  # fmt: skip
    ny, nx = with_towers.region.shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype("float32")
    region = SimpleNamespace(gpp=xx + 0.5 * yy, tair=yy + 0.001 * xx, shortwave=xx, vpd=yy,
                             precipitation=0 * xx, fapar=0.5 + 0 * xx)  # fmt: skip
    days = with_towers.size.days[150:180]
    folders = []
    for world in (with_towers, without):
        recorder = TowerRecorder(world, np.random.default_rng(7))
        for day in days:
            recorder.record(day, canopy, patches, region=region)
        folders.append(tmp_path / str(len(world.region_sites)))
        recorder.write(folders[-1])
        if world is with_towers:
            recorded = recorder.rows
    origin_x, origin_y = with_towers.domain_origin
    for site in with_towers.region_sites:
        row = int((origin_y - site.y) // 30.0) - with_towers.region.row
        col = int((site.x - origin_x) // 30.0) - with_towers.region.col
        gpp, tair, *_ = recorded[site.id][0]
        # A footprint symmetric about the tower's pixel: a linear field's value at the pixel.
        assert gpp == pytest.approx(col + 0.5 * row, rel=1e-5)
        assert tair == pytest.approx(row + 0.001 * col, rel=1e-6)  # at its pixel
    made, before = folders
    for site in with_towers.sites:
        name = next(made.glob(f"FLX_{site.id}_*.csv")).name
        assert (made / name).read_bytes() == (before / name).read_bytes(), site.id
    for site in with_towers.region_sites:
        assert len(list(made.glob(f"FLX_{site.id}_*.csv"))) == 1
    lines = (made / "sites.csv").read_text().splitlines()
    assert lines[: len(with_towers.sites) + 1] == (before / "sites.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines[len(with_towers.sites) + 1 :]] == [
        s.id for s in with_towers.region_sites
    ]


# --- the configuration --------------------------------------------------------------------------


def _with(tmp_path: Path, section: str, key: str, value, drop: str | None = None) -> Path:
    data = yaml.safe_load(SMALLEST)
    data.setdefault(section, {})[key] = value
    if drop:
        del data[drop]
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_hold_out_region_is_off_by_default_and_on_in_the_demo_pipelines(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(SMALLEST)
    assert load_pipeline(path).flux.hold_out_region is False
    assert load_pipeline(_with(tmp_path, "flux", "hold_out_region", True)).flux.hold_out_region
    root = Path(__file__).resolve().parents[1] / "pipelines"
    for name in ("demo.yaml", "demo-full.yaml"):
        pipeline = load_pipeline(root / name)
        assert pipeline.flux.hold_out_region is True, name
        assert pipeline.evaluation.tower_window == 7, name


@pytest.mark.parametrize(
    ("section", "key", "value", "drop", "expected"),
    [("flux", "hold_out_region", "yes", None, "flux.hold_out_region: expected true or false"),
     ("flux", "hold_out_region", True, "grid",
      "flux: hold_out_region is true but there is no grid section"),
     ("evaluation", "tower_window", 6, None,
      "evaluation.tower_window: must be odd (a window centred on the tower's pixel), got 6"),
     ("evaluation", "tower_window", 0, None, "evaluation.tower_window: must be within [1, 63]")],
)  # fmt: skip
def test_a_bad_tower_setting_names_its_key(tmp_path: Path, section: str, key: str, value,
                                           drop: str | None, expected: str) -> None:  # fmt: skip
    if drop == "grid":  # a pipeline without a grid has no downscale or product either
        data = yaml.safe_load(SMALLEST)
        for name in ("grid", "downscale", "product"):
            del data[name]
        data["flux"][key] = value
        path = tmp_path / "pipeline.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    else:
        path = _with(tmp_path, section, key, value)
    if section == "evaluation":
        path.write_text(path.read_text().replace("evaluation:\n", "evaluation:\n  output: e\n"))
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    assert str(err.value).startswith(f"{path}: {expected}"), str(err.value)


# --- what the report shows ----------------------------------------------------------------------


def test_metrics_and_report_carry_the_tower_table() -> None:
    from unique_cube.report import _evaluation_metrics, _tower_section

    site = {
        "n_days": 5,
        "product": {"rmse": 1.0, "bias": 0.5, "r": 0.9, "n": 5},
        "gpp_m": {"rmse": 2.0, "bias": -1.0, "r": 0.8, "n": 5},
        "row": 3,
        "col": 4,
    }
    pooled = {"rmse": 1.0, "bias": 0.5, "r": 0.9, "n": 5, "n_sites": 1, "n_days": 5}
    evaluation = {"towers": {"sites": {"DR-101": site}, "product": pooled,
                             "gpp_m": {**pooled, "rmse": 2.0}, "rmse_ratio": 0.5}}  # fmt: skip
    towers = _evaluation_metrics(evaluation)["towers"]
    assert towers["product"]["rmse"] == 1.0 and towers["product"]["n_sites"] == 1
    assert towers["gpp_m"]["rmse"] == 2.0 and towers["sites"]["DR-101"]["gpp_m"]["r"] == 0.8
    assert towers["rmse_ratio"] == 0.5 and towers["sites"]["DR-101"]["gpp_m"]["bias"] == -1.0
    page = "".join(_tower_section(towers))
    assert "DR-101" in page and "pooled" in page and "rmse product" in page and "0.500" in page
    skipped = _evaluation_metrics({"towers": {"note": NO_TOWER}})["towers"]
    assert skipped["product"] == {k: None for k in ("rmse", "bias", "r", "n_sites", "n_days")}
    assert skipped["rmse_ratio"] is None and skipped["note"] == NO_TOWER
    assert NO_TOWER in "".join(_tower_section(skipped))
    assert _evaluation_metrics({})["towers"]["gpp_m"]["rmse"] is None  # an older evaluation

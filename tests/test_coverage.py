"""A run checks that its inputs cover its days and its grid before it makes a day; pixels
outside every MODIS footprint are left empty, never neighbour-filled.

The refusals go through ``unique-cube run`` on the small demo world and must leave the product
folder as it was (and start no Dask cluster); the day-level rules are checked on arrays."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pystac
import pytest
from conftest import downscale_sections, small_pipeline

from unique_cube.config.pipeline import load_pipeline
from unique_cube.grid import COARSE_FACTOR
from unique_cube.product.coverage import local_days_covered
from unique_cube.product.day import DaySkipped, RunContext, day_layout, make_windows, plan_day
from unique_cube.product.static import StaticLayers
from unique_cube.product.variables import QA_FLAGS

PRODUCT = """
output: {out}
scheme: s2
samples: 2
ddim_steps: 3
tile: 64
overlap: 16
max_gap_days: 16
"""


def _month(start: str, end: str) -> pystac.Item:
    """A reanalysis item of a month, its hours as ERA5's on the Planetary Computer."""
    first, last = dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end)
    return pystac.Item(
        f"era5-{start[:7]}", None, None, None,
        {"start_datetime": f"{start}Z", "end_datetime": f"{end}Z"},
        start_datetime=first.replace(tzinfo=dt.UTC), end_datetime=last.replace(tzinfo=dt.UTC),
    )  # fmt: skip


def test_local_days_covered_are_the_complete_days_of_the_items() -> None:
    december = _month("2022-12-01T00:00:00", "2022-12-31T23:59:59.999999")
    january = _month("2023-01-01T00:00:00", "2023-01-31T23:59:59.999999")
    march = _month("2023-03-01T00:00:00", "2023-03-31T23:59:59.999999")
    d = dt.date
    # Korea (UTC+9): a local day's 24 hours end at 15:00 UTC; Dec 1 lacks its first 9 hours.
    assert local_days_covered([january, december], 9) == [(d(2022, 12, 2), d(2023, 1, 31))]
    # UTC: the hour stamped 00:00 belongs to the day before (stamped at the end of its hour).
    assert local_days_covered([december], 0) == [(d(2022, 12, 1), d(2022, 12, 30))]
    assert local_days_covered([december, march], 9) == [
        (d(2022, 12, 2), d(2022, 12, 31)),
        (d(2023, 3, 2), d(2023, 3, 31)),
    ]
    # A single datetime does not say which hours an item holds: no judgement.
    hour = pystac.Item("era5-hour", None, None, dt.datetime(2022, 12, 1, tzinfo=dt.UTC), {})
    assert local_days_covered([december, hour], 9) is None


def test_local_days_covered_agree_with_the_days_daily_weather_makes(demo_world, demo_server):
    """The check reads the items' times only; daily_weather counts the hours it reads (of
    whole months: the world's December 2022 and 2023 items hold only the hours its 2023 needs,
    though they say a month)."""
    from unique_cube.config.catalog import load_catalog
    from unique_cube.inputs.weather import daily_weather, weather_items

    world, manifest = demo_world
    catalog = load_catalog("demo").with_url(demo_server.url)
    spec = small_pipeline(world, world / "models", downscale_sections(world, manifest, world))
    path = world.parent / "coverage-check.yaml"
    path.write_text(spec)
    geobox = load_pipeline(path).grid.geobox
    items = weather_items(catalog, "era5", geobox, dt.date(2023, 1, 25), dt.date(2023, 2, 5))
    assert len(items) == 2
    for offset in (9, 0, -5.5):
        daily = daily_weather(items, catalog.source("era5"), utc_offset_hours=offset)
        made = [dt.date.fromisoformat(str(t)[:10]) for t in daily["time"].values]
        assert local_days_covered(items, offset) == [(made[0], made[-1])], offset
        assert len(made) == (made[-1] - made[0]).days + 1


# --- refusals before any day -------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture
def earlier_product(tmp_path: Path) -> Path:
    """A product folder holding what an earlier run left (a run log)."""
    runs = tmp_path / "product" / "runs"
    runs.mkdir(parents=True)
    (runs / "20230601T000000-1.json").write_text('{"days": []}')
    return tmp_path / "product"


def _spec(demo_world, models: Path, downscalers: Path, out: Path, bounds=None) -> Path:
    world, manifest = demo_world
    if bounds is not None:
        manifest = {**manifest, "region": {**manifest["region"], "bbox": bounds}}
    path = out.parent / "pipeline.yaml"
    product = PRODUCT.format(out=out)
    path.write_text(
        small_pipeline(world, models, downscale_sections(world, manifest, downscalers, product))
    )
    return path


@pytest.mark.parametrize(
    ("args", "code", "parts"),
    [
        # The small world's reanalysis holds the local days of 2023 (its items say so).
        (["--start", "2022-11-28", "--end", "2023-01-05"], 4,
         ["2022-11-28..2023-01-05 over the grid (bbox [127.", "outside the inputs' coverage",
          "era5 reanalysis does not cover its first day 2022-11-28",
          "hold the local days 2023-01-01..2023-01-31, UTC+9 h"]),
        (["--start", "2023-12-28", "--end", "2024-01-03"], 4,
         ["does not cover its last day 2024-01-03", "2023-12-02..2023-12-31"]),
        (["--date", "2022-12-01"], 4,
         ["2022-12-01..2022-12-01 over the grid (bbox [127.", "outside the inputs' coverage",
          "catalog demo has no era5 reanalysis for these dates or this area"]),
        (["--start", "1923-06-01", "--end", "2023-06-01"], 3,
         ["product.max_backfill_days: 1923-06-01..2023-06-01 spans 36526 days, more than the "
          "366 a run may make"]),
    ],
    ids=["starts-before-the-reanalysis", "ends-after-it", "one-day-before-it", "a-century"],
)  # fmt: skip
def test_a_backfill_outside_the_inputs_fails_before_anything_is_written(
    demo_world, trained_models, trained_downscalers, earlier_product, capsys, args, code, parts
) -> None:
    from unique_cube.cli import main

    spec = _spec(demo_world, trained_models, trained_downscalers, earlier_product)
    before = _snapshot(earlier_product)
    assert main(["run", str(spec), *args]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for part in parts:
        assert part in err, err
    assert "Dask scheduler" not in err  # refused before a cluster was started
    assert _snapshot(earlier_product) == before


def test_a_grid_mostly_outside_the_modis_items_is_refused(
    demo_world, trained_models, trained_downscalers, earlier_product, capsys
) -> None:
    """The world's MODIS items hold data in its region (10 x 10 blocks of 480 m) and the tower
    patches: the region moved east by 6 blocks is 60 % outside, more than
    product.max_missing_fraction (50 %) would leave without GPP_M."""
    from unique_cube.cli import main

    left, bottom, right, top = demo_world[1]["region"]["bbox"]
    bounds = [left + 2880, bottom, right + 2880, top]
    spec = _spec(demo_world, trained_models, trained_downscalers, earlier_product, bounds)
    before = _snapshot(earlier_product)
    assert main(["run", str(spec), "--date", "2023-06-01"]) == 4
    err = capsys.readouterr().err
    assert "60% of the grid (bbox [127." in err
    assert "is outside every modis-sr item (modis-09GA-061) of 2023-05-16..2023-06-17" in err
    assert "its items cover bbox [127." in err
    assert "more than product.max_missing_fraction (50%) would have no GPP_M" in err
    assert "Dask scheduler" not in err
    assert _snapshot(earlier_product) == before


# --- pixels outside every footprint: left empty -------------------------------------------


#: A bilinear product on a grid of 2 x 3 blocks of 480 m.
BILINEAR = """\
name: t
catalog: demo
flux: {{directory: flux, sites: flux/sites.csv}}
gpp:
  train: {{start: 2023-01-01, end: 2023-12-31}}
  modis: {{source: modis-sr, gap_fill_days: 16}}
  landsat: {{source: hls-l30}}
  output: models
grid: {{crs: "EPSG:32652", bounds: [346020, 4171890, 347460, 4172850]}}
product: {{output: product, scheme: bilinear, max_missing_fraction: {max_missing}}}
"""


def _run_context(tmp_path: Path, outside, max_missing: float = 0.5) -> RunContext:
    spec = tmp_path / "p.yaml"
    spec.write_text(BILINEAR.format(max_missing=max_missing))
    pipeline = load_pipeline(spec)
    models = SimpleNamespace(card=SimpleNamespace(gap_fill_days=16), checkpoints={})
    return RunContext(pipeline, models, StaticLayers({}, {}), day_layout(pipeline),
                      outside=outside)  # fmt: skip


def _made(run: RunContext, gpp_m: np.ndarray):
    gap, out_of_range = np.zeros(gpp_m.shape), np.zeros(gpp_m.shape, dtype=bool)
    plan = plan_day(run, dt.date(2023, 6, 1), gpp_m, gap, out_of_range)
    shape = run.pipeline.grid.geobox.shape
    gpp, qa = np.full(shape, -1.0, dtype="float32"), np.full(shape, 255, dtype="uint8")
    spread = gpp.copy()

    def write(window, g, s, q):
        gpp[window.slices], spread[window.slices], qa[window.slices] = g, s, q

    make_windows(run, plan, write)
    return plan, gpp, spread, qa


def test_pixels_outside_every_footprint_are_left_empty_not_neighbour_filled(tmp_path) -> None:
    outside = np.zeros((2, 3), dtype=bool)
    outside[:, 2] = True  # the east column of blocks: no MODIS item there
    gpp_m = np.array([[4.0, np.nan, np.nan], [6.0, 5.0, np.nan]], dtype="float32")
    plan, gpp, spread, qa = _made(_run_context(tmp_path, outside), gpp_m)

    east = np.s_[:, 2 * COARSE_FACTOR :]
    assert np.isnan(gpp[east]).all() and np.isnan(spread[east]).all() and (qa[east] == 0).all()
    assert np.isnan(plan.gpp_m[:, 2]).all()
    west = np.s_[:, : 2 * COARSE_FACTOR]
    assert np.isfinite(gpp[west]).all() and (qa[west] & 3 == QA_FLAGS["bilinear"]).all()
    # The one missing block inside is filled from its neighbours, and flagged.
    filled = qa[:COARSE_FACTOR, COARSE_FACTOR : 2 * COARSE_FACTOR]
    assert (filled & QA_FLAGS["gpp_m_neighbour_filled"]).all()
    assert (qa[west] & QA_FLAGS["gpp_m_neighbour_filled"]).astype(bool).sum() == COARSE_FACTOR**2
    fractions = plan.details["qa_fractions"]
    assert fractions["outside_inputs"] == pytest.approx(2 / 6)
    assert fractions["gpp_m_neighbour_filled"] == pytest.approx(1 / 6)

    # Without the footprint the same east column is invented from its neighbours.
    _, gpp, _, qa = _made(_run_context(tmp_path, None), gpp_m)
    assert np.isfinite(gpp[east]).all()
    assert (qa[east] & QA_FLAGS["gpp_m_neighbour_filled"]).all()


def test_the_missing_share_of_a_day_counts_the_pixels_inside_the_footprints(tmp_path) -> None:
    outside = np.zeros((2, 3), dtype=bool)
    outside[:, 2] = True
    gpp_m = np.array([[4.0, np.nan, np.nan], [6.0, np.nan, np.nan]], dtype="float32")
    # 2 of the 4 blocks inside miss GPP_M: 50 % (of the whole grid they would be 33 %).
    with pytest.raises(DaySkipped, match="GPP_M missing on 50% of the coarse grid inside the "
                                         "MODIS footprints"):  # fmt: skip
        _made(_run_context(tmp_path, outside, max_missing=0.4), gpp_m)
    _, gpp, _, _ = _made(_run_context(tmp_path, outside, max_missing=0.5), gpp_m)
    assert np.isfinite(gpp[:, : 2 * COARSE_FACTOR]).all()

"""The daily product against the truth, every day (or a fixed systematic sample) of the test
period — the product as it is used: mostly cloudy days, days after the last Landsat overpass.

The days are made by the product path itself (:func:`unique_cube.product.run.run`, the
pipeline's scheme and settings) into the evaluation's own folder, never the published
product; days already made there are kept (a re-run only scores). Each day is scored
against the truth beside bilinear GPP_M on the same pixels: plain and within-block RMSE,
and by stratum (season, land cover, slope, GPP_M observed or gap-filled, days since the
pixel's last clear 30 m observation). The days are made in both modes
(:mod:`unique_cube.product.modes`): *final* (MODIS gaps filled from both sides, the nearest 30 m
reference on either side: future data) and *near-real-time* (nothing after the day), each in
its own folder; :func:`compare_modes` scores them side by side on the same pixels.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xarray as xr

from unique_cube.config.catalog import Catalog
from unique_cube.config.pipeline import Period, Pipeline
from unique_cube.errors import DownscaleError
from unique_cube.evaluation.strata import AGE_BINS, ClearHistory, Scoreboard, Strata
from unique_cube.grid import COARSE_FACTOR, lonlat_bbox, upsample_bilinear
from unique_cube.inputs.cube import load
from unique_cube.inputs.search import search
from unique_cube.product.run import run
from unique_cube.product.variables import QA_FLAGS, QA_PATH_MASK
from unique_cube.scores import Moments, within_block_rmse

__all__ = [
    "Place",
    "clear_history",
    "compare_modes",
    "compare_places",
    "make_days",
    "sample_days",
    "score_days",
    "score_places",
]

log = logging.getLogger(__name__)

#: QA bits that say GPP_M was not observed on the day (filled in time or from neighbours).
_GAP_BITS = (QA_FLAGS["gpp_m_gap_filled"] | QA_FLAGS["gpp_m_long_gap_filled"]
             | QA_FLAGS["gpp_m_neighbour_filled"])  # fmt: skip


def sample_days(period: Period, every: int) -> list[dt.date]:
    """1 day in ``every`` of the period, from its first day (a fixed systematic sample)."""
    span = (period.end - period.start).days + 1
    return [period.start + dt.timedelta(days=i) for i in range(0, span, every)]


def clear_history(pipeline: Pipeline, catalog: Catalog, first: dt.date,
                  last: dt.date) -> ClearHistory:  # fmt: skip
    """Where the HLS dates from ``first`` to ``last`` were clear on the grid (QA and a band
    present, as GPP_L needs them)."""
    source = pipeline.gpp.landsat.source
    geobox = pipeline.grid.geobox
    items = search(source, lonlat_bbox(geobox), f"{first}/{last}", catalog=catalog)
    if not items:
        return ClearHistory([], np.zeros((0, *geobox.shape), bool))
    src = catalog.source(source)
    cube = load(items, src, geobox, bands=[next(iter(src.bands))])
    clear = cube["clear"].compute()
    dates = [dt.date.fromisoformat(str(t)[:10]) for t in clear["time"].values]
    return ClearHistory(dates, clear.values.astype(bool))


def make_days(pipeline: Pipeline, days: list[dt.date], folder: Path,
              say: Callable[[str], None], mode: str = "final") -> list[dt.date]:  # fmt: skip
    """The days made by the product path into ``folder`` (done ones kept) in ``mode``;
    returns the days that are done."""
    product = dataclasses.replace(pipeline.product, output=str(folder))
    report = run(dataclasses.replace(pipeline, product=product), days, say=say, mode=mode)
    done = [dt.date.fromisoformat(d["day"]) for d in report["days"]
            if d["status"] in ("done", "already done")]  # fmt: skip
    if not done:
        reasons = sorted({d.get("reason") or d["status"] for d in report["days"]})
        raise DownscaleError(f"no day of the evaluation sample could be made in {folder}: "
                             f"{'; '.join(reasons)[:500]}")  # fmt: skip
    return done


@dataclasses.dataclass
class Place:
    """Where product days are scored: the product folder of a grid (the whole one, or an
    evaluation window's), its days made, the truth, strata and clear history there."""

    folder: Path
    days: list[dt.date]
    truth: Callable
    strata: Strata
    history: ClearHistory


def score_days(pipeline: Pipeline, folder: Path, days: list[dt.date], truth,
               strata: Strata, history: ClearHistory) -> dict:  # fmt: skip
    """The product's days in ``folder`` against ``truth`` (a callable: dates → (N, H, W)),
    beside bilinear GPP_M: overall, by stratum and by days since the last clear pixel."""
    return score_places(pipeline, [Place(folder, days, truth, strata, history)])


def score_places(pipeline: Pipeline, places: list[Place]) -> dict:
    """:func:`score_days` pooled over ``places`` (a windowed evaluation's windows): every
    place's days, one day of one place in memory at a time."""
    scheme = pipeline.product.scheme
    methods = ("bilinear",) if scheme == "bilinear" else ("bilinear", scheme)
    overall = {m: Moments() for m in methods}
    within: dict[str, list[float]] = {m: [] for m in methods}
    board = Scoreboard()
    for place in places:
        with xr.open_zarr(place.folder / "gpp.zarr", consolidated=False) as store:
            for day in sorted(place.days):
                when = np.datetime64(day, "ns")
                layer = store.sel(time=when)
                product = layer["gpp"].values
                qa = layer["qa"].values
                bilinear = upsample_bilinear(layer["gpp_m"].values, COARSE_FACTOR)
                bilinear = np.where(qa & QA_PATH_MASK, bilinear, np.nan)  # the product's pixels
                true = place.truth([day])[0]
                maps = {"bilinear": bilinear} if scheme == "bilinear" else {
                    "bilinear": bilinear, scheme: product}  # fmt: skip
                ok = np.isfinite(true)
                for values in maps.values():
                    ok &= np.isfinite(values)
                for name, values in maps.items():
                    overall[name].add(true[ok], values[ok])
                    within[name].append(within_block_rmse(np.where(ok, true, np.nan),
                                                          values, COARSE_FACTOR))  # fmt: skip
                labels = place.strata.of_day(day, (qa & _GAP_BITS) > 0, place.history.age(day))
                board.add(labels, np.where(ok, true, np.nan), maps)
    table = board.table()
    days = sorted({day for place in places for day in place.days})
    daily = {
        name: {**overall[name].scores(), "n_days": len(days),
               "within_block_rmse": float(np.sqrt(np.nanmean(np.square(within[name]))))}
        for name in methods
    }  # fmt: skip
    ages = table.pop("age", {})
    by_age = {label: ages[label] for _, label in (*AGE_BINS, (None, "never")) if label in ages}
    return {"days": [d.isoformat() for d in days], "daily_vs_truth": daily,
            "strata": table, "by_age": by_age}  # fmt: skip


def compare_modes(final: Path, nrt: Path, days: list[dt.date], truth, method: str) -> dict:
    """The final and near-real-time versions of ``days`` (their product folders) against the
    truth and against each other, on the pixels all three have: ``rmse_final``,
    ``rmse_nrt``, ``rmse_between`` (gC m-2 d-1), ``nrt_over_final`` (the RMSE ratio) and the
    share of the final days' pixels flagged ``final_inputs_differ``."""
    return compare_places([(final, nrt, days, truth)], method)


def compare_places(places: list[tuple[Path, Path, list[dt.date], Callable]], method: str) -> dict:
    """:func:`compare_modes` pooled over places: ``(final folder, NRT folder, days, truth)``
    each (a windowed evaluation's windows)."""
    moments = {k: Moments() for k in ("final", "nrt", "between")}
    flagged, pixels = 0, 0
    for final, nrt, days, truth in places:
        with (xr.open_zarr(final / "gpp.zarr", consolidated=False) as late,
              xr.open_zarr(nrt / "gpp.zarr", consolidated=False) as early):  # fmt: skip
            for day in sorted(days):
                when = np.datetime64(day, "ns")
                a, b = late["gpp"].sel(time=when).values, early["gpp"].sel(time=when).values
                true = truth([day])[0]
                ok = np.isfinite(a) & np.isfinite(b) & np.isfinite(true)
                moments["final"].add(true[ok], a[ok])
                moments["nrt"].add(true[ok], b[ok])
                moments["between"].add(a[ok], b[ok])
                qa = late["qa"].sel(time=when).values
                flagged += int(((qa & QA_FLAGS["final_inputs_differ"]) > 0)[ok].sum())
                pixels += int(ok.sum())
    rmse = {k: m.scores()["rmse"] for k, m in moments.items()}
    ratio = rmse["nrt"] / rmse["final"] if rmse["final"] else None
    n_days = len({day for _, _, days, _ in places for day in days})
    return {"method": method, "rmse_final": rmse["final"], "rmse_nrt": rmse["nrt"],
            "rmse_between": rmse["between"], "nrt_over_final": ratio, "n_days": n_days,
            "final_inputs_differ_fraction": flagged / pixels if pixels else None}  # fmt: skip

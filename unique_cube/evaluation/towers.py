"""Validation at towers inside the product region: the daily 30 m product over each held-out
tower's footprint window, and GPP_M at the tower's 480 m pixel, against the tower's GPP on the
same days — how GPP products are judged (MOD17, SLOPE, Global Pasture Watch).

A tower is inside the region when its coordinates fall inside the product grid
(:func:`~unique_cube.grid.sites_in_region`, kept in :mod:`unique_cube.grid` so that the GPP
training can import it: from the site table's ``lat``/``lon``, never a column saying so);
with ``flux.hold_out_region`` those towers are left out of the GPP models' training and scored
here. :func:`held_out_towers` reads their flux files before anything is computed (a held-out
tower without one is an error naming it); :func:`validate_at_towers` reads the product days
from the evaluation's Zarr store and scores them (:func:`score_towers`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from unique_cube.config.pipeline import Pipeline
from unique_cube.errors import FluxError
from unique_cube.grid import COARSE_FACTOR, lonlat_pixels, sites_in_region
from unique_cube.inputs.flux import read_flux_dir, read_sites
from unique_cube.scores import metrics

__all__ = [
    "METHODS",
    "NO_TOWER",
    "HeldOutTowers",
    "held_out_towers",
    "score_towers",
    "sites_in_region",
    "tower_series",
    "validate_at_towers",
    "window_means",
]

#: What is scored at the towers: the 30 m product (window mean) and GPP_M (its 480 m pixel).
METHODS = ("product", "gpp_m")

NO_TOWER = "no tower inside the region: tower validation skipped"

#: A window mean needs at least this share of the window's pixels (fewer: not the footprint).
MIN_WINDOW_SHARE = 0.5


def window_means(values: np.ndarray, row: int, col: int, size: int) -> np.ndarray:
    """Mean of ``values`` (days, rows, columns) over the ``size`` × ``size`` window centred on
    pixel (``row``, ``col``), cut at the grid's edges, NaNs left out: one value a day, NaN
    where fewer than half of the whole window's pixels have a value (a tower in a corner of
    the grid, a day the product left mostly empty there)."""
    half = size // 2
    window = values[:, max(row - half, 0) : row + half + 1, max(col - half, 0) : col + half + 1]
    window = window.reshape(window.shape[0], -1).astype("float64")
    valid = np.isfinite(window)
    counts = valid.sum(axis=1)
    sums = np.where(valid, window, 0.0).sum(axis=1)
    enough = counts >= MIN_WINDOW_SHARE * size * size
    return np.where(enough, sums / np.maximum(counts, 1), np.nan)


@dataclass(frozen=True)
class HeldOutTowers:
    """The towers inside the region and their flux data (read at the check stage)."""

    sites: pd.DataFrame
    """Site table rows of the towers inside the grid, with ``row``/``col`` (30 m pixel)."""
    flux: pd.DataFrame
    """Their daily tower data: ``site``, ``date``, ``gpp`` (``flux.target``)."""
    target: str
    note: str | None = None
    """Why nothing is scored (``hold_out_region`` false, or no tower inside the region)."""


def held_out_towers(pipeline: Pipeline) -> HeldOutTowers:
    """The towers of the site table inside ``pipeline.grid`` and their flux files, when
    ``flux.hold_out_region`` holds them out; else a note saying why none is scored. A held-out
    tower without a flux file (or without a day passing ``flux.min_qc``) is a
    :class:`~unique_cube.errors.FluxError` naming it."""
    spec = pipeline.flux
    empty = pd.DataFrame(columns=["site", "date", "gpp"])
    if not spec.hold_out_region:
        note = ("flux.hold_out_region is false: the towers inside the region trained the GPP "
                "models; tower validation skipped")  # fmt: skip
        return HeldOutTowers(pd.DataFrame(), empty, spec.target, note)
    geobox = pipeline.grid.geobox
    sites = read_sites(spec.sites)
    inside = sites[sites_in_region(sites, geobox)].reset_index(drop=True)
    if inside.empty:
        return HeldOutTowers(inside, empty, spec.target, NO_TOWER)
    inside["row"], inside["col"] = lonlat_pixels(inside["lon"], inside["lat"], geobox)
    held = f"held-out tower(s) {', '.join(inside['site'])}, inside the grid by {spec.sites}"
    try:
        flux = read_flux_dir(spec.directory, sites=inside["site"], target=spec.target,
                             min_qc=spec.min_qc)  # fmt: skip
    except FluxError as err:
        raise FluxError(f"{held} (flux.hold_out_region): {err}") from err
    missing = sorted(set(inside["site"]) - set(flux["site"]))
    if missing:
        raise FluxError(
            f"{held} (flux.hold_out_region): {spec.directory} has no flux file (or no day "
            f"with {spec.target} and NEE_VUT_REF_QC >= {spec.min_qc:g}) for "
            f"{', '.join(missing)}: add the file, or remove the site from the table"
        )
    return HeldOutTowers(inside, flux[["site", "date", "gpp"]], spec.target)


def tower_series(store: Path, days: list[dt.date], sites: pd.DataFrame,
                 window: int) -> pd.DataFrame:  # fmt: skip
    """The product's ``days`` in the Zarr ``store`` at each site (``site``, ``row``, ``col``):
    ``product``, the ``gpp`` mean over the ``window`` px window centred on the tower
    (:func:`window_means`), and ``gpp_m``, GPP_M of the tower's 480 m pixel."""
    import xarray as xr

    half = window // 2
    frames = []
    with xr.open_zarr(store, consolidated=False) as cube:
        ny, nx = cube.sizes["y"], cube.sizes["x"]
        layers = cube.sel(time=[np.datetime64(d, "ns") for d in days])
        for site in sites.itertuples():
            row, col = int(site.row), int(site.col)
            if not (0 <= row < ny and 0 <= col < nx):
                raise ValueError(f"tower {site.site} at pixel ({row}, {col}) is off the "
                                 f"product's {ny} x {nx} grid")  # fmt: skip
            y0, x0 = max(row - half, 0), max(col - half, 0)
            fine = layers["gpp"].isel(y=slice(y0, row + half + 1), x=slice(x0, col + half + 1))
            coarse = layers["gpp_m"].isel(y_m=row // COARSE_FACTOR, x_m=col // COARSE_FACTOR)
            frames.append(pd.DataFrame({
                "site": site.site, "date": pd.to_datetime(days),
                "product": window_means(fine.values, row - y0, col - x0, window),
                "gpp_m": coarse.values.astype("float64"),
            }))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def _scores(observed: np.ndarray, predicted: np.ndarray) -> dict:
    found = metrics(observed, predicted)
    return {k: found[k] for k in ("rmse", "bias", "r", "n")}


def score_towers(table: pd.DataFrame) -> dict:
    """Scores of ``product`` and ``gpp_m`` against ``tower`` (columns of ``table``, one row per
    site and day) on the days where all three have a value: per site (``sites``) and pooled
    (``rmse``, ``bias``, ``r``, ``n``; ``n_sites``, ``n_days``: the tower-days pooled), and
    ``rmse_ratio`` (the product's RMSE over GPP_M's)."""
    ok = table[["tower", *METHODS]].notna().all(axis=1)
    scored = table[ok]
    per_site = {}
    for site, rows in table.groupby("site", sort=True):
        kept = rows[ok[rows.index]]
        per_site[str(site)] = {"n_days": len(kept), **{
            m: _scores(kept["tower"].to_numpy(), kept[m].to_numpy()) for m in METHODS}}  # fmt: skip
    n_sites = int(scored["site"].nunique())
    out: dict = {"sites": per_site}
    for method in METHODS:
        out[method] = {**_scores(scored["tower"].to_numpy(), scored[method].to_numpy()),
                       "n_sites": n_sites, "n_days": len(scored)}  # fmt: skip
    product, gpp_m = out["product"]["rmse"], out["gpp_m"]["rmse"]
    out["rmse_ratio"] = product / gpp_m if product is not None and gpp_m else None
    return out


def validate_at_towers(towers: HeldOutTowers, store: Path, days: list[dt.date],
                       window: int) -> dict:  # fmt: skip
    """The held-out towers scored on the product ``days`` of the Zarr ``store`` (what
    ``evaluation.json`` keeps under ``towers``)."""
    if towers.note is not None:
        return {"note": towers.note}
    series = tower_series(store, days, towers.sites, window)
    flux = towers.flux.assign(date=pd.to_datetime(towers.flux["date"]))
    table = series.merge(flux.rename(columns={"gpp": "tower"}), on=["site", "date"], how="left")
    result = score_towers(table)
    for site in towers.sites.itertuples():
        result["sites"][site.site].update(
            lat=float(site.lat), lon=float(site.lon), row=int(site.row), col=int(site.col),
            igbp=str(getattr(site, "igbp", "")) or None,
        )  # fmt: skip
    return {"target": towers.target, "window_px": window, "days": len(days), **result}

"""Leave-one-site-out GPP from tower weather on real FLUXNET2015 daily data, against a
light-use-efficiency baseline.

A check of the flux reader and of the training code on real towers (no satellite data). The
towers are read through :func:`unique_cube.inputs.flux.read_flux`; the features are the
tower's own TA_F, SW_IN_F, VPD_F, P_F and the day of year
(:func:`unique_cube.gpp.features.day_of_year_terms`), plus a vegetation column (fAPAR, NDVI,
EVI or LAI) when a file has one: the reader does not keep such columns, so they are read here
(through ``read_flux`` with that column as the target, so that sites and dates are parsed
alike) and joined on site and date. Each learner of
:func:`unique_cube.gpp.train.cross_validate` is fitted on all sites but one and predicts the
held-out site.

The baseline is GPP = ε · fAPAR-proxy · SW_IN on the same folds, ε (gC per MJ of incoming
shortwave) fitted by least squares on the training sites only. With a vegetation column the
proxy is that column. Without one (as in the agds 4-site table) there is no greenness
information at all, so the proxy is MOD17's environmental scalars f(TA) · f(VPD): a ramp from
0 at ``t_low`` to 1 at ``t_high`` of the daily mean air temperature (MOD17 uses the daily
minimum) times a ramp from 1 at ``vpd_low`` to 0 at ``vpd_high``; the four ramp ends are
chosen on the training sites too, from a small grid, with ε refitted for each. The verdict of
a learner is "beats LUE" or "loses to LUE" by pooled RMSE over all held-out days.

    .venv/bin/python benchmarks/fluxnet_loso.py \
        ../shared/data/fluxnet2015-4sites/df_for_stepwise_regression.csv \
        [--out benchmarks/results/fluxnet_loso.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from unique_cube.gpp.features import day_of_year_terms
from unique_cube.gpp.train import cross_validate
from unique_cube.inputs.flux import METEO, read_flux
from unique_cube.scores import metrics

LEARNERS = ("lightgbm", "lightgbm_rf", "linear")
#: Vegetation columns used as the fAPAR proxy (and a feature) when a file has one, in order.
VEGETATION = ("FPAR", "FAPAR", "NDVI", "EVI", "LAI")
W_TO_MJ_PER_DAY = 0.0864  # a daily mean of 1 W m-2 is 0.0864 MJ m-2 d-1
# Ramp ends searched on the training sites (MOD17's BPLUT spans about -8..12 °C of daily
# minimum temperature and 6.5..46 hPa of VPD; these grids cover that for daily means).
T_LOW = np.arange(-10.0, 10.1, 2.0)  # degC, f(TA) = 0 at and below
T_SPAN = np.arange(4.0, 24.1, 4.0)  # degC, t_high = t_low + span
VPD_LOW = np.array([0.0, 3.0, 6.5, 10.0])  # hPa, f(VPD) = 1 at and below
VPD_HIGH = np.array([15.0, 20.0, 30.0, 46.0, 65.0])  # hPa, f(VPD) = 0 at and above


def read_towers(files: Sequence[str], min_qc: float) -> tuple[pd.DataFrame, str | None]:
    """The towers of ``files`` with the day-of-year terms, and the vegetation column joined
    on site and date when every file has the same one (else None)."""
    table = pd.concat([read_flux(f, min_qc=min_qc) for f in files], ignore_index=True)
    doy_sin, doy_cos = day_of_year_terms(pd.to_datetime(table["date"]).dt.day_of_year.to_numpy())
    table = table.assign(doy_sin=doy_sin, doy_cos=doy_cos)
    found = [_vegetation_column(f) for f in files]
    if found[0] is None or len(set(found)) > 1:
        return table, None
    column = found[0]
    vegetation = pd.concat(
        [read_flux(f, target=column, min_qc=0)[["site", "date", "gpp"]] for f in files]
    ).rename(columns={"gpp": column})
    return table.merge(vegetation, on=["site", "date"], how="left"), column


def _vegetation_column(path: str) -> str | None:
    header = {c.upper(): c for c in pd.read_csv(path, nrows=0).columns}
    return next((header[v] for v in VEGETATION if v in header), None)


def ramp(x: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """0 at and below ``low``, 1 at and above ``high``, linear between (broadcasting)."""
    return np.clip((x - low) / (high - low), 0.0, 1.0)


def fit_lue(rows: pd.DataFrame, vegetation: str | None) -> dict:
    """ε (and, without a vegetation column, the f(TA)·f(VPD) ramp ends) by least squares on
    ``rows``: for each ramp setting ε = Σxy / Σx² with x = proxy · SW_IN, the setting with the
    smallest squared error kept."""
    y = rows["gpp"].to_numpy(float)
    sw = rows["SW_IN_F"].to_numpy(float) * W_TO_MJ_PER_DAY
    if vegetation is not None:
        x = rows[vegetation].to_numpy(float) * sw
        return {"epsilon_gC_per_MJ_SW": float(x @ y / (x @ x))}
    t_low = np.repeat(T_LOW, len(T_SPAN))
    t_high = t_low + np.tile(T_SPAN, len(T_LOW))
    v_low, v_high = np.repeat(VPD_LOW, len(VPD_HIGH)), np.tile(VPD_HIGH, len(VPD_LOW))
    f_t = ramp(rows["TA_F"].to_numpy(float), t_low[:, None], t_high[:, None])
    f_v = 1.0 - ramp(rows["VPD_F"].to_numpy(float), v_low[:, None], v_high[:, None])
    # Σxy and Σx² for every (f_t, f_v) pair at once: x = f_t · f_v · sw.
    sxy = (f_t * (sw * y)) @ f_v.T
    sxx = (f_t**2 * sw**2) @ (f_v**2).T
    sse = np.where(sxx > 0, y @ y - sxy**2 / np.where(sxx > 0, sxx, 1), np.inf)
    i, j = np.unravel_index(np.argmin(sse), sse.shape)
    return {
        "epsilon_gC_per_MJ_SW": float(sxy[i, j] / sxx[i, j]),
        "t_low_degC": float(t_low[i]),
        "t_high_degC": float(t_high[i]),
        "vpd_low_hPa": float(v_low[j]),
        "vpd_high_hPa": float(v_high[j]),
    }


def predict_lue(fit: dict, rows: pd.DataFrame, vegetation: str | None) -> np.ndarray:
    sw = rows["SW_IN_F"].to_numpy(float) * W_TO_MJ_PER_DAY
    if vegetation is not None:
        proxy = rows[vegetation].to_numpy(float)
    else:
        f_t = ramp(rows["TA_F"].to_numpy(float), fit["t_low_degC"], fit["t_high_degC"])
        f_v = 1.0 - ramp(rows["VPD_F"].to_numpy(float), fit["vpd_low_hPa"], fit["vpd_high_hPa"])
        proxy = f_t * f_v
    return fit["epsilon_gC_per_MJ_SW"] * proxy * sw


def lue_loso(
    table: pd.DataFrame, folds: dict[str, int], vegetation: str | None
) -> tuple[pd.DataFrame, dict]:
    """Out-of-fold LUE predictions (the folds of ``cross_validate``) and each fold's fit."""
    fold = table["site"].map(folds).to_numpy()
    predicted = np.full(len(table), np.nan)
    fits = {}
    for site, k in folds.items():
        held = fold == k
        fits[site] = fit_lue(table[~held], vegetation)
        predicted[held] = predict_lue(fits[site], table[held], vegetation)
    return table.assign(predicted=predicted), fits


def scores(oof: pd.DataFrame) -> dict:
    return {
        "pooled": metrics(oof["gpp"], oof["predicted"]),
        "per_site": {s: metrics(g["gpp"], g["predicted"]) for s, g in oof.groupby("site")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="daily FLUXNET files (FULLSET DD or a table)")
    parser.add_argument("--min-qc", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2, help="threads per learner")
    parser.add_argument("--out", type=Path, help="also write the report (JSON) here")
    args = parser.parse_args()

    table, vegetation = read_towers(args.files, args.min_qc)
    features = [*METEO, "doy_sin", "doy_cos", *([vegetation] if vegetation else [])]
    table = table.dropna(subset=features).reset_index(drop=True)
    folds = {site: i for i, site in enumerate(sorted(table["site"].unique()))}
    oof = cross_validate(table, folds, LEARNERS, features=features, threads=args.threads)
    results = {learner: scores(frame) for learner, frame in oof.items()}
    lue_oof, lue_fits = lue_loso(table, folds, vegetation)
    lue = scores(lue_oof)
    for result in results.values():
        better = result["pooled"]["rmse"] < lue["pooled"]["rmse"]
        result["verdict"] = "beats LUE" if better else "loses to LUE"
        result["pooled_rmse_minus_lue"] = result["pooled"]["rmse"] - lue["pooled"]["rmse"]
    proxy = (
        f"the file's {vegetation} column"
        if vegetation
        else "no vegetation column in the data (no fAPAR/NDVI/EVI/LAI): MOD17-style "
        "f(TA)·f(VPD) scalars (daily mean TA ramp 0→1, VPD ramp 1→0), ramp ends and ε fitted "
        "on the training sites; a seasonal weather proxy, not greenness"
    )
    report = {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "files": [Path(f).name for f in args.files],
        "sites": sorted(folds),
        "rows": len(table),
        "rows_per_site": {s: int(n) for s, n in table["site"].value_counts().sort_index().items()},
        "features": features,
        "units": "gC m-2 d-1 (rmse, bias = mean of predicted - observed)",
        "lue_baseline": {
            "model": "GPP = epsilon * fapar_proxy * SW_IN_F (MJ m-2 d-1)",
            "fapar_proxy": proxy,
            "fits_by_held_out_site": lue_fits,
            **lue,
        },
        "results": results,
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

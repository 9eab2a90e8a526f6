"""Leave-one-site-out GPP from tower weather alone, on real FLUXNET2015 daily data.

A check of the flux reader and of the training code on real towers (no satellite data):
features are the tower's own TA_F, SW_IN_F, VPD_F, P_F and the day of year.

    .venv/bin/python benchmarks/fluxnet_loso.py \
        ../shared/data/fluxnet2015-4sites/df_for_stepwise_regression.csv
"""

from __future__ import annotations

import argparse
import json

import pandas as pd

from unique_cube.gpp.features import day_of_year_terms
from unique_cube.gpp.train import cross_validate
from unique_cube.inputs.flux import METEO, read_flux
from unique_cube.scores import metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="daily FLUXNET files (FULLSET DD or a table)")
    parser.add_argument("--min-qc", type=float, default=0.5)
    args = parser.parse_args()
    table = pd.concat([read_flux(f, min_qc=args.min_qc) for f in args.files], ignore_index=True)
    features = [*METEO, "doy_sin", "doy_cos"]
    doy_sin, doy_cos = day_of_year_terms(pd.to_datetime(table["date"]).dt.dayofyear.to_numpy())
    table = table.assign(doy_sin=doy_sin, doy_cos=doy_cos).dropna(subset=features)
    folds = {site: i for i, site in enumerate(sorted(table["site"].unique()))}
    result = {}
    for learner, oof in cross_validate(
        table, folds, ["lightgbm", "lightgbm_rf", "linear"], features=features
    ).items():
        result[learner] = {
            "overall": metrics(oof["gpp"], oof["predicted"]),
            "per_site": {s: metrics(g["gpp"], g["predicted"]) for s, g in oof.groupby("site")},
        }
    print(json.dumps({"sites": sorted(folds), "rows": len(table), "results": result}, indent=1))


if __name__ == "__main__":
    main()

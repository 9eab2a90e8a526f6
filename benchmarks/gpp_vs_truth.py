"""Step 1 against the demo world's truth: GPP_L (30 m) and GPP_M (480 m) on the test period's
clear dates, pooled, by slope class and by season.

The figures ``unique-cube evaluate`` writes as ``gpp_vs_truth``, for a pipeline's trained GPP
models alone (no downscaler needed), so two sets of models can be compared on one world:

    .venv/bin/python benchmarks/gpp_vs_truth.py PIPELINE [--label after] \\
        [--out benchmarks/results/gpp_vs_truth.json]

With ``--out`` the result is added under ``--label`` to that JSON file (kept labels stay).
``--pairs FILE`` scores GPP map pairs cached by an earlier evaluation (``pairs-*.npz`` in
``downscale.output``) instead of computing them: models of an earlier version, whose
features the current code no longer makes, are compared that way.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from unique_cube.config.pipeline import load_pipeline
from unique_cube.demo.serve import serve_world
from unique_cube.downscale.pairs import Pairs
from unique_cube.evaluation.gpp_truth import gpp_truth_scores, pairs_vs_truth
from unique_cube.evaluation.truth import open_truth
from unique_cube.inputs.search import open_catalog
from unique_cube.inputs.static import static_layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", help="a pipeline with gpp, downscale.test/.truth, a world")
    parser.add_argument("--label", default="current", help="name of this run in --out")
    parser.add_argument("--out", type=Path, help="JSON file to add the result to")
    parser.add_argument("--pairs", type=Path, help="cached pairs (.npz) to score instead")
    args = parser.parse_args()
    pipeline = load_pipeline(args.pipeline)
    with serve_world(pipeline.serve_world) as server:
        pipeline = dataclasses.replace(pipeline, stac_url=server.url)
        with open_catalog(pipeline) as catalog:
            if args.pairs is None:
                scores = gpp_truth_scores(pipeline, catalog, say=print)
            else:
                scores = _cached(pipeline, catalog, args.pairs)
    for key in ("gpp_l_vs_truth", "gpp_m_vs_truth"):
        table = scores[key]
        print(f"{key}: RMSE {table['rmse']:.2f} bias {table['bias']:+.2f} r {table['r']:.3f}")
        for group in ("by_slope", "by_season"):
            for label, row in table[group].items():
                print(f"  {group} {label}: RMSE {row['rmse']:.2f} bias {row['bias']:+.2f}")
    if args.out:
        saved = json.loads(args.out.read_text()) if args.out.exists() else {"runs": {}}
        saved["runs"][args.label] = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "models": str(pipeline.gpp.output),
            **scores,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(saved, indent=1) + "\n")


def _cached(pipeline, catalog, path: Path) -> dict:
    saved = np.load(path)
    pairs = Pairs([pd.Timestamp(str(d)) for d in saved["dates"]], saved["target"],
                  saved["gpp_m"], saved["gpp_m_30m"], int(saved["factor"]))  # fmt: skip
    raw, names = static_layers(catalog, pipeline.grid.geobox)
    truth = open_truth(pipeline)(pairs.dates)
    return pairs_vs_truth(pairs, truth, raw[names.index("slope")])


if __name__ == "__main__":
    main()

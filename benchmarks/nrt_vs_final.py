"""Near-real-time against final days on a demo world: their RMSE against the truth, the RMSE
between them, and how long after its day an NRT day's last input was published.

Makes 1 day in ``--every`` of the test period twice through the product path, final and
near-real-time, each into its own folder (``unique_cube.evaluation.daily.make_days``, days
already made there are kept), and scores them as ``unique-cube evaluate`` does
(``compare_modes``). The input lag comes from the NRT run logs (``input_lag_hours``: from the
end of the local day to the publication of its last input, among the inputs that say when).

    .venv/bin/python benchmarks/nrt_vs_final.py /tmp/d22.yaml --every 6 \\
        --folder /tmp/nrt-vs-final --out benchmarks/results/nrt_vs_final.json

The issue's goal: NRT within 10 % of final in RMSE against the truth.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from unique_cube.config.pipeline import load_pipeline
from unique_cube.demo.serve import served
from unique_cube.evaluation.daily import compare_modes, make_days, sample_days
from unique_cube.evaluation.truth import open_truth


def input_lags(folder: Path) -> list[float]:
    """``input_lag_hours`` of every day done in the folder's run logs."""
    lags = []
    for path in sorted((folder / "runs").glob("*.json")):
        for day in json.loads(path.read_text()).get("days", []):
            if day.get("status") == "done" and day.get("input_lag_hours") is not None:
                lags.append(float(day["input_lag_hours"]))
    return lags


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline")
    parser.add_argument("--every", type=int, default=6)
    parser.add_argument("--folder", type=Path, required=True, help="where the days are made")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    began = time.perf_counter()
    pipeline = load_pipeline(args.pipeline)
    days = sample_days(pipeline.downscale.test, args.every)
    truth = open_truth(pipeline)
    seconds = {}
    with served(pipeline) as running:
        done = {}
        for mode in ("final", "nrt"):
            start = time.perf_counter()
            done[mode] = make_days(running, days, args.folder / mode, print, mode=mode)
            seconds[mode] = round(time.perf_counter() - start, 1)
    both = sorted(set(done["final"]) & set(done["nrt"]))
    scores = compare_modes(args.folder / "final", args.folder / "nrt", both, truth,
                           pipeline.product.scheme)  # fmt: skip
    lags = input_lags(args.folder / "nrt")
    result = {
        "command": " ".join(sys.argv),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
                   f"load average {os.getloadavg()[0]:.1f}",
        "date": dt.date.today().isoformat(),
        "days_asked": len(days),
        "days_final": len(done["final"]),
        "days_nrt": len(done["nrt"]),
        **scores,
        "nrt_within_10_percent": scores["nrt_over_final"] is not None
                                 and scores["nrt_over_final"] <= 1.10,
        "input_lag_hours": {"median": statistics.median(lags) if lags else None,
                            "max": max(lags) if lags else None, "n_days": len(lags)},
        "seconds": {**seconds, "total": round(time.perf_counter() - began, 1)},
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

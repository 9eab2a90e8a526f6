"""Run time of the daily product with faults vs without, measured in one run of the fault suite.

    python benchmarks/faults.py [--json OUT]

Runs ``tests/test_faults_daily.py`` (the small demo world; one local Dask cluster for every
run, so the runs are comparable) and prints, for each fault, the seconds per product day of
the runs that met it, and their ratio to the undisturbed run of the same days (redone on the
warm cluster; the first, cold run is listed too). Most of a run is its fixed cost (GPP_M for
the block of days, loading the actors), so compare runs of the same number of days. Every test of
the suite also checks that nothing was lost: maps bit-identical to the undisturbed run, the
store and its STAC catalog consistent, no secret in outputs or logs. The first run of the suite
includes building the small world and training its models (not timed here).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        timings = Path(tmp) / "timings.json"
        env = {**os.environ, "UNIQUE_CUBE_FAULT_TIMINGS": str(timings)}
        suite = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly",
             str(ROOT / "tests/test_faults_daily.py")],
            cwd=ROOT, env=env, text=True, capture_output=True,
        )  # fmt: skip
        print(suite.stdout.strip().splitlines()[-1])
        if suite.returncode != 0:
            print(suite.stdout[-4000:], file=sys.stderr)
            return 1
        rows = json.loads(timings.read_text())
    base = next(r for r in rows if r["fault"] == "none")
    base_per_day = base["seconds"] / base["days"]
    print("| fault | days | exit | s | s/day | × undisturbed |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        per_day = row["seconds"] / row["days"]
        row["ratio"] = per_day / base_per_day
        print(f"| {row['fault']} | {row['days']} | {row['exit']} | {row['seconds']:.1f} | "
              f"{per_day:.1f} | {row['ratio']:.2f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

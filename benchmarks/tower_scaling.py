"""Tower windows at scale: seconds, peak memory and Dask tasks of the towers' features.

For 10, 40, 160 and 320 towers of the tower bed (``benchmarks/tower_world.py``: towers spread
over 20-70 N, 170 W-170 E, each in its own UTM zone's tile, MODIS on the sinusoidal tiles),
served by ``rustac serve`` and searched over the towers' bounding box as training does, each
size in a fresh process: the lazy features of both models' sources
(:func:`unique_cube.gpp.tower_windows.tower_features` of ``hls-l30`` and ``modis-sr``) built and
computed in one ``dask.compute``. Reports the seconds to build and to compute, the peak RSS
of the process and the tasks of the graph (as built, and after Dask's optimisation), and the
ratios to 10 and to 40 towers: seconds and tasks should grow at most linearly with the
towers, the peak memory hardly at all.

    .venv/bin/python benchmarks/tower_scaling.py --sizes 10 40 160 320
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from tower_world import DEFAULT_BED, HLS_DATES, MODIS_DATES, build_bed

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("hls-l30", "modis-sr")


def peak_rss_mb() -> float:
    """This process's peak resident memory: Linux's VmHWM, which starts afresh at exec
    (``ru_maxrss`` carries the parent's peak over into a child)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def machine() -> dict:
    """The machine a result was measured on, as the results record it."""
    return {"platform": platform.platform(), "uname": " ".join(os.uname()),
            "cpus": os.cpu_count(), "load_average": os.getloadavg()}  # fmt: skip


def one_size(bed: Path, towers: int) -> dict:
    """Search, build and compute the features of the bed's first ``towers`` towers."""
    import dask
    import dask.base

    from unique_cube.config.catalog import load_catalog
    from unique_cube.demo.serve import serve_world
    from unique_cube.gpp.tower_windows import tower_batches, tower_features
    from unique_cube.inputs.flux import read_sites
    from unique_cube.inputs.search import search

    sites = read_sites(bed / "flux" / "sites.csv").head(towers)
    bbox = (float(sites["lon"].min()) - 0.05, float(sites["lat"].min()) - 0.05,
            float(sites["lon"].max()) + 0.05, float(sites["lat"].max()) + 0.05)  # fmt: skip
    # A day more each side: a local day east of 157.5 E begins on the day before in UTC.
    period = f"{HLS_DATES[0] - dt.timedelta(days=1)}/{HLS_DATES[-1] + dt.timedelta(days=1)}"
    began = time.perf_counter()
    with serve_world(bed) as server:
        catalog = load_catalog("demo").with_url(server.url)
        items = {key: search(key, bbox, period, catalog=catalog) for key in SOURCES}
    searched = time.perf_counter() - began
    before = peak_rss_mb()

    began = time.perf_counter()
    features = [tower_features(items[key], catalog.source(key), sites) for key in SOURCES]
    built = time.perf_counter() - began
    tasks = len(dask.base.collections_to_expr(features, optimize_graph=False).__dask_graph__())
    optimised = len(dask.base.collections_to_expr(features).optimize().__dask_graph__())
    began = time.perf_counter()
    computed = dask.compute(*features)
    done = time.perf_counter() - began
    return {
        "towers": towers,
        "items": {key: len(its) for key, its in items.items()},
        "batches": {key: len(tower_batches(items[key], sites)) for key in SOURCES},
        "days": {key: int(f.sizes["time"]) for key, f in zip(SOURCES, computed, strict=True)},
        "clear_windows": {
            key: int((f["n_clear"] > 0).sum()) for key, f in zip(SOURCES, computed, strict=True)
        },
        "search_seconds": round(searched, 2),
        "build_seconds": round(built, 2),
        "compute_seconds": round(done, 2),
        "seconds": round(built + done, 2),
        "tasks": tasks,
        "tasks_optimised": optimised,
        "rss_before_build_mb": before,
        "peak_rss_mb": peak_rss_mb(),
    }


def ratios(rows: list[dict], base: dict) -> dict:
    return {
        str(row["towers"]): {
            "towers": round(row["towers"] / base["towers"], 2),
            "seconds": round(row["seconds"] / base["seconds"], 2),
            "tasks": round(row["tasks"] / base["tasks"], 2),
            "peak_rss": round(row["peak_rss_mb"] / base["peak_rss_mb"], 2),
        }
        for row in rows
        if row["towers"] > base["towers"]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 40, 160, 320])
    parser.add_argument("--bed", type=Path, default=DEFAULT_BED)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/tower_scaling.json")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a size, in a child
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_size(args.bed, args.one)))
        return
    began = time.perf_counter()
    manifest = build_bed(args.bed, max(args.sizes))
    bed_seconds = round(time.perf_counter() - began, 1)
    print(f"tower bed: {manifest['sites']} towers, {manifest['items']} items "
          f"({bed_seconds} s)", flush=True)  # fmt: skip
    rows = []
    for towers in args.sizes:
        command = [sys.executable, __file__, "--one", str(towers), "--bed", str(args.bed)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{towers} towers failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    by_size = {row["towers"]: row for row in rows}
    report = {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": machine(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "bed": {
            "towers": manifest["sites"],
            "items": manifest["items"],
            "hls_dates": [str(d) for d in HLS_DATES],
            "modis_dates": [str(d) for d in MODIS_DATES],
            "seconds": bed_seconds,
        },
        "sources": list(SOURCES),
        "rows": rows,
        "ratios_vs_10": ratios(rows, by_size[10]) if 10 in by_size else None,
        "ratios_vs_40": ratios(rows, by_size[40]) if 40 in by_size else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({"ratios_vs_10": report["ratios_vs_10"],
                      "ratios_vs_40": report["ratios_vs_40"]}, indent=1))  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

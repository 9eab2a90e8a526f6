"""odc-stac vs stackstac: seconds and peak memory of the same loads on a demo world, in one run.

The pipeline's loads, each through ``cube.load`` with either engine onto the pipeline's grid:
HLS (every band role and Fmask) over a season on the 30 m grid, MODIS (every band and both QA
layers) over a month on the 480 m grid with ``average`` resampling, as GPP_M loads it, and
the DEM on the 30 m grid (bilinear). Each engine runs in a fresh process (its peak RSS is its
own; both import both libraries so that the baselines match); the clock and the peak resident
memory (``VmHWM``, restarted after the imports and STAC searches) cover the loads and their
compute only. The runs alternate (odc-stac, stackstac, odc-stac …) and each engine's fastest
run counts. The cubes of the engines are compared too (max |difference|, mask mismatches).

    .venv/bin/python benchmarks/loader_engines.py --world demo-world \\
        [--pipeline pipelines/demo.yaml] [--out benchmarks/results/loader_engines.json]
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
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("odc-stac", "stackstac")


def _peak_rss_mb() -> float:
    """This process's peak resident memory since it started (MB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _status_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (its peak) from ``/proc/self/status``, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise SystemExit(f"no {field} in /proc/self/status (Linux only)")


def _reset_peak_rss() -> None:
    """Start the peak (``VmHWM``) afresh at the resident memory now: the imports' own peak
    would otherwise hide the loads' (Linux ≥ 4.0, ``clear_refs`` 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def one_engine(engine: str, args: argparse.Namespace, out: Path) -> dict:
    """The loads with ``engine``, computed; their cubes saved to ``out`` (npz)."""
    import dask
    import numpy as np
    import odc.stac  # noqa: F401 (both engines' imports in every run: equal baselines)
    import stackstac  # noqa: F401

    from unique_cube.config.catalog import load_catalog
    from unique_cube.config.pipeline import load_pipeline
    from unique_cube.grid import coarse_geobox, lonlat_bbox
    from unique_cube.inputs.cube import load
    from unique_cube.inputs.search import search

    pipeline = load_pipeline(args.pipeline)
    catalog = load_catalog(pipeline.catalog).with_url(args.stac_url)
    fine = pipeline.grid.geobox
    loads = {  # name: (source, period, grid, load options)
        "hls": (pipeline.gpp.landsat.source, args.hls, fine, {}),
        "modis": (pipeline.gpp.modis.source, args.modis, coarse_geobox(fine),
                  {"resampling": "average"}),
        "dem": ("dem", args.dem, fine, {}),
    }  # fmt: skip
    items = {
        name: search(source, lonlat_bbox(fine), period, catalog=catalog, max_cloud_cover=100)
        for name, (source, period, _, _) in loads.items()
    }
    rows, arrays = {}, {}
    _reset_peak_rss()
    before = _status_mb("VmRSS")
    with dask.config.set(scheduler="threads", num_workers=args.threads):
        for name, (source, _, grid, options) in loads.items():
            began = time.perf_counter()
            cube = load(items[name], catalog.source(source), grid, engine=engine, **options)
            cube = cube.compute()
            seconds = time.perf_counter() - began
            rows[name] = {"items": len(items[name]), "steps": cube.sizes["time"],
                          "shape": list(grid.shape), "seconds": round(seconds, 2)}  # fmt: skip
            arrays.update({f"{name}/{v}": cube[v].values for v in cube.data_vars})
    peak = _status_mb("VmHWM")
    np.savez(out, **arrays)
    return {
        "engine": engine,
        "seconds": round(sum(r["seconds"] for r in rows.values()), 2),
        "rss_before_loads_mb": before,
        "peak_rss_mb": peak,
        "peak_rss_above_start_mb": round(peak - before, 1),
        "process_peak_rss_mb": _peak_rss_mb(),
        "loads": rows,
    }


def parity(odc_file: Path, stackstac_file: Path) -> dict:
    """Per variable: the largest |odc-stac − stackstac| where both have a value, and the
    pixels where only one has a value (or, for masks, where they differ)."""
    import numpy as np

    a, b = np.load(odc_file), np.load(stackstac_file)
    out = {}
    for name in a.files:
        x, y = a[name], b[name]
        if x.dtype == bool:
            out[name] = {"mismatched": int((x != y).sum()), "of": int(x.size)}
            continue
        both = ~np.isnan(x) & ~np.isnan(y)
        out[name] = {
            "max_abs_difference": float(np.abs(x[both] - y[both]).max()) if both.any() else 0.0,
            "nan_mismatched": int((np.isnan(x) != np.isnan(y)).sum()),
            "of": int(x.size),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, help="the demo world to serve (default: the "
                        "pipeline's serve_world)")  # fmt: skip
    parser.add_argument("--pipeline", type=Path, default=ROOT / "pipelines" / "demo.yaml")
    parser.add_argument("--hls", default="2023-06-01/2023-08-31", help="HLS period")
    parser.add_argument("--modis", default="2023-07-01/2023-07-31", help="MODIS period")
    parser.add_argument("--dem", default="2000-01-01/2030-12-31", help="DEM period")
    parser.add_argument("--rounds", type=int, default=3, help="runs per engine, alternating")
    parser.add_argument("--threads", type=int, default=2, help="Dask threads per run")
    parser.add_argument("--out", type=Path, help="JSON file for the result")
    parser.add_argument("--one", choices=ENGINES, help=argparse.SUPPRESS)  # a run, in a child
    parser.add_argument("--stac-url", help=argparse.SUPPRESS)
    parser.add_argument("--cubes", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_engine(args.one, args, args.cubes)))
        return

    from kranj_fusion import cpu_model

    from unique_cube.config.pipeline import load_pipeline
    from unique_cube.demo.serve import serve_world

    world = args.world or load_pipeline(args.pipeline).serve_world
    runs: dict[str, list[dict]] = {engine: [] for engine in ENGINES}
    with serve_world(world) as server, tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for engine in ENGINES:
                cubes = Path(tmp) / f"{engine}.npz"
                command = [sys.executable, __file__, "--one", engine, "--stac-url", server.url,
                           "--cubes", str(cubes), "--pipeline", str(args.pipeline),
                           "--hls", args.hls, "--modis", args.modis, "--dem", args.dem,
                           "--threads", str(args.threads)]  # fmt: skip
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise SystemExit(f"{engine} failed:\n{done.stderr[-3000:]}")
                runs[engine].append({"round": round_, **json.loads(done.stdout.splitlines()[-1])})
                print(json.dumps(runs[engine][-1]), flush=True)
        differences = parity(Path(tmp) / "odc-stac.npz", Path(tmp) / "stackstac.npz")
    best = {engine: min(rows, key=lambda r: r["seconds"]) for engine, rows in runs.items()}
    odc, stk = best["odc-stac"], best["stackstac"]
    ratios = {
        "seconds": stk["seconds"] / odc["seconds"],
        "peak_rss": stk["peak_rss_mb"] / odc["peak_rss_mb"],
        "peak_rss_above_start": stk["peak_rss_above_start_mb"] / odc["peak_rss_above_start_mb"],
    }
    for name in odc["loads"]:
        ratios[f"seconds_{name}"] = stk["loads"][name]["seconds"] / odc["loads"][name]["seconds"]
    machine = {"platform": platform.platform(), "cpu": cpu_model(),
               "python": platform.python_version(), "cpus": os.cpu_count()}  # fmt: skip
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "world": str(world),
        "periods": {"hls": args.hls, "modis": args.modis, "dem": args.dem},
        "threads": args.threads,
        "runs": runs,
        "best": best,
        "ratios_stackstac_over_odc_stac": {k: round(v, 3) for k, v in ratios.items()},
        "parity": differences,
    }
    print(json.dumps({k: result[k] for k in ("best", "ratios_stackstac_over_odc_stac")}, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

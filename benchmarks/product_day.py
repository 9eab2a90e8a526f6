"""Seconds and peak memory per product day at two region sizes, in one run.

Runs ``unique-cube run`` for the same days on grids centred on the pipeline's, with sides
``--scales`` times its own (default 0.5 and 1: 12 km and the full demo's 24 km; the demo world
has MODIS over its region only, so a larger grid skips its days). Each size runs in its own
process, so that its peak memory is its own, with a fresh product folder, the pipeline's
trained models, and ``product.window`` / ``product.tile`` from ``--window`` / ``--tile``.
Reports seconds per day and memory at both sizes and their ratios: time should grow with the
area, memory should not grow beyond a window's working set.

    .venv/bin/python benchmarks/product_day.py pipelines/demo-full.yaml --start 2023-06-10 --days 2

The default windows (256 px) and tiles (128 px) are small so that both grids are made of
several windows (4 and 16). Memory is the runner's peak RSS plus the Dask workers' resident
memory at the end (a worker's own peak is not measurable: its ``ru_maxrss`` starts at its
parent's).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml


def _centred_grid(bounds: list[float], resolution: float, scale: float) -> list[float]:
    """A square grid ``scale`` times the side of ``bounds``, on the same centre, its edges on
    the 480 m blocks of the original grid."""
    left, bottom, right, top = bounds
    snap = resolution * 16
    size = round((right - left) * scale / snap) * snap
    cx, cy = (left + right) / 2, (bottom + top) / 2
    x0 = left + round((cx - size / 2 - left) / snap) * snap
    y0 = bottom + round((cy - size / 2 - bottom) / snap) * snap
    return [x0, y0, x0 + size, y0 + size]


def _run(spec: dict, folder: Path, start: str, end: str) -> dict:
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    command = [sys.executable, "-m", "unique_cube.cli", "run", str(path), "--start", start,
               "--end", end]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline")
    parser.add_argument("--start", default="2023-06-10")
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--scales", type=float, nargs=2, default=[0.5, 1.0])
    parser.add_argument("--window", type=int, default=256, help="product.window, px")
    parser.add_argument("--tile", type=int, default=128, help="product.tile, px")
    args = parser.parse_args()

    from unique_cube.config.pipeline import load_pipeline

    load_pipeline(args.pipeline)  # a bad file fails here, with its key
    spec = yaml.safe_load(Path(args.pipeline).read_text())
    start = dt.date.fromisoformat(args.start)
    end = start + dt.timedelta(days=args.days - 1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for scale in args.scales:
            name = f"x{scale:g}"
            variant = json.loads(json.dumps(spec, default=str))
            variant["grid"]["bounds"] = _centred_grid(
                spec["grid"]["bounds"], spec["grid"].get("resolution", 30), scale
            )
            variant["product"].update(output=str(Path(tmp) / name), window=args.window,
                                      tile=args.tile)  # fmt: skip
            folder = Path(tmp) / f"{name}-spec"
            folder.mkdir()
            report = _run(variant, folder, str(start), str(end))
            if not report["counts"].get("done"):
                raise SystemExit(f"{name}: no day was made ({report['counts']}); see its run log")
            left, bottom, right, top = variant["grid"]["bounds"]
            pixels = round((right - left) / 30) * round((top - bottom) / 30)
            side_km = (right - left) / 1000
            results.append({"side_km": side_km, "pixels": pixels, **report})
            print(json.dumps(results[-1]), flush=True)
    small, large = results

    def memory(r: dict) -> float:  # the runner's peak and its Dask workers' memory at the end
        return r["peak_rss_mb"] + r["workers_rss_mb"]

    print(json.dumps({
        "window": args.window, "tile": args.tile,
        "area_ratio": large["pixels"] / small["pixels"],
        "seconds_per_day_ratio": large["seconds_per_day"] / small["seconds_per_day"],
        "memory_ratio": memory(large) / memory(small),
        "runner_peak_ratio": large["peak_rss_mb"] / small["peak_rss_mb"],
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()

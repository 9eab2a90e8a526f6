"""Seconds and peak memory per product day at two region sizes, in one run.

Runs ``unique-cube run`` for the same days on the pipeline's grid and on a centred sub-grid of
half its side (a quarter of the area), each in its own process so that peak memory is its own,
with fresh product folders and the pipeline's trained models. Reports seconds per day and peak
RSS at both sizes and their ratios: time should grow with the area, memory should not grow
beyond the chunk working set.

    .venv/bin/python benchmarks/product_day.py pipelines/demo.yaml --start 2023-06-10 --days 3
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


def _sub_grid(bounds: list[float], resolution: float, fraction: float) -> list[float]:
    left, bottom, right, top = bounds
    size = round((right - left) * fraction / (resolution * 16)) * resolution * 16
    cx, cy = (left + right) / 2, (bottom + top) / 2
    snap = resolution * 16  # stay aligned to the 480 m blocks of the full grid
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
    parser.add_argument("--days", type=int, default=3)
    args = parser.parse_args()

    from unique_cube.pipeline import load_pipeline

    load_pipeline(args.pipeline)  # a bad file fails here, with its key
    spec = yaml.safe_load(Path(args.pipeline).read_text())
    start = dt.date.fromisoformat(args.start)
    end = start + dt.timedelta(days=args.days - 1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fraction in (("half side", 0.5), ("full", 1.0)):
            variant = json.loads(json.dumps(spec, default=str))
            variant["grid"]["bounds"] = _sub_grid(
                spec["grid"]["bounds"], spec["grid"].get("resolution", 30), fraction
            )
            variant["product"]["output"] = str(Path(tmp) / name.replace(" ", "-"))
            folder = Path(tmp) / f"{name.replace(' ', '-')}-spec"
            folder.mkdir()
            report = _run(variant, folder, str(start), str(end))
            left, bottom, right, top = variant["grid"]["bounds"]
            pixels = round((right - left) / 30) * round((top - bottom) / 30)
            results[name] = {"pixels": pixels, **report}
            print(name, json.dumps(results[name]), flush=True)
    small, full = results["half side"], results["full"]

    def memory(r: dict) -> float:  # the runner's peak and its Dask workers' memory at the end
        return r["peak_rss_mb"] + r["workers_rss_mb"]

    print(json.dumps({
        "area_ratio": full["pixels"] / small["pixels"],
        "seconds_per_day_ratio": full["seconds_per_day"] / small["seconds_per_day"],
        "peak_rss_ratio": memory(full) / memory(small),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()

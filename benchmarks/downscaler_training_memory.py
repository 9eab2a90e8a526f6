"""The downscalers' training memory as the training region grows: 1x, 4x and 16x in area.

On the large-region bed (``benchmarks/region_world.py``: synthetic HLS and MODIS over 46 km,
a compact demo world's DEM, land cover and ERA5), ``unique-cube train-downscaler`` trains S2
and the fusion downscaler with the compact world's GPP models on June 2023, each scheme and
size in a fresh process with an empty output folder (no cached pairs): the regions share their
upper-left corner, 384, 768 and 1536 px on a side. The batch is fixed
(``downscale.training_windows`` x ``training_window``² = 9 x 128² px, the 1x region's area):
the 1x region is taken whole, the larger ones as 9 windows drawn where the catalog covers
them. Reports each run's peak RSS (the process's VmHWM), seconds and pairs, and the ratios to
1x; the goal is a peak memory ratio of at most 1.3 at 16x. With ``--whole`` (S2 by default)
the larger grids are also trained on whole, as before training drew windows, for comparison.

    .venv/bin/python benchmarks/downscaler_training_memory.py --world /tmp/w21-world \\
        --models /tmp/d22-out/models
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from region_world import BOUNDS, CRS, DEFAULT_BED, build_region_bed
from tower_scaling import machine, peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
SIDES = {1: 384, 4: 768, 16: 1536}
SCHEMES = ("s2", "fusion")

PIPELINE = """
name: training-memory-{area}x
catalog: demo
serve_world: {bed}
flux: {{directory: {bed}/flux, sites: {bed}/flux/sites.csv}}
gpp:
  train: {{start: 2022-01-01, end: 2022-12-31}}
  modis: {{source: modis-sr, min_clear: 1, gap_fill_days: 16}}
  landsat: {{source: hls-l30, min_clear: 5}}
  weather: era5
  utc_offset_hours: 9
  output: {models}
  threads: 2
grid: {{crs: "{crs}", bounds: [{left}, {bottom}, {right}, {top}], resolution: 30}}
downscale:
  train: {{start: 2023-06-01, end: 2023-06-30}}
  test: {{start: 2023-07-01, end: 2023-07-31}}
  output: {output}
  steps: {steps}
  batch: 8
  patch: 64
  base: 16
  samples: 2
  ddim_steps: 3
  tile: 128
  overlap: 32
  threads: 1
  reference_days: 48
  training_window: 128
  training_windows: {windows}
"""


def pipeline_text(bed: Path, models: Path, area: int, output: Path, steps: int,
                  whole: bool = False) -> str:  # fmt: skip
    """The run's pipeline; ``whole``: with a window budget the grid fits in (the grid taken
    whole, as training did before it drew windows)."""
    left, _, _, top = BOUNDS
    side = SIDES[area] * 30.0
    windows = 9 * area if whole else 9
    return PIPELINE.format(area=area, bed=bed, models=models, crs=CRS, left=left,
                           bottom=top - side, right=left + side, top=top, output=output,
                           steps=steps, windows=windows)  # fmt: skip


def one_run(spec: Path, scheme: str) -> dict:
    """Train ``scheme`` with the pipeline ``spec`` in this process; what it measured."""
    import contextlib
    import io

    from unique_cube.cli import main

    said = io.StringIO()
    began = time.perf_counter()
    with contextlib.redirect_stderr(said):
        code = main(["train-downscaler", str(spec), "--scheme", scheme])
    seconds = time.perf_counter() - began
    if code != 0:
        raise SystemExit(f"train-downscaler {scheme} failed:\n{said.getvalue()[-3000:]}")
    lines = [line for line in said.getvalue().splitlines() if "training " in line]
    return {"scheme": scheme, "seconds": round(seconds, 1), "peak_rss_mb": peak_rss_mb(),
            "said": lines[-2:]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, help="a built compact demo world")
    parser.add_argument("--models", type=Path, help="that world's GPP models (gpp.output)")
    parser.add_argument("--bed", type=Path, default=DEFAULT_BED)
    parser.add_argument("--steps", type=int, default=50, help="diffusion training steps")
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES))
    parser.add_argument("--whole", nargs="*", default=["s2"],
                        help="schemes also trained on the larger grids taken whole (the path "
                             "before training windows), for comparison")  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/downscaler_training_memory.json"
    )
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # pipeline, scheme: a child
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(Path(args.one[0]), args.one[1])))
        return
    if args.world is None or args.models is None:
        parser.error("--world and --models are needed")
    began = time.perf_counter()
    manifest = build_region_bed(args.bed, args.world)
    print(f"region bed: {manifest['region_shape']} px, {manifest['items']} "
          f"({time.perf_counter() - began:.0f} s)", flush=True)  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="training-memory-") as tmp:
        runs = [(area, scheme, False) for area in SIDES for scheme in args.schemes]
        runs += [(area, scheme, True) for area in SIDES if area > 1 for scheme in args.whole]
        for area, scheme, whole in runs:
            name = f"{area}x-{scheme}{'-whole' if whole else ''}"
            output, spec = Path(tmp) / name, Path(tmp) / f"{name}.yaml"
            spec.write_text(pipeline_text(args.bed, args.models, area, output, args.steps, whole))
            command = [sys.executable, __file__, "--one", str(spec), scheme]
            done = subprocess.run(command, capture_output=True, text=True, check=False,
                                  cwd=Path(__file__).parent)  # fmt: skip
            if done.returncode != 0:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            row = {"area": area, "side_px": SIDES[area], "grid": "whole" if whole else "windows",
                   **json.loads(done.stdout.strip().splitlines()[-1])}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    base = {row["scheme"]: row for row in rows if row["area"] == 1}
    ratios: dict[str, dict] = {row["scheme"]: {} for row in rows}
    for row in rows:
        if row["area"] > 1:
            first = base[row["scheme"]]
            key = f"{row['area']}x" + ("" if row["grid"] == "windows" else " taken whole")
            ratios[row["scheme"]][key] = {
                "peak_rss": round(row["peak_rss_mb"] / first["peak_rss_mb"], 2),
                "seconds": round(row["seconds"] / first["seconds"], 2),
            }
    report = {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": machine(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "bed": {"bounds_16x": list(BOUNDS), "crs": CRS, "items": manifest["items"]},
        "batch": {
            "training_window": 128,
            "training_windows": 9,
            "patch": 64,
            "batch": 8,
            "steps": args.steps,
        },
        "rows": rows,
        "ratios_vs_1x": ratios,
        "goal": "peak memory ratio <= 1.3 at 16x",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(ratios, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

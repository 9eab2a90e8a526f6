"""Peak memory and seconds of one product day's 30 m part on large grids, in one run.

A real day needs MODIS over the whole grid, which the demo world has over its region
only; this benchmark therefore starts after GPP_M: a smooth synthetic GPP_M on grids of
``--sides`` pixels, then exactly the product's windowed path (``product.day.make_windows``: bilinear
GPP_M per window, the grid's tile plan, a real S1 downscaler sampled in this process, blending,
QA, the Zarr region writes and staged COGs of ``store.DayWriter``, COG assembly). The
downscaler is a small network trained for a few steps on random data, with 1 member and 1
DDIM step, so that the largest grid runs in minutes on 2 cores; the memory that matters is
the runner's, which does not depend on the weights. Each size runs in its own process.

    .venv/bin/python benchmarks/day_memory.py --sides 1024 2048 4096 --window 1024

Reports pixels, seconds and the peak RSS for each size, and the ratios of the largest to the
smallest: time should grow with the area, memory should stay near one window's working set.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_size(side: int, window: int, tile: int, folder: Path) -> dict:
    import numpy as np

    from unique_cube.config.pipeline import GridSpec, load_pipeline
    from unique_cube.downscale.conditions import condition_stack
    from unique_cube.downscale.sampling import sample_tile
    from unique_cube.downscale.train import train
    from unique_cube.grid import COARSE_FACTOR, coarse_geobox
    from unique_cube.product.day import DayPlan, RunContext, day_layout, make_windows
    from unique_cube.product.models import ProductModels
    from unique_cube.product.static import StaticLayers
    from unique_cube.product.store import ProductStore

    rng = np.random.default_rng(0)
    gpp_m = rng.uniform(2, 8, (4, 32, 32)).astype("float32")
    conditions = np.stack([condition_stack(g, None, "s1") for g in gpp_m])
    ckpt, _ = train(conditions, gpp_m, scheme="s1", static_info={}, steps=2, batch=2,
                    patch=16, base=8, schedule_steps=50)  # fmt: skip
    pipeline = load_pipeline(ROOT / "pipelines" / "demo.yaml")
    left, top = 336420.0, 4186290.0
    grid = GridSpec("EPSG:32652", (left, top - 30 * side, left + 30 * side, top), 30.0)
    product = dataclasses.replace(pipeline.product, scheme="s1", window=window, tile=tile,
                                  overlap=32, samples=1, ddim_steps=1,
                                  output=str(folder))  # fmt: skip
    pipeline = dataclasses.replace(pipeline, grid=grid, product=product)
    geobox = grid.geobox
    coarse = coarse_geobox(geobox)
    yy, xx = np.mgrid[0 : coarse.shape[0], 0 : coarse.shape[1]]
    field = (5 + 3 * np.sin(yy / 7.0) * np.cos(xx / 11.0)).astype("float32")
    day = dt.date(2023, 6, 10)
    plan = DayPlan(day, field, field, np.zeros(field.shape, "uint16"), None, "s1",
                    {"seed": 1, "scheme": "s1"})  # fmt: skip
    models = ProductModels({}, folder / "card.json", {}, {"s1": ckpt})

    def sampler(ckpt, requests):
        return [sample_tile(ckpt, r.condition, samples=r.samples, ddim_steps=r.ddim_steps,
                            seed=r.seed, ty=r.ty, tx=r.tx) for r in requests]  # fmt: skip

    store = ProductStore(folder, geobox, coarse)
    layout = day_layout(pipeline)
    run = RunContext(pipeline, models, StaticLayers({}, {}), layout, sampler)
    began = time.perf_counter()
    with store.open_day(day, {"date": day.isoformat()}) as writer:
        make_windows(run, plan, writer.write)
        writer.finish(plan.gpp_m)
        store.commit(writer, {"id": day.isoformat()}, {"day": day.isoformat()})
    seconds = time.perf_counter() - began
    assert COARSE_FACTOR == 16
    return {
        "side": side,
        "pixels": side * side,
        "windows": len(layout.windows),
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a size, in a child
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(one_size(args.one, args.window, args.tile, Path(tmp))))
        return
    rows = []
    for side in args.sides:
        command = [sys.executable, __file__, "--one", str(side), "--window", str(args.window),
                   "--tile", str(args.tile)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"side {side} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    small, large = rows[0], rows[-1]
    print(json.dumps({
        "window": args.window, "tile": args.tile,
        "area_ratio": large["pixels"] / small["pixels"],
        "seconds_ratio": large["seconds"] / small["seconds"],
        "peak_rss_ratio": large["peak_rss_mb"] / small["peak_rss_mb"],
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()

"""Chunked GPP prediction on a Dask LocalCluster vs raw ``Booster.predict`` on the same data.

One worker process with N threads runs :func:`unique_cube.gpp.predict` over a persisted,
chunked feature cube (the model loaded once per worker from its path); the raw run calls
``Booster.predict`` on the same rows as one NumPy array with N threads. The report is the
throughput ratio chunked / raw, measured in one run (goal: >= 0.95).

    .venv/bin/python benchmarks/gpp_predict_throughput.py [--threads 2] [--pixels 1024]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import pandas as pd
import xarray as xr


def _model(folder: str, threads: int) -> str:
    from unique_cube.gpp.features import FEATURES
    from unique_cube.gpp.train import train

    rng = np.random.default_rng(0)
    n = 20_000
    table = pd.DataFrame({f: rng.normal(size=n) for f in FEATURES})
    table["gpp"] = 5 + 2 * table["ndvi"] + np.sin(table["tair_local"]) + rng.normal(0, 0.3, n)
    table["site"] = [f"S{i % 40:02d}" for i in range(n)]
    table["date"] = pd.Timestamp("2020-01-01")
    table["igbp"] = "DBF"
    sites = pd.DataFrame({"site": [f"S{i:02d}" for i in range(40)], "lat": np.linspace(37, 38, 40),
                          "lon": np.linspace(127, 128, 40)})  # fmt: skip
    train(table, sites, folder, "bench", learners=["lightgbm"], n_folds=2, threads=threads)
    return f"{folder}/bench.card.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pixels", type=int, default=1024, help="side of each day's map")
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from dask.distributed import Client, LocalCluster

    from unique_cube.gpp.model import GppModel
    from unique_cube.gpp.predict import predict

    with tempfile.TemporaryDirectory() as folder:
        card = _model(folder, args.threads)
        model = GppModel(card)
        rng = np.random.default_rng(1)
        shape = (args.days, args.pixels, args.pixels)
        data = {f: rng.normal(size=shape).astype("float32") for f in model.features}
        rows = np.stack([data[f].ravel() for f in model.features], axis=1).astype("float64")

        raw = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model._fitted.booster.predict(rows, num_threads=args.threads)
            raw.append(time.perf_counter() - start)

        cluster = LocalCluster(n_workers=1, threads_per_worker=args.threads, processes=True,
                               dashboard_address=None)  # fmt: skip
        with cluster, Client(cluster) as client:
            ds = xr.Dataset({f: (("time", "y", "x"), v) for f, v in data.items()})
            ds = ds.chunk({"time": 1, "y": args.pixels // 2, "x": args.pixels}).persist()
            client.wait_for_workers(1)
            predict(ds, card).gpp.compute()  # warm-up: the worker loads the model once
            chunked = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                predict(ds, card).gpp.compute()
                chunked.append(time.perf_counter() - start)
    pixels = int(np.prod(shape))
    result = {
        "pixels": pixels,
        "threads": args.threads,
        "raw_booster_s": min(raw),
        "chunked_localcluster_s": min(chunked),
        "raw_pixels_per_s": pixels / min(raw),
        "chunked_pixels_per_s": pixels / min(chunked),
        "throughput_ratio_chunked_over_raw": min(raw) / min(chunked),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

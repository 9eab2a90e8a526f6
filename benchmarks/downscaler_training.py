"""Downscaler training settings vs test RMSE, and what a per-pixel regressor makes of its inputs.

Trains one scheme on the pipeline's cached training pairs with the settings given (each
``--runs`` entry is a JSON object of :func:`unique_cube.downscale.train` keywords over the
pipeline's own), samples the evaluation's test dates (the ``max_eval_dates`` clearest) as
``evaluate-downscaler`` does, and prints RMSE vs GPP_L per date and overall, with the training
seconds. ``--ceiling`` also fits LightGBM per pixel on the scheme's condition layers plus their
16-pixel (480 m) means and their difference from those means, optionally with the day of year:
a deterministic reference for what the inputs explain. The pairs are made and cached in the
downscaler folder on first use (minutes). Run where the pipeline's relative paths resolve:

    .venv/bin/python benchmarks/downscaler_training.py pipelines/demo.yaml --scheme s2 \
        --runs '{}' '{"steps": 2000}' --ceiling
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import uniform_filter

from unique_cube.config.pipeline import load_pipeline
from unique_cube.demo.serve import served
from unique_cube.downscale.conditions import GPP_SCALE, apply_static_normalisation, normalise_static
from unique_cube.downscale.pairs import cached_pairs, pair_conditions, static_and_types
from unique_cube.downscale.sampling import downscale
from unique_cube.downscale.train import train
from unique_cube.inputs.search import open_catalog


def rmse_by_date(predicted: np.ndarray, target: np.ndarray) -> tuple[float, list[float]]:
    """Overall and per-date RMSE over the pixels where both are finite."""
    ok = np.isfinite(predicted) & np.isfinite(target)
    error = np.where(ok, predicted - target, 0.0)
    overall = float(np.sqrt((error**2).sum() / ok.sum()))
    per_date = np.sqrt((error**2).sum(axis=(1, 2)) / np.maximum(ok.sum(axis=(1, 2)), 1))
    return overall, [round(float(v), 3) for v in per_date]


def pixel_table(conditions: np.ndarray, dates, target: np.ndarray, day_of_year: bool):
    """Rows of (condition layers, their 16-px means, the difference[, day of year]) → GPP_L."""
    blocks = []
    for condition, date in zip(conditions, dates, strict=True):
        smooth = np.stack([uniform_filter(layer, 16) for layer in condition])
        layers = [condition, smooth, condition - smooth]
        if day_of_year:
            layers.append(np.full((1, *condition.shape[1:]), date.dayofyear, "float32"))
        blocks.append(np.concatenate(layers).reshape(-1, condition[0].size).T)
    return np.concatenate(blocks), target.reshape(-1)


def ceiling(train_c, train_pairs, test_c, test_pairs, day_of_year: bool, seed: int) -> dict:
    import lightgbm

    x, y = pixel_table(train_c, train_pairs.dates, train_pairs.target, day_of_year)
    keep = np.flatnonzero(np.isfinite(y))
    keep = np.random.default_rng(seed).choice(keep, min(keep.size, 600_000), replace=False)
    start = time.perf_counter()
    params = {"objective": "regression", "learning_rate": 0.05, "num_leaves": 63,
              "verbose": -1, "num_threads": torch.get_num_threads(), "seed": seed}  # fmt: skip
    # Like the network, it learns the residual over bilinear GPP_M (layer 0, / GPP_SCALE).
    residual = y[keep] - x[keep, 0] * GPP_SCALE
    booster = lightgbm.train(params, lightgbm.Dataset(x[keep], residual), 400)
    xt, _ = pixel_table(test_c, test_pairs.dates, test_pairs.target, day_of_year)
    predicted = np.maximum(booster.predict(xt) + xt[:, 0] * GPP_SCALE, 0.0)
    overall, per_date = rmse_by_date(predicted.reshape(test_pairs.target.shape), test_pairs.target)
    seconds = round(time.perf_counter() - start, 1)
    return {"rmse": round(overall, 3), "per_date": per_date, "day_of_year": day_of_year,
            "train_rows": int(keep.size), "seconds": seconds}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline")
    parser.add_argument("--scheme", choices=["s1", "s2"], default="s2")
    parser.add_argument("--runs", nargs="*", default=["{}"], help="JSON train() overrides")
    parser.add_argument("--ceiling", action="store_true", help="also the per-pixel LightGBM")
    args = parser.parse_args()

    pipeline = load_pipeline(args.pipeline)
    spec = pipeline.downscale
    with served(pipeline) as pipeline, open_catalog(pipeline) as catalog:
        raw, names, types = static_and_types(catalog, pipeline.grid.geobox)
        train_pairs = cached_pairs(pipeline, catalog, spec.train, types=types)
        test_pairs = cached_pairs(pipeline, catalog, spec.test, clearest=spec.max_eval_dates)
    static, info = normalise_static(raw, names) if args.scheme == "s2" else (None, {})
    train_pairs = _valid_pairs(train_pairs, ~np.isnan(train_pairs.gpp_m_30m).all(axis=(1, 2)))
    train_c = pair_conditions(train_pairs, static, args.scheme)
    test_static = apply_static_normalisation(raw, info) if static is not None else None
    test_c = pair_conditions(test_pairs, test_static, args.scheme)
    bilinear, bilinear_dates = rmse_by_date(test_pairs.gpp_m_30m, test_pairs.target)
    report = {"scheme": args.scheme, "dates": [str(d.date()) for d in test_pairs.dates],
              "train_pairs": len(train_pairs.dates),
              "bilinear": {"rmse": round(bilinear, 3), "per_date": bilinear_dates}}  # fmt: skip
    evaluation = Path(spec.output) / "evaluation.json"
    if evaluation.exists():  # the pure-pixel figure of the last evaluate-downscaler, for reference
        table = json.loads(evaluation.read_text())["table"]["vs_gpp_l"]
        if "pure_pixel" in table:
            report["pure_pixel_last_evaluation"] = round(table["pure_pixel"]["rmse"], 3)
    report["runs"] = []
    for text in args.runs:
        overrides = json.loads(text)
        settings = {"steps": spec.steps, "batch": spec.batch, "patch": spec.patch,
                    "base": spec.base, "seed": spec.seed, **overrides}  # fmt: skip
        start = time.perf_counter()
        ckpt, losses = train(train_c, train_pairs.target, scheme=args.scheme,
                             static_info=info, **settings)  # fmt: skip
        seconds = time.perf_counter() - start
        predicted = np.stack([
            downscale(ckpt, c, samples=spec.samples, ddim_steps=spec.ddim_steps, tile=spec.tile,
                      overlap=spec.overlap, seed=spec.seed + i).mean(axis=0)
            for i, c in enumerate(test_c)
        ])  # fmt: skip
        overall, per_date = rmse_by_date(predicted, test_pairs.target)
        report["runs"].append({"settings": settings, "rmse": round(overall, 3),
                               "per_date": per_date, "train_seconds": round(seconds, 1),
                               "final_loss": round(float(np.mean(losses[-100:])), 4)})  # fmt: skip
        print(json.dumps(report["runs"][-1]), flush=True)
    if args.ceiling:
        report["ceiling"] = [
            ceiling(train_c, train_pairs, test_c, test_pairs, doy, spec.seed)
            for doy in (False, True)
        ]
    print(json.dumps(report, indent=1))


def _valid_pairs(pairs, valid: np.ndarray):
    """The pairs with a GPP_M map (those the conditions were made for)."""
    from dataclasses import replace

    keep = np.flatnonzero(valid)
    return replace(pairs, dates=[pairs.dates[i] for i in keep], target=pairs.target[valid],
                   gpp_m=pairs.gpp_m[valid], gpp_m_30m=pairs.gpp_m_30m[valid])  # fmt: skip


if __name__ == "__main__":
    main()

"""DDIM steps vs RMSE vs seconds, against the full ancestral DDPM chain, for one trained scheme.

Uses the pipeline's test pairs of every clear-enough test date (made and cached in the
downscaler folder on first use, which takes minutes) and a square crop of the clearest of them
or of ``--date``, so the full 1000-step chain stays affordable on a CPU. RMSE is against GPP_L
on the crop's clear pixels, of the ensemble mean, all measured in one run.

    .venv/bin/python benchmarks/ddim_steps.py pipelines/demo-full.yaml --scheme s2 --crop 256
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from unique_cube.config.pipeline import load_pipeline
from unique_cube.demo.serve import served
from unique_cube.downscale.checkpoint import load_checkpoint
from unique_cube.downscale.conditions import (
    GPP_SCALE,
    RESIDUAL_CLIP,
    apply_static_normalisation,
    condition_stack,
)
from unique_cube.downscale.pairs import cached_pairs
from unique_cube.downscale.sampling import as_noise_predictor, downscale
from unique_cube.downscale.schedule import ddpm_sample
from unique_cube.inputs.search import open_catalog
from unique_cube.inputs.static import static_layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline")
    parser.add_argument("--scheme", choices=["s1", "s2"], default="s2")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 25, 50, 100])
    parser.add_argument("--date", help="test date to crop (YYYY-MM-DD; default the clearest)")
    args = parser.parse_args()

    pipeline = load_pipeline(args.pipeline)
    spec = pipeline.downscale
    ckpt = load_checkpoint(Path(spec.output) / f"downscaler_{args.scheme}.pt", args.scheme)
    with served(pipeline) as pipeline, open_catalog(pipeline) as catalog:
        pairs = cached_pairs(pipeline, catalog, spec.test)
        static = None
        if args.scheme == "s2":
            raw, _ = static_layers(catalog, pipeline.grid.geobox)
            static = apply_static_normalisation(raw, ckpt.static)
    best = int(np.argmax(np.isfinite(pairs.target).mean(axis=(1, 2))))
    if args.date:
        dates = [str(d.date()) for d in pairs.dates]
        if args.date not in dates:
            parser.error(f"--date {args.date} is not a test pair date; those are {dates}")
        best = dates.index(args.date)
    c = args.crop
    window = (slice(0, c), slice(0, c))
    condition = condition_stack(pairs.gpp_m_30m[best], static, args.scheme)[(slice(None), *window)]
    target = pairs.target[best][window]
    clear = np.isfinite(target)

    def rmse(members: np.ndarray) -> float:
        mean = members.mean(axis=0)
        return float(np.sqrt(((mean[clear] - target[clear]) ** 2).mean()))

    rows = []
    for steps in args.steps:
        start = time.perf_counter()
        members = downscale(ckpt, condition, samples=args.samples, ddim_steps=steps,
                            tile=c, overlap=0, seed=0)  # fmt: skip
        rows.append({"sampler": f"ddim-{steps}", "steps": steps, "rmse": rmse(members),
                     "seconds": time.perf_counter() - start})  # fmt: skip

    start = time.perf_counter()
    denoiser = as_noise_predictor(ckpt.model, ckpt.schedule, ckpt.prediction)
    with torch.no_grad():
        residual = ddpm_sample(
            denoiser, ckpt.schedule, (args.samples, 1, c, c),
            torch.from_numpy(condition)[None].expand(args.samples, -1, -1, -1),
            clip=RESIDUAL_CLIP, generator=torch.Generator().manual_seed(0),
        )[:, 0].numpy()  # fmt: skip
    full = np.maximum((condition[0][None] + residual) * GPP_SCALE, 0.0)
    full_rmse = rmse(full)
    rows.append({"sampler": f"ddpm-{ckpt.schedule.steps}", "steps": ckpt.schedule.steps,
                 "rmse": full_rmse, "seconds": time.perf_counter() - start})  # fmt: skip
    bilinear = float(np.sqrt(((condition[0] * GPP_SCALE - target)[clear] ** 2).mean()))
    for row in rows:
        row["rmse_vs_full_chain"] = row["rmse"] / full_rmse
    print(json.dumps({"date": str(pairs.dates[best].date()), "crop": c, "scheme": args.scheme,
                      "samples": args.samples, "bilinear_rmse": bilinear, "rows": rows},
                     indent=1))  # fmt: skip


if __name__ == "__main__":
    main()

"""``unique-cube demo``: the main job end to end on the embedded demo world.

World → GPP models → downscalers (S1, S2, pure-pixel) → evaluation → the daily product over
the pipeline's ``product.period`` → report. Every stage is the product's own command, run
on a pipeline whose catalog is the demo world served on 127.0.0.1; each stage is reused when
its outputs are present and were made from the same inputs and settings (a stamp beside them),
so a second run only checks and reports.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from unique_cube.config.pipeline import Pipeline, load_pipeline
from unique_cube.downscale.train import train_downscaler
from unique_cube.evaluation import evaluate
from unique_cube.files import sha256_file
from unique_cube.gpp.train import train_gpp
from unique_cube.product.run import product_days, run
from unique_cube.report import write_report

__all__ = ["demo_pipeline", "run_demo"]


#: The downscale settings a trained checkpoint depends on (the others only affect inference).
_TRAINING_FIELDS = ("train", "min_clear_fraction", "steps", "batch", "patch", "base", "seed",
                    "reference_min_clear", "reference_days", "calibration_fraction", "samples",
                    "ddim_steps", "tile", "overlap")  # fmt: skip


#: The downscalers the demo trains: the product's fusion, the paper's S1/S2, the baseline.
_DOWNSCALERS = (("fusion", "downscaler_fusion.pt"), ("s1", "downscaler_s1.pt"),
                ("s2", "downscaler_s2.pt"), ("pure_pixel", "pure_pixel.pt"))  # fmt: skip


def demo_pipeline(path: str | Path, world: str | Path, output: str | Path) -> Pipeline:
    """The pipeline file with its world and output folders moved to ``world`` and ``output``
    (the file names ``demo-world`` and ``demo-output``; both are arguments of the command)."""
    pipeline = load_pipeline(path)
    world, output = str(world), str(output)

    def moved(value: str | None, old: str, new: str) -> str | None:
        if value is None:
            return None
        return new + value[len(old) :] if value == old or value.startswith(old + "/") else value

    old_world = pipeline.serve_world or "demo-world"
    flux = dataclasses.replace(
        pipeline.flux,
        directory=moved(pipeline.flux.directory, old_world, world),
        sites=moved(pipeline.flux.sites, old_world, world),
    )
    gpp = dataclasses.replace(
        pipeline.gpp, output=moved(pipeline.gpp.output, "demo-output", output)
    )
    changes: dict = {"serve_world": world, "flux": flux, "gpp": gpp}
    if pipeline.downscale is not None:
        changes["downscale"] = dataclasses.replace(
            pipeline.downscale,
            output=moved(pipeline.downscale.output, "demo-output", output),
            truth=moved(pipeline.downscale.truth, old_world, world),
        )
    if pipeline.product is not None:
        changes["product"] = dataclasses.replace(
            pipeline.product, output=moved(pipeline.product.output, "demo-output", output)
        )
    if pipeline.evaluation is not None:
        changes["evaluation"] = dataclasses.replace(
            pipeline.evaluation, output=moved(pipeline.evaluation.output, "demo-output", output)
        )
    return dataclasses.replace(pipeline, **changes)


def _stamp(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, default=str, sort_keys=True).encode()).hexdigest()


def _stage(label: str, doing: str, stamp_path: Path, stamp: str, outputs: list[Path], make,
           say) -> None:  # fmt: skip
    """Run ``make()`` unless ``outputs`` exist and were made with the same ``stamp`` (the
    stamp is written only once ``make`` has succeeded)."""
    fresh = stamp_path.exists() and stamp_path.read_text().strip() == stamp
    if fresh and all(p.exists() for p in outputs):
        say(f"{label}: reusing {outputs[0] if len(outputs) == 1 else stamp_path.parent}")
        return
    say(f"{label}: {doing}")
    make()
    stamp_path.write_text(stamp)


def run_demo(
    pipeline: Pipeline,
    manifest: dict,
    say: Callable[[str], None],
    *,
    dashboard: str | None = None,
) -> dict:
    """Stages 2–6 of the demo on a built world (``manifest``); returns the metrics."""
    world_id = [manifest.get(k) for k in ("size", "seed", "generator_version", "created")]
    models = Path(pipeline.gpp.output)
    # The card format is part of the stamp: models whose cards lack what `run` checks retrain.
    stamp = _stamp(world_id, dataclasses.asdict(pipeline.gpp), dataclasses.asdict(pipeline.flux),
                   "card-with-model-sha256")  # fmt: skip
    outputs = [
        models / f"gpp_{m}.{e}" for m in ("modis", "landsat") for e in ("model", "card.json")
    ]
    outputs.append(models / "cv_report.json")
    began = time.perf_counter()
    _stage("[2/6] GPP models", "training on the towers (20-fold spatial CV)", models / ".stamp",
           stamp, outputs, lambda: train_gpp(pipeline, say=say), say)  # fmt: skip
    say(f"      ({time.perf_counter() - began:.0f} s)")

    spec = pipeline.downscale
    folder = Path(spec.output)
    model_hash = "".join(sha256_file(models / f"gpp_{m}.model") for m in ("landsat", "modis"))
    training = {k: getattr(spec, k) for k in _TRAINING_FIELDS}
    stamp = _stamp(model_hash, training, dataclasses.asdict(pipeline.grid))
    began = time.perf_counter()
    for scheme, name in _DOWNSCALERS:
        _stage(f"[3/6] downscaler {scheme}", "training", folder / f".{name}.stamp", stamp,
               [folder / name], lambda s=scheme: train_downscaler(pipeline, s, say=say),
               say)  # fmt: skip
    say(f"      ({time.perf_counter() - began:.0f} s)")

    checkpoints = [folder / name for _, name in _DOWNSCALERS]
    evaluation = pipeline.evaluation
    stamp = _stamp(
        [sha256_file(p) for p in checkpoints],
        dataclasses.asdict(spec),
        dataclasses.asdict(evaluation),
        dataclasses.asdict(pipeline.product),
    )
    out = Path(evaluation.output)
    began = time.perf_counter()
    _stage("[4/6] evaluation",
           f"on the test year: every clear date (bilinear, fusion, S1, S2, pure-pixel oracle), the "
           f"daily product on 1 day in {evaluation.daily_every}, strata, spatial hold-out, "
           "the towers inside the region",
           out / ".stamp", stamp, [out / "evaluation.json"],
           lambda: evaluate(pipeline, say=say), say)  # fmt: skip
    say(f"      ({time.perf_counter() - began:.0f} s)")

    product = pipeline.product
    days = product_days(product.period.start, product.period.end)
    say(f"[5/6] daily product {days[0]}..{days[-1]} → {product.output}")
    if dashboard:
        say(f"      Dask dashboard: {dashboard}")
    began = time.perf_counter()
    run(pipeline, days, say=say)
    say(f"      ({time.perf_counter() - began:.0f} s)")

    report = Path(product.output).parent / "report"
    say(f"[6/6] report → {report}")
    return write_report(pipeline, days, report)

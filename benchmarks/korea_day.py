"""A Korea product day's throughput: the shipped Korea configuration measured here, extrapolated.

From ``pipelines/korea-daily.yaml``: the grid, its tile plan (``product.tile``,
``product.overlap``) and windows (``product.window``), ``product.samples`` and
``product.ddim_steps``, and the network ``train-downscaler`` builds for the fusion scheme
(``downscale.base`` channels, :func:`~unique_cube.downscale.fit.train`'s channel multipliers,
one condition layer per fusion feature plus the mean and the reference mask; the land-cover
features are every WorldCover class of the catalog, an upper bound) with random weights.
Measured on this machine:

* seconds per tile of :func:`~unique_cube.downscale.sampling.sample_tile` on a tile of the
  real size, for each ``--shapes`` (members x DDIM steps) and ``--variants`` (``fp32`` or
  ``bf16`` autocast, ``-nchw`` instead of channels-last, ``-compile`` for torch.compile). On a
  CPU the shipped 8 x 10 takes minutes, so fewer forwards are measured and scaled linearly
  (members x steps forwards; the shapes check it); on a GPU the shipped shape is measured;
* the non-sampling cost of a window: :func:`~unique_cube.product.day.window_arrays`, with
  the sampler, the reference store and the static layers replaced by arrays in memory
  (fusion features, the LightGBM mean, the conditions, the blending, the calibration, the
  QA), on the window of largest extent when the grid is cut in ``--window-size`` windows
  (on a CPU 256 px, a 960² px extent: the shipped 2048 px window's, 2752² px, takes minutes
  of LightGBM on 2 cores), scaled to the day by the area of every shipped window's extent.

The FLOPs of one UNet forward on a tile are counted (FlopCounterMode on the meta device) and
the time of a day on one H100 at ``--h100-efficiency`` of its dense bf16 rate is calculated:
a floor, not a measurement.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. .venv/bin/python benchmarks/korea_day.py
    PYTHONPATH=. .venv/bin/python benchmarks/korea_day.py --device cuda   # on a GPU machine

``OMP_WAIT_POLICY=PASSIVE`` on a shared, oversubscribed machine: with OpenMP's spinning
threads, fitting the stand-in LightGBM mean (30 rounds, 20 000 rows) took 29-38 s at load
average 8.8 on 2 cores instead of 0.3 s.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import inspect
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from unique_cube.config.catalog import load_catalog
from unique_cube.config.pipeline import load_pipeline
from unique_cube.downscale.checkpoint import Checkpoint
from unique_cube.downscale.fit import train
from unique_cube.downscale.fusion import DYNAMIC_FEATURES, TERRAIN_FEATURES, FusionMean
from unique_cube.downscale.network import ConditionalUNet
from unique_cube.downscale.reference import Reference
from unique_cube.downscale.sampling import sample_tile
from unique_cube.downscale.schedule import NoiseSchedule
from unique_cube.downscale.tiling import ResidualCache, tile_plan
from unique_cube.grid import COARSE_FACTOR, grid_latitude
from unique_cube.product.day import DayPlan, RunContext, day_layout, window_arrays

ROOT = Path(__file__).resolve().parents[1]

#: Environment variables that change how the threads of torch and LightGBM behave.
THREAD_ENV = ("OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "TORCH", "CUDA_VISIBLE")

#: NVIDIA H100 SXM5 datasheet: 1 979 TFLOPS bf16 "with sparsity", half of it dense.
H100_BF16_DENSE_TFLOPS = 989.4


@dataclasses.dataclass(frozen=True)
class Variant:
    """How the network runs: ``fp32`` or ``bf16`` (autocast), then ``-nchw``, ``-compile``."""

    name: str
    bf16: bool
    channels_last: bool
    compile: bool


def variant(text: str) -> Variant:
    first, *rest = text.split("-")
    if first not in ("fp32", "bf16") or any(part not in ("nchw", "compile") for part in rest):
        raise argparse.ArgumentTypeError(f"{text!r}: fp32 or bf16, then -nchw and/or -compile")
    return Variant(text, first == "bf16", "nchw" not in rest, "compile" in rest)


def shape(text: str) -> tuple[int, int]:
    members, _, steps = text.partition("x")
    if not (members.isdigit() and steps.isdigit() and int(members) and int(steps)):
        raise argparse.ArgumentTypeError(f"{text!r}: MEMBERSxSTEPS, e.g. 8x1")
    return int(members), int(steps)


def korea_layout(pipeline) -> dict:
    """The day's grid, tiles and windows as the product cuts them."""
    spec = pipeline.product
    height, width = pipeline.grid.geobox.shape
    layout = day_layout(pipeline)
    plan = tile_plan(height, width, tile=spec.tile, overlap=spec.overlap)
    areas = [e.shape[0] * e.shape[1] for e in layout.extents]
    largest = int(np.argmax(areas))
    return {"layout": layout, "largest": largest, "summary": {
        "grid_px": [height, width], "pixels": height * width, "tile": spec.tile,
        "overlap": spec.overlap, "tiles_per_day": len(plan),
        "tile_grid": [max(t.ty for t in plan) + 1, max(t.tx for t in plan) + 1],
        "sampled_px_per_grid_px": len(plan) * spec.tile**2 / (height * width),
        "window": spec.window, "windows": len(layout.windows),
        "extents_px_per_grid_px": sum(areas) / (height * width),
        "largest_window": dataclasses.asdict(layout.windows[largest]),
        "largest_extent": dataclasses.asdict(layout.extents[largest]),
        "samples": spec.samples, "ddim_steps": spec.ddim_steps}}  # fmt: skip


def fusion_network(pipeline, seed: int) -> tuple[Checkpoint, list[str]]:
    """What ``train-downscaler`` builds for the fusion scheme, random weights; its features."""
    classes = load_catalog(pipeline.catalog).source("worldcover").classes.values()
    features = [*DYNAMIC_FEATURES, *TERRAIN_FEATURES, *(f"lc_{c}" for c in classes)]
    torch.manual_seed(seed)
    mults = inspect.signature(train).parameters["mults"].default
    model = ConditionalUNet(len(features) + 2, base=pipeline.downscale.base, mults=mults)
    # A trained output layer is not zero (an untrained one makes every step trivial).
    torch.nn.init.normal_(model.out[-1].weight, std=0.02)
    model.eval()
    n = len(features)
    info = {"features": features, "feature_mean": [0.0] * n, "feature_std": [1.0] * n,
            "ranges": [[-1e6, 1e6]] * n, "residual_std": 1.5, "residual_weight": 1.0,
            "spread_scale": 1.0, "reference_days": pipeline.downscale.reference_days}  # fmt: skip
    normalisation = {"variable": "gpp", "units": "g m-2 day-1", "scale": 1.5,
                     "non_negative": True}  # fmt: skip
    ckpt = Checkpoint(model, NoiseSchedule.make("cosine", 1000), "fusion", {}, {}, "x0",
                      normalisation, info)  # fmt: skip
    return ckpt, features


def unet_flops(config: dict, tile: int) -> dict:
    """FLOPs (a multiply-add is 2) of one forward of one member on a ``tile``² tile."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = ConditionalUNet(
            config["cond_channels"], base=config["base"], mults=tuple(config["mults"]),
            time_dim=config["time_dim"],
        )  # fmt: skip
        x = torch.zeros(1, 1, tile, tile)
        cond = torch.zeros(1, config["cond_channels"], tile, tile)
        t = torch.zeros(1, dtype=torch.long)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, t, cond)
    by_op = {str(op).split(".")[-1]: n for op, n in counter.get_flop_counts()["Global"].items()}
    total = counter.get_total_flops()
    return {
        "tile": tile,
        "flops_per_forward": total,
        "flops_per_pixel": total / tile**2,
        "by_op": by_op,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _reset_peak() -> None:
    """Linux ≥ 4.0: ``VmHWM`` starts afresh at the resident memory now."""
    Path("/proc/self/clear_refs").write_text("5")


def time_sampling(ckpt: Checkpoint, var: Variant, shapes, *, device: str, tile: int,
                  repeats: int, seed: int) -> tuple[dict, dict]:  # fmt: skip
    """Seconds and peak memory of ``sample_tile`` for each shape; and the residuals."""
    model = copy.deepcopy(ckpt.model).to(device)
    model.use_memory_format(torch.channels_last if var.channels_last else torch.contiguous_format)
    net = torch.compile(model) if var.compile else model
    run = dataclasses.replace(ckpt, model=net)
    condition = np.random.default_rng(seed).normal(size=(model.config["cond_channels"], tile, tile))
    condition = condition.astype("float32")
    cuda = device.startswith("cuda")

    def sample(samples: int, steps: int) -> np.ndarray:
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=var.bf16):
            return sample_tile(run, condition, samples=samples, ddim_steps=steps, seed=seed,
                               ty=0, tx=0, device=device)  # fmt: skip

    # A first call of each batch size sets oneDNN/cuDNN up (and compiles): an actor pays it
    # once, not per tile (on 2 CPU cores a first 8 x 1 took 35.6 s, the next 8 x 2 55.1 s).
    began = time.perf_counter()
    for samples in sorted({s for s, _ in shapes}):
        sample(samples, 1)
    row = {"variant": var.name, **dataclasses.asdict(var),
           "warmup_seconds": round(time.perf_counter() - began, 2), "shapes": []}  # fmt: skip
    residuals = {}
    for samples, steps in shapes:
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        _reset_peak()
        start_rss = _rss_mb("VmRSS")
        seconds = []
        for _ in range(repeats):
            began = time.perf_counter()
            residuals[(samples, steps)] = sample(samples, steps)  # .cpu(): synchronised
            seconds.append(round(time.perf_counter() - began, 3))
        best = min(seconds)
        measured = {"samples": samples, "ddim_steps": steps, "forwards": samples * steps,
                    "seconds": seconds, "seconds_best": best,
                    "seconds_per_member_step": best / (samples * steps),
                    "peak_rss_mb_above_start": round(_rss_mb("VmHWM") - start_rss, 1)}  # fmt: skip
        if cuda:
            measured["gpu_max_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            measured["gpu_max_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
        row["shapes"].append(measured)
        print(json.dumps({"variant": var.name, **measured}), flush=True)
    return row, residuals


def per_tile(row: dict, samples: int, steps: int) -> None:
    """The shipped tile's seconds from the measured shape closest to it: the shipped shape
    itself, else the shipped members (x steps), else the most forwards (x members x steps);
    and how the seconds grew between the shapes that differ in members or in steps only."""
    shapes = row["shapes"]
    exact = [s for s in shapes if (s["samples"], s["ddim_steps"]) == (samples, steps)]
    batch = [s for s in shapes if s["samples"] == samples]
    basis = max(exact or batch or shapes, key=lambda s: s["forwards"])
    row["seconds_per_tile"] = basis["seconds_per_member_step"] * samples * steps
    row["seconds_per_tile_from"] = (
        f"{basis['samples']} x {basis['ddim_steps']} measured"
        + ("" if exact else f", scaled x {samples * steps / basis['forwards']:g} to "
                            f"{samples} x {steps}")
    )  # fmt: skip
    row["linearity"] = [
        {"from": f"{a['samples']}x{a['ddim_steps']}", "to": f"{b['samples']}x{b['ddim_steps']}",
         "forwards_ratio": b["forwards"] / a["forwards"],
         "seconds_ratio": b["seconds_best"] / a["seconds_best"]}
        for a, b in itertools.combinations(shapes, 2)
        if a["samples"] == b["samples"] or a["ddim_steps"] == b["ddim_steps"]
    ]  # fmt: skip
    peaks = [s.get("gpu_max_allocated_gib") for s in shapes if s["samples"] == samples]
    if peaks and peaks[0] is not None:
        row["gpu_max_allocated_gib"] = max(peaks)


class _Timed:
    """The fusion mean, with the seconds spent predicting."""

    def __init__(self, mean: FusionMean) -> None:
        self.mean, self.seconds = mean, 0.0

    def predict(self, *args, **kwargs) -> np.ndarray:
        began = time.perf_counter()
        try:
            return self.mean.predict(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - began


def window_cost(pipeline, ckpt: Checkpoint, features: list[str], *, size: int, threads: int,
                seed: int) -> dict:  # fmt: skip
    """Seconds and peak memory of ``window_arrays``, sampling excluded, on the window of the
    pipeline's grid cut in ``size`` px windows whose extent is largest."""
    rng = np.random.default_rng(seed)
    pipeline = dataclasses.replace(pipeline, product=dataclasses.replace(
        pipeline.product, window=size, cpu_threads=threads))  # fmt: skip
    korea = korea_layout(pipeline)
    layout = korea["layout"]
    window, extent = layout.windows[korea["largest"]], layout.extents[korea["largest"]]
    tiles = layout.tiles[korea["largest"]]
    if extent.y0 % COARSE_FACTOR or extent.x0 % COARSE_FACTOR:
        raise SystemExit(f"{extent}: not on 480 m blocks (the stand-in reference assumes it)")
    spec = pipeline.product
    began = time.perf_counter()
    x = rng.normal(size=(100_000, len(features))).astype("float32")
    x[rng.random(x.shape) < 0.1] = np.nan
    y = x[:, 0] + np.sin(3 * np.nan_to_num(x[:, 2])) + 0.5 * np.nan_to_num(x[:, 5] * x[:, 7])
    mean = FusionMean.fit(x, y + rng.normal(0, 0.3, len(y)), features, threads=threads,
                          seed=seed)  # fmt: skip
    fit_seconds = time.perf_counter() - began
    shape = extent.shape
    never = rng.random(shape) < 0.2  # pixels never seen clear: NaN reference
    day = dt.date(2023, 6, 10)
    reference = Reference(np.where(never, np.nan, rng.uniform(0, 12, shape)).astype("float32"),
                          np.where(never, 0, day.toordinal() - 20).astype("int32"),
                          np.where(never, np.nan, rng.uniform(0, 12, shape)).astype("float32"),
                          rng.normal(0, 1, shape).astype("float32"),
                          np.where(never, 0, 3).astype("float32"))  # fmt: skip
    static_names = ["elevation", "slope", "aspect_sin", "aspect_cos",
                    *(f for f in features if f.startswith("lc_"))]  # fmt: skip
    static = rng.uniform(0, 1, (len(static_names), *shape)).astype("float32")
    static[0] *= 1500
    static[1] *= 40
    residual = rng.normal(0, 1, (spec.samples, spec.tile, spec.tile)).astype("float32")

    def state(day, aligned, max_days, used, two_sided=False):
        assert aligned.shape == shape, (aligned, extent)
        return reference

    height, width = pipeline.grid.geobox.shape
    coarse = rng.uniform(0, 12, (height // COARSE_FACTOR, width // COARSE_FACTOR))
    timed = _Timed(mean)
    run = RunContext(
        pipeline, SimpleNamespace(checkpoints={"fusion": ckpt}, fusion_mean=timed),
        SimpleNamespace(layers=lambda extent: (static, static_names), problem=""), layout,
        sampler=lambda ckpt, requests: [residual for _ in requests],
        references=SimpleNamespace(state=state, clear=lambda day, window: None),
        latitude=grid_latitude(pipeline.grid.geobox),
    )  # fmt: skip
    coarse = coarse.astype("float32")
    plan = DayPlan(day, coarse, coarse, np.zeros(coarse.shape, "uint16"), None, "fusion",
                   {"seed": 0}, mode="nrt")  # fmt: skip
    _reset_peak()
    start_rss = _rss_mb("VmRSS")
    began = time.perf_counter()
    window_arrays(run, plan, window, tiles, extent, ResidualCache([tiles]))
    seconds = time.perf_counter() - began
    return {"window_size": size, "window": dataclasses.asdict(window),
            "extent": dataclasses.asdict(extent),
            "extent_px": shape[0] * shape[1], "tiles": len(tiles), "threads": threads,
            "seconds": seconds, "lightgbm_seconds": timed.seconds,
            "other_seconds": seconds - timed.seconds,
            "peak_rss_mb_above_start": round(_rss_mb("VmHWM") - start_rss, 1),
            "mean_model": {"rounds": 300, "trees": mean.booster().num_trees(),
                           "fit_rows": len(y), "fit_seconds": round(fit_seconds, 1)}}  # fmt: skip


def korea_day(rows: list[dict], window: dict | None, korea: dict, threads: int,
              workers: list[int]) -> list[dict]:  # fmt: skip
    """Each variant's day: the tiles sampled one after another, the windows' own work after."""
    summary = korea["summary"]
    windows = None
    if window is not None:
        windows = window["seconds"] * summary["extents_px_per_grid_px"] * summary["pixels"]
        windows /= window["extent_px"]
    days = []
    for row in rows:
        sampling = summary["tiles_per_day"] * row["seconds_per_tile"]
        total = sampling + (windows or 0.0)
        days.append({"variant": row["variant"], "seconds_per_tile": row["seconds_per_tile"],
                     "tiles_per_second": 1 / row["seconds_per_tile"],
                     "sampling_seconds": sampling, "windows_seconds": windows,
                     "day_seconds": total, "day_hours": total / 3600,
                     "pixels_per_second": summary["pixels"] / total,
                     "sampled_pixels_per_second": row["samples_px"] / row["seconds_per_tile"],
                     "core_hours": total * threads / 3600,
                     "workers": {str(w): sampling / w + (windows or 0.0)
                                 for w in workers}})  # fmt: skip
    return days


def h100_floor(flops: dict, korea: dict, efficiency: float) -> dict:
    summary = korea["summary"]
    per_tile = flops["flops_per_forward"] * summary["samples"] * summary["ddim_steps"]
    per_day = per_tile * summary["tiles_per_day"]
    rate = efficiency * H100_BF16_DENSE_TFLOPS * 1e12
    return {"calculation, not a measurement": True,
            "assumed_bf16_dense_tflops": H100_BF16_DENSE_TFLOPS,
            "source": "NVIDIA H100 SXM5 datasheet (1 979 TFLOPS bf16 with sparsity; dense half)",
            "efficiency": efficiency, "flops_per_tile": per_tile, "flops_per_day": per_day,
            "seconds_per_tile": per_tile / rate, "day_seconds": per_day / rate,
            "counts": "convolutions and matrix products only (GroupNorm, SiLU, additions, the "
                      "DDIM updates are memory-bound and not in it)"}  # fmt: skip


def machine(device: str, threads: int) -> dict:
    import lightgbm
    from kranj_fusion import cpu_model  # benchmarks/ is on the path of a script run from it

    info = {"uname": " ".join(os.uname()), "platform": platform.platform(), "cpu": cpu_model(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": threads,
            "python": platform.python_version(), "lightgbm": lightgbm.__version__,
            "environment": {k: v for k, v in os.environ.items() if k.startswith(THREAD_ENV)},
            "load_average_start": os.getloadavg()}  # fmt: skip
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        # fp32 convolutions run as TF32 on tensor cores unless this is off (torch's default).
        info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default=str(ROOT / "pipelines/korea-daily.yaml"))
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 …")
    parser.add_argument("--variants", type=variant, nargs="+",
                        help="default: fp32 bf16 fp32-nchw bf16-compile on a CPU; on a GPU "
                             "also bf16-nchw, fp32-compile")  # fmt: skip
    parser.add_argument("--shapes", type=shape, nargs="+",
                        help="members x steps measured with the first variant (the others: "
                             "the one of most members, fewest steps); default 1x2 2x2 8x1 8x2 "
                             "on a CPU, the shipped samples x ddim_steps on a GPU")  # fmt: skip
    parser.add_argument("--repeats", type=int, help="runs of each shape (default 1 CPU, 3 GPU)")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="torch and LightGBM threads (the pipeline says 4 each)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1, 4, 16],
        help="sampling workers the day's sampling is divided among",
    )
    parser.add_argument(
        "--window-size",
        type=int,
        help="windows of the grid whose cost is measured, px (scaled to the "
        "day by area); default 256 on a CPU, product.window on a GPU",
    )
    parser.add_argument("--no-window", action="store_true", help="skip the window's cost")
    parser.add_argument("--h100-efficiency", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.variants = args.variants or [variant(v) for v in (
        ["fp32", "bf16", "fp32-nchw", "bf16-nchw", "fp32-compile", "bf16-compile"] if cuda
        else ["fp32", "bf16", "fp32-nchw", "bf16-compile"])]  # fmt: skip
    args.repeats = args.repeats or (3 if cuda else 1)
    suffix = "" if args.device == "cpu" else f"_{args.device.split(':')[0]}"
    args.out = args.out or ROOT / f"benchmarks/results/korea_day{suffix}.json"
    torch.set_num_threads(args.threads)
    began = time.perf_counter()

    pipeline = load_pipeline(args.pipeline)
    spec = pipeline.product
    if spec.scheme != "fusion":
        raise SystemExit(f"{args.pipeline}: product.scheme {spec.scheme}; this measures fusion")
    cpu_shapes = [(1, 2), (2, 2), (8, 1), (8, 2)]
    shapes = args.shapes or ([(spec.samples, spec.ddim_steps)] if cuda else cpu_shapes)
    # The others: the first's shape with the most members and the fewest forwards.
    others = [min(shapes, key=lambda s: (-s[0], s[1]))]
    environment = [f"{k}={v}" for k, v in os.environ.items() if k.startswith(THREAD_ENV)]
    report = {"command": " ".join([*environment, f"PYTHONPATH={os.environ.get('PYTHONPATH', '')}",
                                   sys.executable, *sys.argv]),
              "machine": machine(args.device, args.threads),
              "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "device": args.device}  # fmt: skip
    korea = korea_layout(pipeline)
    ckpt, features = fusion_network(pipeline, args.seed)
    report["korea"] = korea["summary"]
    classes = sum(f.startswith("lc_") for f in features)
    report["network"] = {**ckpt.model.config, "features": len(features),
                         "landcover_classes": classes}  # fmt: skip
    report["flops"] = unet_flops(ckpt.model.config, spec.tile)
    print(json.dumps({"korea": report["korea"], "network": report["network"],
                      "gflops_per_forward": report["flops"]["flops_per_forward"] / 1e9}),
          flush=True)  # fmt: skip

    window = None
    if not args.no_window:  # first: LightGBM's threads are slow beside torch's busy ones
        window = window_cost(pipeline, ckpt, features,
                             size=args.window_size or (spec.window if cuda else 256),
                             threads=args.threads, seed=args.seed)  # fmt: skip
        print(json.dumps({"window": window}), flush=True)
    report["window"] = window

    rows, residuals = [], {}
    for number, var in enumerate(args.variants):
        row, residuals[var.name] = time_sampling(ckpt, var, shapes if number == 0 else others,
                                                 device=args.device, tile=spec.tile,
                                                 repeats=args.repeats, seed=args.seed)  # fmt: skip
        per_tile(row, spec.samples, spec.ddim_steps)
        row["samples_px"] = spec.tile**2
        rows.append(row)
    baseline = residuals[args.variants[0].name]
    for row in rows:  # how far each variant's residuals are from the first's (network units)
        for measured in row["shapes"]:
            key = (measured["samples"], measured["ddim_steps"])
            if key not in baseline:
                continue
            difference = residuals[row["variant"]][key] - baseline[key]
            measured["max_abs_diff_vs_first"] = float(np.abs(difference).max())
            measured["rms_diff_vs_first"] = float(np.sqrt((difference**2).mean()))
    report["sampling"] = rows
    report["day"] = korea_day(rows, window, korea, args.threads, args.workers)
    report["h100_floor"] = h100_floor(report["flops"], korea, args.h100_efficiency)
    report["machine"]["load_average_end"] = os.getloadavg()
    report["seconds"] = round(time.perf_counter() - began, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({"day": report["day"], "h100_floor": report["h100_floor"]}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

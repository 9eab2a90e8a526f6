"""The fusion mean on real Landsat + MODIS: a later Landsat NDVI from MODIS and an earlier one.

Data: the ImageFusion package's Kranj tile (44 × 45 px of 30 m; Landsat on 2020 DOY 068, 077,
093, 100; daily MODIS DOY 068..093 already on the 30 m grid; see its PROVENANCE.md). Both carry
blue, green, red, NIR, SWIR1, SWIR2 in that order (not in the files: read from the spectra):
each band's tile mean agrees between the sensors within ~15 % (blue aside), the jump at band 4
is NIR's, and NDVI from bands 3/4 is ~0.5 in both (tile means 0.515 and 0.512 on 068), the
Landsat map smoothed to MODIS's footprint (Gaussian σ 300 m) correlating r 0.71-0.77 with
MODIS's. The visible bands are too alike in space to be told apart by correlation alone.
Landsat (× 1e4) is scaled to 0-1 like MODIS.

The fusion mean (:class:`unique_cube.downscale.fusion.FusionMean`) is fitted on the one pair
the MODIS series allows before the last MODIS date (reference 068 → target 077) and predicts
093 from reference 077 (16 days old) and from reference 068 (25 days old). It is scored, with
MODIS as is (bilinear MODIS) and the STARFM one-pair rule L1 + M2 − M1, against the target's
gap-free ("unfilled") Landsat pixels: RMSE, bias, r, the RMSE within 480 m blocks (each
16 × 16 block's mean error removed) and RMSE relative to MODIS's. NDVI is the headline; red
and NIR reflectance are scored the same way. One tile of ~2000 px: correctness, not skill
statistics. Skips (exit 0) when the data folder is absent.

    .venv/bin/python benchmarks/kranj_fusion.py [--data ../shared/data/landsat-modis-kranj]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import rasterio

from unique_cube.downscale.fusion import FusionMean, block_anomaly
from unique_cube.scores import metrics, within_block_rmse

ROOT = Path(__file__).resolve().parents[1]
FACTOR = 16  # 30 m × 16 = 480 m, the product's coarse block
RED, NIR = 2, 3  # band indices (blue, green, red, NIR, SWIR1, SWIR2)
FEATURES = ["gpp_m", "ref_gpp", "ref_gpp_m", "gpp_m_change", "starfm", "ref_anomaly", "ref_age"]
FIT = (68, 77)  # (reference, target) DOYs of the training pair
SETUPS = {"ref077_to_093": (77, 93), "ref068_to_093": (68, 93)}
NOTES = [
    "one training pair: ref_age is 9 on every training row, so the model cannot use it and "
    "predicting at ages 16 and 25 is an extrapolation in age",
    "the training pair crosses Landsat paths (068 is path 191, 077 and 093 are path 190): "
    "Landsat NDVI falls 0.029 from 068 to 077 while MODIS rises 0.005, and the fit carries "
    "that offset (fusion_minus_starfm_mean) to 093",
    "093's unfilled and filled files are identical (no gaps); on the valid pixels of the other "
    "dates filled == unfilled",
]


def read(folder: Path, doy: int, scale: float) -> np.ndarray:
    """The (6, H, W) bands of the one file of 2020 DOY ``doy`` in ``folder``, NaN for nodata."""
    (path,) = folder.glob(f"2020{doy:03d}_*.tif")
    with rasterio.open(path) as src:
        bands = src.read().astype("float64")
        if src.nodata is not None:
            bands[bands == src.nodata] = np.nan
    return bands / scale


def variable(bands: np.ndarray, name: str) -> np.ndarray:
    if name == "ndvi":
        return (bands[NIR] - bands[RED]) / (bands[NIR] + bands[RED])
    return bands[{"red": RED, "nir": NIR}[name]]


def rows(ref_l: np.ndarray, ref_m: np.ndarray, m: np.ndarray, age: int) -> np.ndarray:
    """Per-pixel rows (H·W, F) of FEATURES, the first column today's coarse value."""
    change = m - ref_m
    layers = [m, ref_l, ref_m, change, ref_l + change, block_anomaly(ref_l, FACTOR),
              np.full(m.shape, float(age))]  # fmt: skip
    return np.stack(layers, axis=-1).reshape(-1, len(layers))


def score(observed: np.ndarray, predicted: np.ndarray) -> dict:
    ok = np.isfinite(observed) & np.isfinite(predicted)
    out = metrics(observed[ok], predicted[ok])
    # scores.within_block_rmse wants whole blocks: pad the 44 × 45 tile with NaN to 48 × 48,
    # so the edge blocks are the partial ones block_anomaly uses too.
    h, w = observed.shape
    pad = ((0, -h % FACTOR), (0, -w % FACTOR))
    o = np.pad(np.where(ok, observed, np.nan), pad, constant_values=np.nan)
    p = np.pad(np.where(ok, predicted, np.nan), pad, constant_values=np.nan)
    out["within_block_rmse"] = within_block_rmse(o, p, FACTOR)
    return {k: out[k] for k in ("n", "rmse", "bias", "r", "within_block_rmse")}


def run(data: Path, name: str) -> dict:
    """Fit on FIT, score every SETUP, for one variable (ndvi, red or nir)."""
    filled = {d: variable(read(data / "landsat/filled", d, 1e4), name) for d in (68, 77, 93)}
    # Targets and training labels are the un-gap-filled pixels only (filling is a model too).
    observed = {d: variable(read(data / "landsat/unfilled", d, 1e4), name) for d in (77, 93)}
    modis = {d: variable(read(data / "modis/filled", d, 1.0), name) for d in (68, 77, 93)}

    ref, target = FIT
    x = rows(filled[ref], modis[ref], modis[target], target - ref)
    y = observed[target].ravel()
    train = np.isfinite(y) & np.isfinite(x).all(axis=1)
    model = FusionMean.fit(x[train], y[train], FEATURES, rounds=300, threads=1, seed=0)
    fitted = model.predict_rows(x[train])
    result = {"fit": {"reference_doy": ref, "target_doy": target, "rows": int(train.sum()),
                      "in_sample_rmse": float(np.sqrt(np.mean((fitted - y[train]) ** 2))),
                      "in_sample_starfm_rmse": float(np.sqrt(np.mean(
                          (x[train, 4] - y[train]) ** 2)))}}  # fmt: skip
    for setup, (ref, target) in SETUPS.items():
        x = rows(filled[ref], modis[ref], modis[target], target - ref)
        fusion = model.predict_rows(x).reshape(filled[ref].shape)
        starfm = filled[ref] + modis[target] - modis[ref]
        predictions = {"modis": modis[target], "starfm_one_pair": starfm,
                       "fusion_mean": fusion}  # fmt: skip
        scores = {m: score(observed[target], p) for m, p in predictions.items()}
        for s in scores.values():
            s["rmse_vs_modis"] = s["rmse"] / scores["modis"]["rmse"]
        # A tree with min_data_in_leaf 200 on ~1900 rows could collapse to a constant offset.
        spread = {"fusion_std": float(np.std(fusion)),
                  "fusion_distinct_values": int(np.unique(fusion.round(6)).size),
                  "fusion_minus_modis_std": float(np.std(fusion - modis[target])),
                  # the offset the fit carried over from its training pair
                  "fusion_minus_starfm_mean": float(np.mean(fusion - starfm))}  # fmt: skip
        result[setup] = {"reference_doy": ref, "target_doy": target, "age_days": target - ref,
                         "scores": scores, **spread}  # fmt: skip
    return result


def cpu_model() -> str:
    """The CPU's model name (Linux), else platform.processor()."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "../shared/data/landsat-modis-kranj")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/kranj_fusion.json")
    parser.add_argument("--variables", nargs="+", default=["ndvi", "red", "nir"])
    args = parser.parse_args()
    if not (args.data / "landsat").is_dir():
        print(f"skipped: data absent ({args.data})")
        return

    results = {name: run(args.data, name) for name in args.variables}
    for name, result in results.items():
        for setup in SETUPS:
            for method, s in result[setup]["scores"].items():
                print(f"{name:5} {setup:14} {method:16} rmse {s['rmse']:.4f} bias "
                      f"{s['bias']:+.4f} r {s['r']:.3f} within-block {s['within_block_rmse']:.4f} "
                      f"vs modis {s['rmse_vs_modis']:.3f}")  # fmt: skip
    constant = [f"{name} {setup}: fusion_mean predictions are constant"
                for name, result in results.items() for setup in SETUPS
                if result[setup]["fusion_distinct_values"] < 10]  # fmt: skip
    report = {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu_model(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "data": "ImageFusion Kranj tile, 44 x 45 px of 30 m; bands blue, green, red, NIR, "
        "SWIR1, SWIR2 in both sensors; Landsat / 1e4",
        "features": FEATURES,
        "results": results,
        "notes": NOTES + constant,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

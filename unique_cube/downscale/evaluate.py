"""``unique-cube evaluate-downscaler``: the downscalers scored on the test period.

Pairs are the HLS dates of a period with enough of the region clear: the target is GPP_L at
30 m (the Landsat model), the condition GPP_M of the same day (the MODIS model, 480 m,
bilinearly upsampled) and, for S2, elevation, slope, aspect and land-cover fractions loaded
from the catalog's DEM and WorldCover. Evaluation compares bilinear GPP_M, S1 and S2 with
GPP_L on its clear pixels and, when the pipeline names one, with the demo world's truth.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import dask
import numpy as np
import xarray as xr

from unique_cube.config.catalog import Catalog
from unique_cube.config.pipeline import Pipeline
from unique_cube.downscale.checkpoint import load_checkpoint
from unique_cube.downscale.conditions import apply_static_normalisation
from unique_cube.downscale.consistency import coarse_mismatch, make_consistent
from unique_cube.downscale.pairs import Pairs, cached_pairs, pair_conditions, static_and_types
from unique_cube.downscale.pure_pixel import PurePixelModel
from unique_cube.downscale.sampling import downscale, torch_threads
from unique_cube.errors import DownscaleError
from unique_cube.files import write_json
from unique_cube.gpp.features import FEATURES
from unique_cube.gpp.predict import MapInputs, gpp_landsat
from unique_cube.inputs.search import open_catalog
from unique_cube.inputs.weather import weather_for
from unique_cube.scores import crps_ensemble, metrics

__all__ = ["evaluate", "evaluate_downscaler", "pure_pixel_maps"]


log = logging.getLogger(__name__)


def evaluate(
    pairs: Pairs,
    predictions: dict[str, np.ndarray],
    members: dict[str, np.ndarray],
    truth: np.ndarray | None = None,
) -> dict:
    """The scores of 30 m maps on the pairs' dates.

    ``predictions`` are (N, H, W) maps by method (``bilinear``, ``ddpm_s1`` …); ``members``
    the (N, K, H, W) ensembles of the stochastic schemes (their mean is in ``predictions``
    as ``ddpm_<scheme>``); ``truth`` the demo world's true GPP on the dates, when known.
    Returns the tables against GPP_L (clear pixels) and the truth, the ensembles' CRPS and
    spread-skill, and the 480 m mismatch with GPP_M before and after the consistency shift."""
    table: dict = {"vs_gpp_l": {}, "vs_truth": {}}
    clear = np.isfinite(pairs.target)
    for name, values in predictions.items():
        ok = clear & np.isfinite(values)
        table["vs_gpp_l"][name] = metrics(pairs.target[ok], values[ok])
        if truth is not None:
            ok = np.isfinite(values) & np.isfinite(truth)
            table["vs_truth"][name] = metrics(truth[ok], values[ok])
    consistency, ensemble = {}, {}
    for scheme, ensemble_members in members.items():
        mean = predictions[f"ddpm_{scheme}"]
        pairs_mc = list(zip(mean, pairs.gpp_m, strict=True))
        fixed = np.stack([make_consistent(m, c, pairs.factor) for m, c in pairs_mc])
        ok = clear & np.isfinite(fixed)
        consistency[scheme] = {
            "before": float(np.mean([coarse_mismatch(m, c, pairs.factor) for m, c in pairs_mc])),
            "after": float(np.mean([coarse_mismatch(m, c, pairs.factor)
                                    for m, c in zip(fixed, pairs.gpp_m, strict=True)])),
            "vs_gpp_l_after": metrics(pairs.target[ok], fixed[ok]),
        }  # fmt: skip
        spread = ensemble_members.std(axis=1)
        error = np.abs(mean - pairs.target)
        ok = clear & np.isfinite(error)
        ensemble[scheme] = {
            "crps": crps_ensemble(np.moveaxis(ensemble_members, 1, 0), pairs.target),
            "mean_spread": float(spread[ok].mean()),
            "rmse_of_mean": float(np.sqrt((error[ok] ** 2).mean())),
            "spread_skill_correlation": float(np.corrcoef(spread[ok], error[ok])[0, 1]),
        }
    return {
        "dates": [d.strftime("%Y-%m-%d") for d in pairs.dates],
        "table": table,
        "ensemble": ensemble,
        "coarse_consistency": consistency,
    }


def evaluate_downscaler(pipeline: Pipeline, say: Callable[[str], None] = log.info) -> dict:
    """``unique-cube evaluate-downscaler``: bilinear GPP_M, the pure-pixel baseline, S1 and
    S2 on the test period's clearest dates (:func:`evaluate`), written as
    ``evaluation.json`` with a quick-look PNG."""
    spec = pipeline.downscale
    output = Path(spec.output)
    checkpoints = {s: output / f"downscaler_{s}.pt" for s in ("s1", "s2")}
    checkpoints = {s: load_checkpoint(p, s) for s, p in checkpoints.items() if p.exists()}
    if not checkpoints:
        raise DownscaleError(f"no downscaler checkpoint in {output}; run train-downscaler first")
    pure_path = output / "pure_pixel.pt"
    pure_model = PurePixelModel.load(pure_path) if pure_path.exists() else None
    with open_catalog(pipeline) as catalog, dask.config.set(num_workers=pipeline.gpp.threads):
        raw, _, types = static_and_types(catalog, pipeline.grid.geobox)
        # No pure-pixel rows needed; only the clearest dates' GPP maps are computed.
        pairs = cached_pairs(pipeline, catalog, spec.test, say, clearest=spec.max_eval_dates)
        predictions = {"bilinear": pairs.gpp_m_30m}
        if pure_model is not None:
            predictions["pure_pixel"] = pure_pixel_maps(pipeline, catalog, pairs, pure_model,
                                                         types)  # fmt: skip
    truth = _truth(spec.truth, pairs.dates)
    members, started = {}, time.perf_counter()
    with torch_threads(spec.threads):
        for scheme, ckpt in checkpoints.items():
            static = apply_static_normalisation(raw, ckpt.static) if scheme == "s2" else None
            members[scheme] = np.stack(
                [
                    downscale(
                        ckpt,
                        c,
                        samples=spec.samples,
                        ddim_steps=spec.ddim_steps,
                        tile=spec.tile,
                        overlap=spec.overlap,
                        seed=spec.seed + i,
                    )
                    for i, c in enumerate(pair_conditions(pairs, static, scheme))
                ]
            )  # fmt: skip  (N, K, H, W)
            predictions[f"ddpm_{scheme}"] = members[scheme].mean(axis=1)
            say(f"{scheme}: {len(pairs.dates)} maps x {spec.samples} samples")
    seconds = time.perf_counter() - started
    report = {**evaluate(pairs, predictions, members, truth),
              "inference_seconds": round(seconds, 1)}  # fmt: skip
    write_json(output / "evaluation.json", report)
    _quicklook(pairs, predictions, truth, output / "quicklook.png")
    return report


def _truth(path: str | None, dates: list) -> np.ndarray | None:
    """The demo world's true GPP on ``dates`` (when the pipeline names a truth store)."""
    if not path or not Path(path).exists():
        return None
    with xr.open_zarr(path, consolidated=False) as store:
        return store.gpp.sel(time=[d.normalize() for d in dates]).values


def pure_pixel_maps(pipeline: Pipeline, catalog: Catalog, pairs: Pairs, model, types):
    """The pure-pixel DNN applied at 30 m on the pairs' dates. It needs the dates' own
    Landsat inputs: where a pixel is not clear or not vegetation, bilinear GPP_M stands in."""
    gpp = pipeline.gpp
    first, last = min(pairs.dates).date(), max(pairs.dates).date()
    daily = weather_for(catalog, gpp.weather, pipeline.grid.geobox, first, last,
                        gpp.utc_offset_hours)  # fmt: skip
    landsat = gpp_landsat(MapInputs.of(pipeline, catalog, "landsat", daily), f"{first}/{last}",
                          keep_features=True)  # fmt: skip
    days = landsat["time"].dt.floor("D").values
    index = [int(np.flatnonzero(days == np.datetime64(d, "ns"))[0]) for d in pairs.dates]
    features = landsat["features"].isel(time=index).sel(feature=list(FEATURES)).values
    maps = np.stack([model.predict(f, FEATURES, types) for f in features])
    return np.where(np.isfinite(maps), maps, pairs.gpp_m_30m).astype("float32")


def _quicklook(pairs: Pairs, predictions: dict, truth, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    i = int(np.argmax(np.isfinite(pairs.target).mean(axis=(1, 2))))
    panels = [("GPP_M (480 m)", np.kron(pairs.gpp_m[i], np.ones((pairs.factor, pairs.factor))))]
    panels += [(name, values[i]) for name, values in predictions.items() if name != "bilinear"]
    panels.append(("GPP_L (30 m, clear)", pairs.target[i]))
    if truth is not None:
        panels.append(("truth", truth[i]))
    top = float(np.nanpercentile(pairs.target[i], 99)) if np.isfinite(pairs.target[i]).any() else 15
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), dpi=100)
    for ax, (title, image) in zip(np.atleast_1d(axes), panels, strict=True):
        shown = ax.imshow(image, vmin=0, vmax=top, cmap="YlGn")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.colorbar(shown, ax=axes, shrink=0.8, label="GPP (gC m$^{-2}$ d$^{-1}$)")
    fig.suptitle(f"{pairs.dates[i]:%Y-%m-%d}", fontsize=10)
    fig.savefig(path)
    plt.close(fig)

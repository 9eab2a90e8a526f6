"""``unique-cube train-downscaler`` and ``evaluate-downscaler``: pairs, training, the table.

Pairs are the HLS dates of a period with enough of the region clear: the target is GPP_L at
30 m (the Landsat model), the condition GPP_M of the same day (the MODIS model, 480 m,
bilinearly upsampled) and, for S2, elevation, slope, aspect and land-cover fractions loaded
from the catalog's DEM and WorldCover. Evaluation compares bilinear GPP_M, S1 and S2 with
GPP_L on its clear pixels and, when the pipeline names one, with the demo world's truth.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .config import Catalog
from .downscale import DownscaleError
from .pipeline import Period, Pipeline
from .purepixel import Samples

__all__ = [
    "Pairs",
    "cached_pairs",
    "evaluate_downscaler",
    "make_pairs",
    "static_layers",
    "train_downscaler",
]

log = logging.getLogger(__name__)


#: WorldCover classes the pure-pixel baseline treats as vegetation types.
VEGETATED = ("tree_cover", "shrubland", "grassland", "cropland", "herbaceous_wetland",
             "mangroves", "moss_lichen")  # fmt: skip


@dataclass
class Pairs:
    dates: list[pd.Timestamp]
    target: np.ndarray
    """GPP_L (N, H, W), NaN where not clear."""
    gpp_m: np.ndarray
    """GPP_M on the coarse grid (N, cy, cx)."""
    gpp_m_30m: np.ndarray
    """GPP_M bilinearly upsampled (N, H, W)."""
    factor: int
    rows: Samples | None = None
    """Pure-pixel training rows of all dates (coarse-aggregated GPP_L inputs → GPP_M)."""


def coarse_errors(fine: np.ndarray, coarse: np.ndarray, factor: int) -> np.ndarray:
    """The 30 m map averaged over each coarse pixel minus the coarse map, where both exist
    (``fine`` starts on a coarse pixel's corner; the coarse grid may overhang it)."""
    cy, cx = coarse.shape
    padded = np.full((cy * factor, cx * factor), np.nan, dtype="float64")
    padded[: fine.shape[0], : fine.shape[1]] = fine[: cy * factor, : cx * factor]
    with warnings.catch_warnings():  # a coarse pixel wholly outside the 30 m grid: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(padded.reshape(cy, factor, cx, factor), axis=(1, 3))
    ok = np.isfinite(means) & np.isfinite(coarse)
    return means[ok] - coarse[ok]


def coarse_mismatch(fine: np.ndarray, coarse: np.ndarray, factor: int) -> float:
    """RMSE between the 30 m map averaged over each coarse pixel and the coarse map."""
    errors = coarse_errors(fine, coarse, factor)
    return float(np.sqrt(np.mean(errors**2))) if errors.size else float("nan")


def make_consistent(fine: np.ndarray, coarse: np.ndarray, factor: int) -> np.ndarray:
    """:func:`~unique_cube.downscale.coarse_consistency` on a 30 m grid that the coarse one
    may overhang: padded to whole blocks, shifted, cropped back."""
    from .downscale import coarse_consistency

    shape = fine.shape
    padded = np.full((coarse.shape[0] * factor, coarse.shape[1] * factor), np.nan, "float32")
    padded[: shape[0], : shape[1]] = fine
    return coarse_consistency(padded, coarse, factor)[: shape[0], : shape[1]]


def vegetation_types(static: np.ndarray, names: list[str], classes: dict) -> np.ndarray:
    """Each 30 m pixel's dominant land-cover class code (0 where none) from the fractions."""
    codes = {f"lc_{name}": int(code) for code, name in classes.items()}
    layers = [i for i, n in enumerate(names) if n in codes]
    if not layers:
        raise DownscaleError(f"no land-cover fraction among the static layers {names}")
    fractions = static[layers]
    dominant = np.array([codes[names[i]] for i in layers])[np.argmax(fractions, axis=0)]
    return np.where(fractions.sum(axis=0) > 0, dominant, 0).astype("int64")


def vegetated_codes(classes: dict) -> list[int]:
    return sorted(int(code) for code, name in classes.items() if name in VEGETATED)


def static_items(catalog: Catalog, geobox, provenance: dict | None = None) -> tuple[list, list]:
    """The DEM and land-cover items over ``geobox``; their ids go into ``provenance``."""
    from .catalog import search
    from .maps import lonlat_bbox

    bbox = lonlat_bbox(geobox)
    dem_items = search("dem", bbox, "1900-01-01/2100-01-01", catalog=catalog)
    lc_items = search("worldcover", bbox, "1900-01-01/2100-01-01", catalog=catalog)
    if provenance is not None:
        provenance["dem"] = [item.id for item in dem_items]
        provenance["worldcover"] = [item.id for item in lc_items]
    return dem_items, lc_items


def static_layers(
    catalog: Catalog,
    geobox,
    provenance: dict | None = None,
    items: list | None = None,
    *,
    searched: tuple[list, list] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Elevation, slope, sin/cos aspect and land-cover fractions on the 30 m grid (C, H, W).
    The ids of the items read go into ``provenance`` (by source) and the items themselves into
    ``items`` when given; ``searched`` are the (DEM, land-cover) items of
    :func:`static_items`, searched again when not given."""
    from .cube import load
    from .static import class_fractions, slope_aspect

    dem_source, lc_source = catalog.source("dem"), catalog.source("worldcover")
    dem_items, lc_items = searched or static_items(catalog, geobox, provenance)
    elevation = load(dem_items, dem_source, geobox).elevation.max("time").compute()
    terrain = slope_aspect(elevation)
    fine = geobox.zoom_out(1 / 3)
    landcover = load(lc_items, lc_source, fine).landcover.max("time").compute()
    if items is not None:
        items += [*dem_items, *lc_items]
    fractions = class_fractions(landcover, dict(lc_source.classes), 3)
    present = [
        str(c) for c in fractions["class"].values if float(fractions.sel({"class": c}).sum()) > 0
    ]
    aspect = np.radians(terrain.aspect.fillna(0).values)
    layers = [elevation.values, terrain.slope.values, np.sin(aspect), np.cos(aspect)]
    layers += [fractions.sel({"class": c}).fillna(0).values for c in present]
    names = ["elevation", "slope", "aspect_sin", "aspect_cos", *[f"lc_{c}" for c in present]]
    return np.stack(layers).astype("float32"), names


def make_pairs(
    pipeline: Pipeline,
    catalog: Catalog,
    period: Period,
    say: Callable[[str], None] = log.info,
    *,
    types: np.ndarray | None = None,
    clearest: int | None = None,
    dates_per_compute: int = 4,
) -> Pairs:
    """GPP_L / GPP_M pairs over the pipeline's grid for the clear-enough HLS dates; with
    ``types`` (vegetation type per 30 m pixel) also the pure-pixel training rows, taken from
    the same GPP_L inputs a few dates at a time (never all dates' 30 m inputs in memory).

    With ``clearest`` only that many of the clearest dates are kept, chosen from the QA before
    any GPP map is computed, and MODIS is read only around them (the model card's gap-fill
    span each side, which is all the time interpolation of those days can use)."""
    import dask

    from .downscale import upsample_bilinear
    from .gpp import FEATURES
    from .maps import COARSE_FACTOR, gpp_landsat, gpp_modis, weather_for
    from .purepixel import coarse_samples

    spec, gpp = pipeline.downscale, pipeline.gpp
    geobox = pipeline.grid.geobox
    models = Path(gpp.output)
    daily = weather_for(catalog, gpp.weather, geobox, period.start, period.end,
                        gpp.utc_offset_hours)  # fmt: skip
    landsat = gpp_landsat(catalog, gpp.landsat.source, models / "gpp_landsat.card.json",
                          geobox, period.stac_datetime, daily, keep_features=True)  # fmt: skip
    clear = landsat["clear"].mean(("y", "x")).compute()
    keep = clear.values >= spec.min_clear_fraction
    if not keep.any():
        raise DownscaleError(f"no HLS date of {period.start}..{period.end} has "
                         f"{spec.min_clear_fraction:.0%} of the region clear")  # fmt: skip
    chosen = np.flatnonzero(keep)
    modis_items = None
    if clearest is not None:
        chosen = np.sort(chosen[np.argsort(-clear.values[chosen], kind="stable")[:clearest]])
        modis_items = _modis_around(pipeline, catalog, landsat["time"].values[chosen], period)
    landsat = landsat.isel(time=chosen)
    modis = gpp_modis(catalog, gpp.modis.source, models / "gpp_modis.card.json",
                      geobox, period.stac_datetime, daily, items=modis_items)  # fmt: skip
    days = landsat["time"].dt.floor("D").values
    which = f"{len(days)}" if clearest is None else f"the clearest {len(days)} of {int(keep.sum())}"
    say(f"{which} HLS dates with >= {spec.min_clear_fraction:.0%} clear; computing GPP maps")
    coarse = modis["gpp"].sel(time=days).compute().values.astype("float32")
    targets, rows = [], []
    vegetated = vegetated_codes(catalog.source("worldcover").classes) if types is not None else []
    for first in range(0, len(days), dates_per_compute):
        part = slice(first, first + dates_per_compute)
        wanted = [landsat["gpp"].isel(time=part)]
        if types is not None:
            wanted.append(landsat["features"].isel(time=part).sel(feature=list(FEATURES)))
        done = dask.compute(*wanted)
        targets.append(done[0].values.astype("float32"))
        if types is not None:
            for features, gpp_m in zip(done[1].values, coarse[part], strict=True):
                rows.append(coarse_samples(features, FEATURES, types, gpp_m, COARSE_FACTOR,
                                           vegetated))  # fmt: skip
    pure = Samples.concat(rows) if rows else None
    if pure is not None:
        say(f"pure-pixel rows: {len(pure.gpp)} ({pure.counts()} by type)")
    return Pairs(
        dates=[pd.Timestamp(d) for d in days],
        target=np.concatenate(targets),
        gpp_m=coarse,
        gpp_m_30m=upsample_bilinear(coarse, COARSE_FACTOR),
        factor=COARSE_FACTOR,
        rows=pure,
    )


def _modis_around(pipeline: Pipeline, catalog: Catalog, times, period: Period) -> list:
    """The MODIS items of ``period`` within the GPP_M model's gap-fill span (plus a day for
    the solar-day grouping) of any of ``times``."""
    from .catalog import item_time, search
    from .maps import lonlat_bbox

    card = json.loads((Path(pipeline.gpp.output) / "gpp_modis.card.json").read_text())
    span = pd.Timedelta(days=int(card.get("gap_fill_days") or 0) + 1)
    wanted = pd.DatetimeIndex(times).tz_localize(None)
    items = search(pipeline.gpp.modis.source, lonlat_bbox(pipeline.grid.geobox),
                   period.stac_datetime, catalog=catalog)  # fmt: skip
    near = [abs(wanted - pd.Timestamp(item_time(item)).tz_localize(None)).min() <= span
            for item in items]  # fmt: skip
    return [item for item, keep in zip(items, near, strict=True) if keep]


def cached_pairs(
    pipeline: Pipeline,
    catalog: Catalog,
    period: Period,
    say: Callable[[str], None] = log.info,
    *,
    types: np.ndarray | None = None,
    clearest: int | None = None,
) -> Pairs:
    """:func:`make_pairs`, kept in the output folder: S1, S2 and the pure-pixel baseline train
    on the same pairs, and the GPP maps behind them are the slow part. The cache is keyed by
    the period, the grid, the clear-fraction threshold, the GPP model cards' training-data
    hashes and the vegetation types."""
    import hashlib

    spec = pipeline.downscale
    cards = [Path(pipeline.gpp.output) / f"gpp_{k}.card.json" for k in ("modis", "landsat")]
    key = json.dumps(
        ["pairs-2", str(period.start), str(period.end), list(pipeline.grid.bounds),
         pipeline.grid.resolution, spec.min_clear_fraction,
         [json.loads(c.read_text()).get("training_data_sha256") for c in cards],
         None if types is None else hashlib.sha256(types.tobytes()).hexdigest(), clearest]
    )  # fmt: skip
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = Path(spec.output) / f"pairs-{period.start}-{period.end}-{digest}.npz"
    if path.exists():
        data = np.load(path)
        say(f"reusing GPP map pairs from {path}")
        rows = None
        if "rows_gpp" in data:
            rows = Samples(data["rows_features"], data["rows_types"], data["rows_gpp"])
        return Pairs([pd.Timestamp(d) for d in data["dates"]], data["target"], data["gpp_m"],
                     data["gpp_m_30m"], int(data["factor"]), rows)  # fmt: skip
    pairs = make_pairs(pipeline, catalog, period, say, types=types, clearest=clearest)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    extra = {}
    if pairs.rows is not None:
        extra = {"rows_features": pairs.rows.features, "rows_types": pairs.rows.types,
                 "rows_gpp": pairs.rows.gpp}  # fmt: skip
    np.savez(partial, dates=np.array([d.strftime("%Y-%m-%d") for d in pairs.dates]),
             target=pairs.target, gpp_m=pairs.gpp_m, gpp_m_30m=pairs.gpp_m_30m,
             factor=pairs.factor, **extra)  # fmt: skip
    partial.replace(path)  # complete or absent, never half-written
    return pairs


def _conditions(pairs: Pairs, static: np.ndarray | None, scheme: str) -> np.ndarray:
    from .downscale import condition_stack

    return np.stack([condition_stack(m, static, scheme) for m in pairs.gpp_m_30m])


def _static_and_types(catalog: Catalog, geobox) -> tuple[np.ndarray, list[str], np.ndarray]:
    raw, names = static_layers(catalog, geobox)
    types = vegetation_types(raw, names, catalog.source("worldcover").classes)
    return raw, names, types


def train_downscaler(pipeline: Pipeline, scheme: str, say: Callable[[str], None] = log.info):
    """Train one scheme (``s1``, ``s2`` or the ``pure_pixel`` baseline) on the GPP model's
    training period; writes the checkpoint."""
    from .downscale import normalise_static, save_checkpoint, train
    from .training import open_catalog

    spec = pipeline.downscale
    if spec is None or pipeline.grid is None:
        raise DownscaleError(
            f"{pipeline.path}: train-downscaler needs the grid and downscale sections"
        )
    output = Path(spec.output)
    output.mkdir(parents=True, exist_ok=True)
    with open_catalog(pipeline) as catalog:
        raw, names, types = _static_and_types(catalog, pipeline.grid.geobox)
        period = spec.train or pipeline.gpp.train
        pairs = cached_pairs(pipeline, catalog, period, say, types=types)
    if scheme == "pure_pixel":
        return _train_pure_pixel(pairs, spec, output, say)
    static, info = None, {}
    if scheme == "s2":
        static, info = normalise_static(raw, names)
    valid = ~np.isnan(pairs.gpp_m_30m).all(axis=(1, 2))
    conditions = _conditions(pairs, static, scheme)[valid]
    say(f"training {scheme} on {int(valid.sum())} pairs ({spec.steps} steps)")
    ckpt, losses = train(
        conditions, pairs.target[valid], scheme=scheme, static_info=info, steps=spec.steps,
        batch=spec.batch, patch=spec.patch, base=spec.base, seed=spec.seed, progress=say,
    )  # fmt: skip
    path = output / f"downscaler_{scheme}.pt"
    save_checkpoint(path, ckpt)
    say(f"wrote {path} (final loss {np.mean(losses[-100:]):.4f})")
    return path


def _train_pure_pixel(pairs: Pairs, spec, output: Path, say) -> Path:
    from .gpp import FEATURES
    from .purepixel import PurePixelModel

    if pairs.rows is None or len(pairs.rows.gpp) == 0:
        raise DownscaleError("no pure-pixel training rows (no vegetated pure coarse pixel)")
    say(f"training the pure-pixel DNN on {len(pairs.rows.gpp)} pure coarse pixels "
        f"{pairs.rows.counts()}")  # fmt: skip
    model = PurePixelModel(FEATURES, np.unique(pairs.rows.types))
    model.fit(pairs.rows, seed=spec.seed)
    path = output / "pure_pixel.pt"
    model.save(path)
    say(f"wrote {path}")
    return path


def evaluate_downscaler(pipeline: Pipeline, say: Callable[[str], None] = log.info) -> dict:
    """RMSE / r / bias of bilinear GPP_M, S1 and S2 against GPP_L (and the truth) on the test
    period; CRPS and spread-skill of the ensembles; a quick-look PNG. Written as JSON."""
    from .downscale import (
        apply_static_normalisation,
        crps_ensemble,
        downscale,
        load_checkpoint,
    )
    from .gpp import metrics
    from .purepixel import PurePixelModel
    from .training import open_catalog

    spec = pipeline.downscale
    output = Path(spec.output)
    checkpoints = {s: output / f"downscaler_{s}.pt" for s in ("s1", "s2")}
    checkpoints = {s: load_checkpoint(p, s) for s, p in checkpoints.items() if p.exists()}
    if not checkpoints:
        raise DownscaleError(f"no downscaler checkpoint in {output}; run train-downscaler first")
    pure_path = output / "pure_pixel.pt"
    pure_model = PurePixelModel.load(pure_path) if pure_path.exists() else None
    with open_catalog(pipeline) as catalog:
        raw, _, types = _static_and_types(catalog, pipeline.grid.geobox)
        # No pure-pixel rows needed; only the clearest dates' GPP maps are computed.
        pairs = cached_pairs(pipeline, catalog, spec.test, say, clearest=spec.max_eval_dates)
        static = None
        if "s2" in checkpoints:
            static = apply_static_normalisation(raw, checkpoints["s2"].static)
        if pure_model is not None:
            pure = _pure_pixel_maps(pipeline, catalog, pairs, pure_model, types)
    truth = None
    if spec.truth and Path(spec.truth).exists():
        import xarray as xr

        with xr.open_zarr(spec.truth, consolidated=False) as store:
            truth = store.gpp.sel(time=[d.normalize() for d in pairs.dates]).values
    predictions = {"bilinear": pairs.gpp_m_30m}
    if pure_model is not None:
        predictions["pure_pixel"] = pure
    spreads, crps = {}, {}
    started = time.perf_counter()
    for scheme, ckpt in checkpoints.items():
        conditions = _conditions(pairs, static, scheme)
        members = np.stack(
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
                for i, c in enumerate(conditions)
            ]
        )  # fmt: skip  (N, K, H, W)
        predictions[f"ddpm_{scheme}"] = members.mean(axis=1)
        spreads[scheme] = members.std(axis=1)
        crps[scheme] = crps_ensemble(np.moveaxis(members, 1, 0), pairs.target)
        say(f"{scheme}: {len(conditions)} maps x {spec.samples} samples")
    seconds = time.perf_counter() - started
    table: dict = {"vs_gpp_l": {}, "vs_truth": {}}
    clear = np.isfinite(pairs.target)
    for name, values in predictions.items():
        ok = clear & np.isfinite(values)
        table["vs_gpp_l"][name] = metrics(pairs.target[ok], values[ok])
        if truth is not None:
            ok = np.isfinite(values) & np.isfinite(truth)
            table["vs_truth"][name] = metrics(truth[ok], values[ok])
    consistency = {}
    for scheme in spreads:
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
    ensemble = {}
    for scheme, spread in spreads.items():
        error = np.abs(predictions[f"ddpm_{scheme}"] - pairs.target)
        ok = clear & np.isfinite(error)
        ensemble[scheme] = {
            "crps": crps[scheme],
            "mean_spread": float(spread[ok].mean()),
            "rmse_of_mean": float(np.sqrt((error[ok] ** 2).mean())),
            "spread_skill_correlation": float(np.corrcoef(spread[ok], error[ok])[0, 1]),
        }
    report = {
        "dates": [d.strftime("%Y-%m-%d") for d in pairs.dates],
        "table": table,
        "ensemble": ensemble,
        "coarse_consistency": consistency,
        "inference_seconds": round(seconds, 1),
    }
    (output / "evaluation.json").write_text(json.dumps(report, indent=1))
    _quicklook(pairs, predictions, truth, output / "quicklook.png")
    return report


def _pure_pixel_maps(pipeline: Pipeline, catalog: Catalog, pairs: Pairs, model, types):
    """The pure-pixel DNN applied at 30 m on the pairs' dates. It needs the dates' own
    Landsat inputs: where a pixel is not clear or not vegetation, bilinear GPP_M stands in."""
    from .gpp import FEATURES
    from .maps import gpp_landsat, weather_for

    gpp = pipeline.gpp
    first, last = min(pairs.dates).date(), max(pairs.dates).date()
    daily = weather_for(catalog, gpp.weather, pipeline.grid.geobox, first, last,
                        gpp.utc_offset_hours)  # fmt: skip
    landsat = gpp_landsat(catalog, gpp.landsat.source,
                          Path(gpp.output) / "gpp_landsat.card.json", pipeline.grid.geobox,
                          f"{first}/{last}", daily, keep_features=True)  # fmt: skip
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

"""Training and test pairs of the downscaler: GPP_L and GPP_M on the same clear HLS dates.

Pairs are the HLS dates of a period with enough of the region clear: the target is GPP_L at
30 m (the Landsat model), the condition GPP_M of the same day (the MODIS model, 480 m,
bilinearly upsampled) and, for S2, the static layers of :mod:`unique_cube.inputs.static`.
The pure-pixel baseline's training rows come from the same GPP_L inputs. Pairs are cached in
the downscaler's folder: S1, S2 and the baseline train on the same ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import xarray as xr
from odc.geo.geobox import GeoBox

from unique_cube.config.catalog import Catalog
from unique_cube.config.pipeline import Period, Pipeline
from unique_cube.downscale.conditions import condition_stack
from unique_cube.downscale.purity import Samples, coarse_samples
from unique_cube.errors import DownscaleError
from unique_cube.files import write_atomic
from unique_cube.gpp.features import FEATURES
from unique_cube.gpp.model import ModelCard
from unique_cube.gpp.predict import MapInputs, gpp_landsat, gpp_modis
from unique_cube.grid import COARSE_FACTOR, lonlat_bbox, upsample_bilinear
from unique_cube.inputs.items import item_time
from unique_cube.inputs.search import search
from unique_cube.inputs.static import static_layers, vegetated_codes, vegetation_types
from unique_cube.inputs.terrain import grid_terrain
from unique_cube.inputs.weather import weather_for

__all__ = [
    "PairInputs",
    "Pairs",
    "cached_pairs",
    "items_around",
    "make_pairs",
    "pair_conditions",
    "pair_inputs",
    "static_and_types",
]


log = logging.getLogger(__name__)


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


@dataclass
class PairInputs:
    """The lazy inputs of a period's pairs, searched once (:func:`pair_inputs`)."""

    period: Period
    landsat: xr.Dataset
    """GPP_L with the model's inputs (``features``) on every HLS date of the period (lazy)."""
    modis: MapInputs
    """Where GPP_M comes from (the weather of the period included)."""
    modis_items: list
    """The MODIS items of the period."""


def pair_inputs(pipeline: Pipeline, catalog: Catalog, period: Period,
                geobox: GeoBox | None = None) -> PairInputs:  # fmt: skip
    """The items and lazy cubes of a period's pairs over the pipeline's grid (or ``geobox``, a
    window of it): the weather, GPP_L on its HLS dates and the MODIS items (nothing is
    computed). The period ends where the reanalysis does (the days after its last complete
    day have no weather to make GPP of: a reanalysis is published days after the
    satellites)."""
    gpp = pipeline.gpp
    geobox = pipeline.grid.geobox if geobox is None else geobox
    daily = weather_for(catalog, gpp.weather, geobox, period.start, period.end,
                        gpp.utc_offset_hours)  # fmt: skip
    if daily.sizes.get("time", 0):
        last = pd.Timestamp(daily["time"].values[-1]).date()
        if last < period.end:
            period = dataclasses.replace(period, end=max(last, period.start))
    terrain = grid_terrain(catalog, geobox, daily)  # one DEM load for both models' maps
    landsat = gpp_landsat(MapInputs.of(pipeline, catalog, "landsat", daily, terrain, geobox),
                          period.stac_datetime, keep_features=True)  # fmt: skip
    modis_items = search(gpp.modis.source, lonlat_bbox(geobox), period.stac_datetime,
                         catalog=catalog)  # fmt: skip
    modis = MapInputs.of(pipeline, catalog, "modis", daily, terrain, geobox)
    return PairInputs(period, landsat, modis, modis_items)


def make_pairs(
    pipeline: Pipeline,
    inputs: PairInputs,
    say: Callable[[str], None] = log.info,
    *,
    types: np.ndarray | None = None,
    vegetated: Sequence[int] = (),
    clearest: int | None = None,
    min_clear: float | None = None,
    dates_per_compute: int = 4,
) -> Pairs:
    """GPP_L / GPP_M pairs over the pipeline's grid for the clear-enough HLS dates; with
    ``types`` (vegetation type per 30 m pixel) also the pure-pixel training rows of the
    ``vegetated`` types, taken from the same GPP_L inputs a few dates at a time (never all
    dates' 30 m inputs in memory).

    With ``clearest`` only that many of the clearest dates are kept, chosen from the QA before
    any GPP map is computed, and MODIS is read only around them (the model card's gap-fill
    span each side, which is all the time interpolation of those days can use).
    ``min_clear`` replaces ``downscale.min_clear_fraction`` (the evaluation's threshold)."""
    spec, period, landsat = pipeline.downscale, inputs.period, inputs.landsat
    threshold = spec.min_clear_fraction if min_clear is None else min_clear
    clear = landsat["clear"].mean(("y", "x")).compute()
    keep = clear.values >= threshold
    if not keep.any():
        raise DownscaleError(f"no HLS date of {period.start}..{period.end} has "
                             f"{threshold:.0%} of the region clear")  # fmt: skip
    chosen = np.flatnonzero(keep)
    modis_items = inputs.modis_items
    if clearest is not None:
        chosen = np.sort(chosen[np.argsort(-clear.values[chosen], kind="stable")[:clearest]])
        span = ModelCard.read(inputs.modis.card_path).gap_fill_days
        modis_items = items_around(modis_items, landsat["time"].values[chosen], span)
    landsat = landsat.isel(time=chosen)
    modis = gpp_modis(inputs.modis, period.stac_datetime, items=modis_items)
    days = landsat["time"].dt.floor("D").values
    which = f"{len(days)}" if clearest is None else f"the clearest {len(days)} of {int(keep.sum())}"
    say(f"{which} HLS dates with >= {threshold:.0%} clear; computing GPP maps")
    coarse = modis["gpp"].sel(time=days).compute().values.astype("float32")
    targets, rows = [], []
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


def items_around(items: list, times, days: int) -> list:
    """The items within ``days`` (plus a day for the solar-day grouping) of any of ``times``."""
    span = pd.Timedelta(days=days + 1)
    wanted = pd.DatetimeIndex(times).tz_localize(None)
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
    min_clear: float | None = None,
    geobox: GeoBox | None = None,
) -> Pairs:
    """:func:`make_pairs` over the pipeline's grid (or ``geobox``, a window of it), kept in
    the output folder: S1, S2 and the pure-pixel baseline train on the same pairs, and the
    GPP maps behind them are the slow part. The cache is keyed by the period, the grid, the
    clear-fraction threshold, the GPP model cards' training-data hashes and the vegetation
    types."""

    spec = pipeline.downscale
    cards = [Path(pipeline.gpp.output) / f"gpp_{k}.card.json" for k in ("modis", "landsat")]
    if geobox is not None and geobox == pipeline.grid.geobox:
        geobox = None  # the whole grid: one key, whoever asks
    bounds = list(pipeline.grid.bounds) if geobox is None else [*geobox.boundingbox]
    key = json.dumps(
        ["pairs-2", str(period.start), str(period.end), bounds,
         pipeline.grid.resolution,
         spec.min_clear_fraction if min_clear is None else min_clear,
         [ModelCard.read(c).training_data_sha256 for c in cards],
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
    vegetated = vegetated_codes(catalog.source("worldcover").classes) if types is not None else []
    pairs = make_pairs(pipeline, pair_inputs(pipeline, catalog, period, geobox), say, types=types,
                       vegetated=vegetated, clearest=clearest, min_clear=min_clear)  # fmt: skip
    extra = {}
    if pairs.rows is not None:
        extra = {"rows_features": pairs.rows.features, "rows_types": pairs.rows.types,
                 "rows_gpp": pairs.rows.gpp}  # fmt: skip
    with write_atomic(path) as partial, partial.open("wb") as file:  # complete or absent
        np.savez(file, dates=np.array([d.strftime("%Y-%m-%d") for d in pairs.dates]),
                 target=pairs.target, gpp_m=pairs.gpp_m, gpp_m_30m=pairs.gpp_m_30m,
                 factor=pairs.factor, **extra)  # fmt: skip
    return pairs


def pair_conditions(pairs: Pairs, static: np.ndarray | None, scheme: str) -> np.ndarray:
    return np.stack([condition_stack(m, static, scheme) for m in pairs.gpp_m_30m])


def static_and_types(catalog: Catalog, geobox) -> tuple[np.ndarray, list[str], np.ndarray]:
    raw, names = static_layers(catalog, geobox)
    types = vegetation_types(raw, names, catalog.source("worldcover").classes)
    return raw, names, types

"""GPP maps: a trained model applied to lazy cubes, chunk by chunk.

* :func:`predict` — any Dataset holding a card's features → lazy ``gpp`` and ``out_of_range``;
  the model is loaded once per worker process from its path, never serialised into tasks;
* :func:`gpp_landsat` — GPP_L at 30 m on the HLS dates, NaN where the pixel is not clear;
* :func:`gpp_modis` — GPP_M daily on the coarse grid (480 m), index gaps filled in time as
  the model was trained (:func:`unique_cube.gpp.features.model_features`).

Nothing here computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from odc.geo.geobox import GeoBox

from unique_cube.config.catalog import Catalog
from unique_cube.config.pipeline import Pipeline
from unique_cube.errors import ModelError
from unique_cube.gpp.features import feature_cube
from unique_cube.gpp.model import GPP_ATTRS, ModelCard, cached_model
from unique_cube.grid import COARSE_FACTOR, coarse_geobox, lonlat_bbox
from unique_cube.inputs.cube import load
from unique_cube.inputs.search import search
from unique_cube.inputs.terrain import coarse_terrain, grid_terrain

__all__ = ["MapInputs", "gpp_landsat", "gpp_modis", "predict"]


def _predict_block(*arrays: np.ndarray, card_path: str) -> np.ndarray:
    model = cached_model(card_path)
    stacked = np.stack([np.asarray(a, dtype="float64") for a in arrays], axis=-1)
    flat = stacked.reshape(-1, stacked.shape[-1])
    valid = ~np.isnan(flat).any(axis=1)
    out = np.full(flat.shape[0], np.nan, dtype="float32")
    if valid.any():
        out[valid] = np.maximum(model.predict(flat[valid], num_threads=1), 0.0)
    return out.reshape(stacked.shape[:-1])


def _outside_block(*arrays: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> np.ndarray:
    outside = np.zeros(np.shape(arrays[0]), dtype=bool)
    for values, low, high in zip(arrays, lows, highs, strict=True):
        outside |= (values < low) | (values > high)
    return outside


def predict(features: xr.Dataset, card_path: str | Path) -> xr.Dataset:
    """Lazy GPP (``gpp``, gC m-2 day-1, NaN where a feature is missing) and ``out_of_range``
    (a feature outside the range seen in training) from a Dataset holding the card's features
    as variables of the same shape."""
    card_path = str(Path(card_path).resolve())
    model = cached_model(card_path)
    missing = [f for f in model.features if f not in features]
    if missing:
        raise ModelError(
            f"{card_path}: the input lacks feature(s) {', '.join(missing)} "
            f"(the model needs, in order: {', '.join(model.features)})"
        )
    arrays = [features[f] for f in model.features]
    gpp = xr.apply_ufunc(
        _predict_block,
        *arrays,
        kwargs={"card_path": card_path},
        dask="parallelized",
        output_dtypes=["float32"],
    )
    ranges = model.card.feature_ranges
    outside = xr.apply_ufunc(
        _outside_block,
        *arrays,
        kwargs={
            "lows": np.array([ranges[f][0] for f in model.features]),
            "highs": np.array([ranges[f][1] for f in model.features]),
        },
        dask="parallelized",
        output_dtypes=[bool],
    )
    gpp.attrs = {**GPP_ATTRS, "model": model.card.name, "learner": model.card.learner}
    outside.attrs = {"long_name": "an input outside the range seen in training"}
    return xr.Dataset({"gpp": gpp, "out_of_range": outside})


@dataclass(frozen=True)
class MapInputs:
    """Where a GPP model's maps come from."""

    catalog: Catalog
    source: str
    """The model's satellite source in the catalog (``hls-l30``, ``modis-sr`` …)."""
    card_path: Path
    """The model's card (its model file beside it)."""
    geobox: GeoBox
    """The region's 30 m grid (GPP_M is made on its coarse grid)."""
    daily: xr.Dataset
    """Daily weather covering the maps' days (:func:`~unique_cube.inputs.weather.weather_for`)."""
    terrain: xr.Dataset
    """The terrain terms on the map's grid: ``geobox`` for GPP_L, its coarse grid for GPP_M
    (:func:`~unique_cube.inputs.terrain.grid_terrain`, :func:`coarse_terrain`)."""

    @classmethod
    def of(cls, pipeline: Pipeline, catalog: Catalog, model: str, daily: xr.Dataset,
           terrain: xr.Dataset | None = None,
           geobox: GeoBox | None = None) -> MapInputs:  # fmt: skip
        """The inputs of a pipeline's ``modis`` or ``landsat`` model on its grid (or on
        ``geobox``, a window of it); ``terrain`` is that grid's 30 m terrain (loaded when not
        given), averaged to 480 m for ``modis``."""
        geobox = pipeline.grid.geobox if geobox is None else geobox
        if terrain is None:
            terrain = grid_terrain(catalog, geobox, daily)
        if model == "modis":
            terrain = coarse_terrain(terrain, COARSE_FACTOR)
        return cls(catalog, getattr(pipeline.gpp, model).source,
                   Path(pipeline.gpp.output) / f"gpp_{model}.card.json", geobox, daily,
                   terrain)  # fmt: skip


def gpp_landsat(
    inputs: MapInputs,
    period: str,
    *,
    chunks: int = 512,
    keep_features: bool = False,
) -> xr.Dataset:
    """GPP_L (and its ``out_of_range`` flag) at 30 m on each HLS date of ``period``; with
    ``keep_features`` also the model's inputs (``features``: time × feature × y × x, NaN
    where the pixel is not clear)."""
    catalog, source, geobox = inputs.catalog, inputs.source, inputs.geobox
    items = search(source, lonlat_bbox(geobox), period, catalog=catalog)
    cube = load(items, catalog.source(source), geobox,
                chunks={"time": 1, "y": chunks, "x": chunks})  # fmt: skip
    features = feature_cube(cube, inputs.daily, inputs.terrain, geobox)
    result = predict(features, inputs.card_path)
    result["clear"] = cube["clear"]
    if keep_features:
        stacked = features.to_dataarray("feature").transpose("time", "feature", "y", "x")
        result["features"] = stacked.where(cube["clear"])
    return result


def gpp_modis(
    inputs: MapInputs,
    period: str,
    *,
    gap_fill_days: int | None = None,
    items=None,
    every_day: bool = False,
    causal: bool = False,
) -> xr.Dataset:
    """GPP_M daily on the coarse grid of ``geobox`` (480 m), index gaps filled in time up to
    ``gap_fill_days`` (default: what the model card says it was trained with); ``causal``:
    filled from earlier days only (the last observation carried forward), so that no day's
    GPP_M depends on a later MODIS observation (the near-real-time product).

    ``items`` are the source's items of ``period`` when already searched. With ``every_day``
    the result has every day of ``daily`` in ``period``, also those without a MODIS granule
    (filled in time like a cloudy day, ``clear`` False)."""
    catalog, source, daily = inputs.catalog, inputs.source, inputs.daily
    coarse = coarse_geobox(inputs.geobox)
    if items is None:
        items = search(source, lonlat_bbox(inputs.geobox), period, catalog=catalog)
    cube = load(items, catalog.source(source), coarse, chunks={"time": -1, "y": -1, "x": -1},
                resampling="average")  # fmt: skip
    if every_day:
        first, last = (pd.Timestamp(t) for t in period.split("/"))
        days = daily["time"].sel(time=slice(first, last)).values
        cube = cube.assign_coords(time=cube["time"].dt.floor("D").values)
        cube = cube.reindex(time=days).chunk({"time": -1})
        cube["clear"] = cube["clear"].fillna(False).astype(bool)
    if gap_fill_days is None:
        gap_fill_days = ModelCard.read(inputs.card_path).gap_fill_days
    features = feature_cube(cube, daily, inputs.terrain, coarse, gap_fill_days=gap_fill_days,
                            causal=causal)  # fmt: skip
    result = predict(features, inputs.card_path)
    result["clear"] = cube["clear"]  # where the day itself was observed (not gap-filled)
    return result

"""Where the downscalers train: the whole grid, or windows drawn over a large one.

A national grid's training pairs do not fit in memory: one float32 layer of Korea's 30 m grid
is 1.2 GB a date, and a pair holds several a date. A grid larger than
``downscale.training_windows`` × ``downscale.training_window``² pixels is therefore sampled:
that many square windows (whole 480 m blocks, drawn with ``downscale.seed``) among those the
catalog covers (the HLS and the MODIS footprints of the period), and the pairs, the static
layers and the fusion features are made on each window alone, on its own sub-grid, read lazily
and cached per window (:func:`~unique_cube.downscale.pairs.cached_pairs`). What training holds
is bounded by the windows, whatever the grid. A smaller grid is one window, itself, as it has
always been.

:func:`training_set` is what ``train-downscaler`` takes: each window's pairs, its static
layers in one order for all (a land-cover class absent from a window is 0 there) and its
vegetation types.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from odc.geo.geobox import GeoBox

from unique_cube.config.catalog import Catalog
from unique_cube.config.pipeline import Period, Pipeline
from unique_cube.downscale.pairs import Pairs, cached_pairs
from unique_cube.errors import DownscaleError, EmptySearchError
from unique_cube.grid import Window, lonlat_bbox, pixel_lonlat, taken_whole
from unique_cube.inputs.items import footprint_union
from unique_cube.inputs.search import search
from unique_cube.inputs.static import static_layers, vegetation_types

__all__ = [
    "TrainingSet",
    "TrainingWindow",
    "aligned_layers",
    "covered_windows",
    "draw_windows",
    "evaluation_windows",
    "training_set",
    "training_windows",
    "window_label",
    "window_pipeline",
    "window_static",
]


log = logging.getLogger(__name__)

#: A window counts as covered when this share of its sample points lies inside the footprints.
MIN_COVERED = 0.9


@dataclass
class TrainingWindow:
    """One window's training data."""

    window: Window
    """Its rows and columns in the pipeline's grid."""
    geobox: GeoBox
    """Its own grid (a slice of the pipeline's)."""
    pairs: Pairs
    static: np.ndarray
    """Static layers (C, h, w) in :attr:`TrainingSet.names` order, not normalised."""
    types: np.ndarray
    """Vegetation type per 30 m pixel (h, w)."""


@dataclass
class TrainingSet:
    """The windows of a training period (one: the whole grid, when it is small enough)."""

    windows: list[TrainingWindow]
    names: list[str]
    """The static layers' names, one order for every window."""
    whole: bool
    """Whether the one window is the whole grid."""

    def static_stack(self) -> np.ndarray:
        """Every window's static layers side by side (C, h, Σw): what their statistics are
        taken over."""
        return np.concatenate([w.static for w in self.windows], axis=2)


def draw_windows(
    shape: tuple[int, int],
    size: int,
    count: int,
    seed: int,
    covered: Callable[[Window], bool] = lambda window: True,
) -> list[Window]:
    """``count`` windows of ``size`` px (or all of them, if fewer) drawn at random without
    replacement from the whole windows of a grid of ``shape`` (aligned on its origin) that
    ``covered`` accepts; in row order. The grid itself, as one window, when it holds no more
    pixels than ``count`` windows."""
    height, width = shape
    if taken_whole(shape, size, count):
        return [Window.covering(shape)]
    cells = [Window(y0, y0 + size, x0, x0 + size)
             for y0 in range(0, height - size + 1, size)
             for x0 in range(0, width - size + 1, size)]  # fmt: skip
    order = np.random.default_rng(seed).permutation(len(cells))
    chosen: list[int] = []
    for i in order:  # the first covered ones in the drawn order
        if covered(cells[i]):
            chosen.append(int(i))
            if len(chosen) == count:
                break
    return [cells[i] for i in sorted(chosen)]


def covered_windows(geobox: GeoBox, footprints: list) -> Callable[[Window], bool]:
    """Whether a window of ``geobox`` lies inside each of ``footprints`` (shapely geometries in
    longitude and latitude), judged at 5 × 5 points spread over it (:data:`MIN_COVERED`)."""
    import shapely

    down, across = np.meshgrid((np.arange(5) + 0.5) / 5, (np.arange(5) + 0.5) / 5,
                               indexing="ij")  # fmt: skip

    def covered(window: Window) -> bool:
        rows = window.y0 + down * (window.y1 - window.y0)
        cols = window.x0 + across * (window.x1 - window.x0)
        lon, lat = pixel_lonlat(geobox, rows, cols)
        return all(shapely.intersects_xy(fp, lon, lat).mean() >= MIN_COVERED
                   for fp in footprints)  # fmt: skip

    return covered


def training_windows(pipeline: Pipeline, catalog: Catalog, period: Period) -> list[Window]:
    """The windows the downscalers train on over ``period``: the whole grid when it is small
    enough, else windows the HLS and MODIS items of the period cover (an error naming the
    grid and where the catalog's items lie when none is)."""
    spec, geobox = pipeline.downscale, pipeline.grid.geobox
    size, count = spec.training_window, spec.training_windows
    height, width = geobox.shape
    if taken_whole(geobox.shape, size, count):
        return [Window.covering(geobox.shape)]
    footprints = _footprints(pipeline, catalog, period, "training")
    windows = draw_windows(geobox.shape, size, count, spec.seed,
                           covered_windows(geobox, [f for f, _ in footprints]))  # fmt: skip
    if not windows:
        raise DownscaleError(
            f"no {size} px window of the training grid ({height} x {width} px, "
            f"{[round(v, 3) for v in lonlat_bbox(geobox)]}) lies inside both the HLS and the "
            f"MODIS footprints of {period.start}..{period.end} (the items lie within "
            f"{'; '.join(h for _, h in footprints)}): the catalog does not cover the region "
            "it is to train on"
        )
    return windows


def evaluation_windows(pipeline: Pipeline, catalog: Catalog) -> list[Window]:
    """The windows the evaluation scores on: the whole grid when it is small enough, else up
    to ``downscale.training_windows`` windows the test period's HLS and MODIS cover, drawn
    with the next seed and never one the downscalers trained on (a spatial hold-out by
    construction)."""
    spec, geobox = pipeline.downscale, pipeline.grid.geobox
    if taken_whole(geobox.shape, spec.training_window, spec.training_windows):
        return [Window.covering(geobox.shape)]
    trained = set(training_windows(pipeline, catalog, spec.train or pipeline.gpp.train))
    footprints = _footprints(pipeline, catalog, spec.test, "evaluation")
    covered = covered_windows(geobox, [f for f, _ in footprints])
    windows = draw_windows(geobox.shape, spec.training_window, spec.training_windows,
                           spec.seed + 1, lambda w: w not in trained and covered(w))  # fmt: skip
    if not windows:
        raise DownscaleError(
            f"no {spec.training_window} px window of the grid outside the training windows "
            f"lies inside both the HLS and the MODIS footprints of {spec.test.start}.."
            f"{spec.test.end} (the items lie within {'; '.join(h for _, h in footprints)})"
        )
    return windows


def window_pipeline(pipeline: Pipeline, window: Window) -> Pipeline:
    """The pipeline with its grid cut to ``window`` (what a stage run on the window alone
    sees: its searches, loads and caches are the window's)."""
    left, top = pipeline.grid.geobox[window.slices].transform * (0, 0)
    res = pipeline.grid.resolution
    bounds = (left, top - window.shape[0] * res, left + window.shape[1] * res, top)
    return dataclasses.replace(pipeline, grid=dataclasses.replace(pipeline.grid, bounds=bounds))


def window_label(window: Window) -> str:
    """A window's name in folders and tables: ``r<row>-c<column>`` of its upper-left pixel."""
    return f"r{window.y0}-c{window.x0}"


def _footprints(pipeline: Pipeline, catalog: Catalog, period: Period, what: str) -> list[tuple]:
    """The union of the HLS and of the MODIS footprints of ``period`` over the grid, each
    with where it lies (an error naming ``what`` and a source without any item)."""
    out = []
    for source in (pipeline.gpp.landsat.source, pipeline.gpp.modis.source):
        try:
            items = search(source, lonlat_bbox(pipeline.grid.geobox), period.stac_datetime,
                           catalog=catalog)  # fmt: skip
        except EmptySearchError as err:
            raise DownscaleError(f"the {what} region has no {source} item over "
                                 f"{period.start}..{period.end}: {err}") from None  # fmt: skip
        footprint = footprint_union(items)
        out.append((footprint, f"{source} {[round(v, 2) for v in footprint.bounds]}"))
    return out


def window_static(catalog: Catalog, geobox: GeoBox, window: Window) -> tuple[np.ndarray, list[str]]:
    """The static layers of ``window`` of ``geobox``, read on the window grown by a pixel so
    that its edge slopes are those of the whole grid (as the product's are)."""
    grown = window.grown(1, geobox.shape)
    layers, names = static_layers(catalog, geobox[grown.slices])
    return layers[(slice(None), *window.within(grown))], names


def training_set(
    pipeline: Pipeline,
    catalog: Catalog,
    period: Period,
    say: Callable[[str], None] = log.info,
    *,
    with_types: bool = False,
    min_clear: float | None = None,
) -> TrainingSet:
    """The training windows of ``period`` (:func:`training_windows`) with their pairs (the
    pure-pixel rows too ``with_types``), static layers and vegetation types. A window with no
    clear-enough HLS date is left out (and said); none left is an error."""
    geobox = pipeline.grid.geobox
    windows = training_windows(pipeline, catalog, period)
    whole = windows == [Window.covering(geobox.shape)]
    classes = catalog.source("worldcover").classes
    if not whole:
        area = sum(w.shape[0] * w.shape[1] for w in windows) / (geobox.shape[0] * geobox.shape[1])
        say(f"training on {len(windows)} windows of {pipeline.downscale.training_window} px "
            f"({area:.2%} of the grid)")  # fmt: skip
    parts: list[TrainingWindow] = []
    found: list[list[str]] = []  # each kept window's own static layer names
    skipped = []
    for k, window in enumerate(windows):
        sub = geobox[window.slices]
        static, names = window_static(catalog, geobox, window)
        types = vegetation_types(static, names, classes)
        if not whole:
            say(f"window {k + 1}/{len(windows)}: rows {window.y0}:{window.y1}, "
                f"columns {window.x0}:{window.x1}")  # fmt: skip
        try:
            pairs = cached_pairs(pipeline, catalog, period, say, geobox=sub,
                                 types=types if with_types else None,
                                 min_clear=min_clear)  # fmt: skip
        except DownscaleError as err:
            if whole or not str(err).startswith("no HLS date"):
                raise
            skipped.append(f"rows {window.y0}:{window.y1}, columns {window.x0}:{window.x1}")
            say(f"window {k + 1}/{len(windows)} left out: {err}")
            continue
        parts.append(TrainingWindow(window, sub, pairs, static, types))
        found.append(names)
    if not parts:
        raise DownscaleError(f"none of the {len(windows)} training windows has a clear-enough "
                             f"HLS date in {period.start}..{period.end} "
                             f"({'; '.join(skipped)})")  # fmt: skip
    names = _union_names(found)
    for part, own in zip(parts, found, strict=True):
        part.static = aligned_layers(part.static, own, names)
    return TrainingSet(parts, names, whole)


def _union_names(every: list[list[str]]) -> list[str]:
    """The layers of every window, in the first window's order, then the classes the others
    add (by class code)."""
    names = list(every[0])
    extra = sorted({n for found in every[1:] for n in found if n not in names},
                   key=lambda n: int(n[3:]) if n[3:].isdigit() else 0)  # fmt: skip
    return names + extra


def aligned_layers(layers: np.ndarray, names: list[str], wanted: list[str]) -> np.ndarray:
    """``layers`` (named ``names``) in the order of ``wanted``; a layer absent is 0."""
    by_name = dict(zip(names, layers, strict=True))
    zeros = np.zeros(layers.shape[1:], dtype=layers.dtype)
    return np.stack([by_name.get(n, zeros) for n in wanted])

"""Pipeline specs (``pipelines/*.yaml``): what a run reads, trains and writes.

Loaded into frozen dataclasses by :mod:`unique_cube.config.yamlconf`, so a bad file fails with the
file, the key and what was expected. Every number is checked against the range the code can
use (:class:`_Range`; NaN and infinities are refused everywhere), and the grid against the
coarse grid the models work on (30 m pixels in whole 480 m blocks). Relative paths are relative
to the working directory (the repository root when run through ``make``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from unique_cube.config.catalog import load_catalog
from unique_cube.config.yamlconf import build, read_yaml
from unique_cube.errors import ConfigError
from unique_cube.grid import COARSE_FACTOR, taken_whole

__all__ = [
    "COARSE_M",
    "LEARNERS",
    "PIXEL_M",
    "DownscaleSpec",
    "EvaluationSpec",
    "FluxSpec",
    "GppSpec",
    "GridSpec",
    "ModelSpec",
    "Period",
    "Pipeline",
    "ProductSpec",
    "load_pipeline",
    "validate_pipeline",
]


LEARNERS = ("lightgbm", "lightgbm_rf", "linear")

PIXEL_M = 30.0
"""The product's pixel size in metres: the GPP models and the downscaler are made for it."""

COARSE_M = PIXEL_M * COARSE_FACTOR
"""The coarse grid's pixel size (480 m): GPP_M is made on it, the downscaler learnt from it."""

MAX_SEED = 9_999_999
"""The largest seed: a day's tile generators are seeded with about seed x 10^12 (the day and
the tile's place are mixed in), which must fit in torch's 64 bits."""

_TILE_WHY = "one 480 m block of 30 m pixels: a smaller tile sees less than one GPP_M pixel"


@dataclass(frozen=True)
class _Range:
    """The values a numeric key accepts: ``low <= value <= high`` (an end left ``None`` is
    open), and ``why`` said with the range."""

    low: float | None = None
    high: float | None = None
    why: str = ""

    def problem(self, value: float) -> str | None:
        if (
            not math.isfinite(value)
            or (self.low is not None and value < self.low)
            or (self.high is not None and value > self.high)
        ):
            why = f" ({self.why})" if self.why else ""
            return f"must be {self.text}{why}, got {value}"
        return None

    @property
    def text(self) -> str:
        if self.low is not None and self.high is not None:
            return f"within [{self.low}, {self.high}]"
        if self.low is not None:
            return f"at least {self.low}"
        return f"at most {self.high}" if self.high is not None else "a finite number"


_FRACTION = _Range(0, 1)
_ONE_OR_MORE = _Range(1)
_NONE_OR_MORE = _Range(0)
_SEED = _Range(0, MAX_SEED, "a day's and a tile's generator seeds are made from it in 64 bits")
_GAP_DAYS = _Range(0, 366, "a longer gap would interpolate across a whole seasonal cycle")


def _out_of_range(spec, ranges: dict[str, _Range]) -> tuple[str, str] | None:
    """The first field of ``spec`` that is not a finite number (every float field, and the
    numbers of tuples) or is outside its range in ``ranges``: ``(field, message)``."""
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        numbers = value if isinstance(value, tuple) else (value,)
        for number in numbers:
            if isinstance(number, float) and not math.isfinite(number):
                return f.name, f"must be a finite number, got {number}"
        if f.name in ranges:
            problem = ranges[f.name].problem(value)
            if problem:
                return f.name, problem
    return None


def _tiling_problem(spec) -> tuple[str, str] | None:
    """``tile`` and ``overlap`` of a downscaler's tiled inference (``downscale``, ``product``)."""
    if spec.tile < COARSE_FACTOR:
        return "tile", f"must be at least {COARSE_FACTOR} px ({_TILE_WHY}), got {spec.tile}"
    if not 0 <= spec.overlap <= spec.tile // 2:
        return "overlap", (
            f"must be within [0, tile / 2 = {spec.tile // 2}] px (the blend ramps of a tile's "
            f"two sides meet at its middle; tiles step by tile - overlap), got {spec.overlap}"
        )
    return None


@dataclass(frozen=True)
class Period:
    """An inclusive range of days."""

    start: dt.date
    end: dt.date

    def _check(self) -> str | None:
        if self.end < self.start:
            return f"end {self.end} is before start {self.start}"
        return None

    @property
    def stac_datetime(self) -> str:
        return f"{self.start.isoformat()}/{self.end.isoformat()}"


@dataclass(frozen=True)
class FluxSpec:
    """Where the tower files are and how they are filtered."""

    directory: str
    """Folder of FLX_<site>_..._DD_... files."""
    sites: str
    """Site table (SITE_ID, LOCATION_LAT, LOCATION_LONG, IGBP)."""
    target: str = "GPP_NT_VUT_REF"
    min_qc: float = 0.5
    """Days with NEE_VUT_REF_QC (the fraction of good half-hours, 0-1) below this are
    dropped."""
    hold_out_region: bool = False
    """Towers whose coordinates fall inside the product grid (``grid``) are left out of the
    GPP models' training and kept for validating the product (``unique-cube evaluate``'s
    ``towers``)."""

    def _check(self) -> tuple[str, str] | None:
        return _out_of_range(self, {"min_qc": _FRACTION})


@dataclass(frozen=True)
class ModelSpec:
    """One GPP model: its satellite source and how tower windows are accepted."""

    source: str
    """Source name in the pipeline's catalog."""
    min_clear: int = 1
    """Clear pixels of the tower window a day needs: 1 to ``window``²."""
    gap_fill_days: int = 0
    """Fill index gaps in time up to this many days (0: clear days only; at most 366)."""
    window: int = 3
    """Side of a tower's window in the source's pixels (odd: centred on the tower's pixel);
    its mean indices, and the terrain's over the same extent, are the tower's features."""

    def _check(self) -> tuple[str, str] | None:
        if self.window % 2 == 0 or not 1 <= self.window <= 33:
            return "window", f"must be an odd number of pixels from 1 to 33, got {self.window}"
        return _out_of_range(self, {
            "min_clear": _Range(1, self.window**2, f"pixels of the {self.window}×{self.window} "
                                "window"),
            "gap_fill_days": _GAP_DAYS,
        })  # fmt: skip


@dataclass(frozen=True)
class GppSpec:
    """Step 1: the two LightGBM GPP models and their spatial cross-validation."""

    train: Period
    modis: ModelSpec
    landsat: ModelSpec
    output: str
    """Folder of the models, their cards and CV reports."""
    weather: str = "era5"
    """Source name of the reanalysis."""
    utc_offset_hours: float = 9.0
    """The local day of the meteorology (hours east of UTC, -12 to 14)."""
    folds: int = 20
    """Folds of the spatial cross-validation (at least 2)."""
    learners: tuple[str, ...] = LEARNERS
    threads: int = 2
    """Threads of LightGBM training and of the local Dask computations of GPP maps (tower
    tables, the downscaler's pairs)."""

    def _check(self) -> str | tuple[str, str] | None:
        unknown = [name for name in self.learners if name not in LEARNERS]
        if unknown:
            return f"unknown learner(s) {unknown}; expected some of {list(LEARNERS)}"
        if not self.learners:
            return "learners", f"must name at least one of {list(LEARNERS)}"
        return _out_of_range(self, {
            "utc_offset_hours": _Range(-12, 14, "hours east of UTC"),
            "folds": _Range(2, why="folds of whole sites held out"),
            "threads": _ONE_OR_MORE,
        })  # fmt: skip


@dataclass(frozen=True)
class GridSpec:
    """The output grid: a CRS, bounds (left, bottom, right, top) and a pixel size.

    GPP_M is made on the coarse grid, the same origin zoomed out 16 times (480 m pixels), so
    the grid must be whole 480 m blocks: its width and height are multiples of 480 m (at
    least one block: 16 x 16 pixels)."""

    crs: str
    """A projected CRS in metres (``EPSG:32652``, ``EPSG:5179``, WKT): the grid is in metres."""
    bounds: tuple[float, ...]
    """left, bottom, right, top in metres of ``crs``; width and height multiples of 480 m."""
    resolution: float = PIXEL_M
    """Pixel size in metres: 30 (the models are made for 30 m pixels in 480 m blocks)."""

    def _check(self) -> str | tuple[str, str] | None:
        problem = _metric_crs_problem(self.crs)
        if problem:
            return "crs", problem
        problem = _out_of_range(self, {})
        if problem:
            return problem
        if self.resolution != PIXEL_M:
            return "resolution", (
                f"must be {PIXEL_M:g} m, got {self.resolution:g}: the GPP models and the "
                f"downscaler are made for {PIXEL_M:g} m pixels and a {COARSE_M:g} m coarse grid "
                f"({COARSE_FACTOR} x {PIXEL_M:g} m)"
            )
        if len(self.bounds) != 4:
            return "bounds", f"must be [left, bottom, right, top], got {list(self.bounds)}"
        left, bottom, right, top = self.bounds
        if right <= left or top <= bottom:
            return "bounds", f"{list(self.bounds)} is empty (right <= left or top <= bottom)"
        width, height = right - left, top - bottom
        if not (_whole(width / COARSE_M) and _whole(height / COARSE_M)):
            fit = [
                left,
                bottom,
                left + _blocks(width) * COARSE_M,
                bottom + _blocks(height) * COARSE_M,
            ]
            return "bounds", (
                f"the grid is {width:g} m x {height:g} m; its width and height must be whole "
                f"multiples of {COARSE_M:g} m (the coarse grid of GPP_M: {COARSE_FACTOR} x "
                f"{PIXEL_M:g} m pixels), e.g. {[round(v, 3) for v in fit]}"
            )
        return None

    @property
    def geobox(self):
        from affine import Affine
        from odc.geo.geobox import GeoBox

        left, bottom, right, top = self.bounds
        shape = (round((top - bottom) / self.resolution), round((right - left) / self.resolution))
        transform = Affine(self.resolution, 0, left, 0, -self.resolution, top)
        return GeoBox(shape, transform, self.crs)


def _whole(blocks: float) -> bool:
    return abs(blocks - round(blocks)) <= 1e-6


def _blocks(size: float) -> int:
    """The whole number of coarse blocks nearest ``size`` metres (at least one)."""
    return max(1, round(size / COARSE_M))


def _metric_crs_problem(text: str) -> str | None:
    """Why ``text`` cannot be the CRS of a grid in metres, or ``None``."""
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        crs = CRS.from_user_input(text)
    except CRSError as err:
        why = str(err).split("(Internal Proj Error: ")[-1].rstrip(")")
        return f"{text!r} is not a coordinate reference system PROJ knows ({why})"
    if not crs.is_projected:
        kind = "geographic (degrees)" if crs.is_geographic else "not projected"
        return (f"{text} is {kind}, but grid.bounds and grid.resolution are in metres; use a "
                "projected CRS such as the UTM zone (EPSG:326xx) or EPSG:5179")  # fmt: skip
    units = {axis.unit_name for axis in crs.axis_info}
    if not units <= {"metre", "meter"}:
        return (f"{text} has axes in {', '.join(sorted(units))}, but grid.bounds and "
                "grid.resolution are in metres")  # fmt: skip
    return None


@dataclass(frozen=True)
class DownscaleSpec:
    """Step 2: the diffusion downscaler (a small configuration trains on 2 CPU cores)."""

    test: Period
    output: str
    """Folder of the checkpoints, training pairs and evaluation."""
    train: Period | None = None
    """Pairs for training come from these days (default: the GPP models' training period)."""
    truth: str | None = None
    """A demo world's truth store (evaluation only)."""
    min_clear_fraction: float = 0.3
    """HLS dates used as pairs need this much of the region clear (0-1)."""
    steps: int = 1500
    """Training steps (at least 1)."""
    batch: int = 8
    patch: int = 64
    """Side of the square training patches in 30 m pixels (at least 16: one 480 m block)."""
    base: int = 24
    """Channels of the network's first level: a multiple of 8 (its group norms split every
    level's channels in 8 groups)."""
    samples: int = 4
    ddim_steps: int = 25
    tile: int = 128
    """Side of the square inference tiles in pixels (at least 16: one 480 m block)."""
    overlap: int = 32
    """Pixels shared by neighbouring tiles, blended: 0 to ``tile / 2``."""
    seed: int = 0
    """0 to 9 999 999."""
    max_eval_dates: int = 6
    """Evaluate on at most this many test dates (the clearest)."""
    threads: int = 1
    """torch threads for training and evaluation. Set, not inherited: beside busy Dask
    workers on a 2-core machine, torch's default (all cores) made a training step 4.6–5.8
    times slower than one thread."""
    reference_min_clear: float = 0.01
    """Fusion: HLS dates with at least this much of the region clear feed the last-clear
    GPP_L reference (training and evaluation; the product takes every clear pixel)."""
    reference_days: int = 120
    """Fusion: a pixel's last clear GPP_L older than this many days counts as none."""
    calibration_fraction: float = 0.2
    """Fusion: the share of the training dates (one in ``1 / calibration_fraction``, spread
    over the period) kept out of the residual's training to calibrate the ensemble's mean
    weight and spread (0 to 0.5)."""
    training_window: int = 256
    """Side in 30 m pixels of the square windows training draws from a large grid (whole 480 m
    blocks, at least ``patch``)."""
    training_windows: int = 16
    """Training draws at most this many windows, seeded, where the catalog covers the grid; a
    grid of at most ``training_windows`` × ``training_window``² pixels is taken whole. What
    training holds in memory is bounded by them, not by the grid."""

    def _check(self) -> tuple[str, str] | None:
        if self.base < 8 or self.base % 8:
            return "base", (f"must be a multiple of 8 (the network's group norms split every "
                            f"level's channels in 8 groups), got {self.base}")  # fmt: skip
        if self.training_window % COARSE_FACTOR or self.training_window < self.patch:
            return "training_window", (
                f"must be a multiple of {COARSE_FACTOR} px (whole 480 m blocks) and at least "
                f"patch ({self.patch}), got {self.training_window}"
            )
        return _out_of_range(self, {
            "min_clear_fraction": _FRACTION, "steps": _ONE_OR_MORE, "batch": _ONE_OR_MORE,
            "patch": _Range(COARSE_FACTOR, why=_TILE_WHY.replace("tile", "patch")),
            "samples": _ONE_OR_MORE, "ddim_steps": _ONE_OR_MORE, "seed": _SEED,
            "max_eval_dates": _ONE_OR_MORE, "threads": _ONE_OR_MORE,
            "reference_min_clear": _FRACTION, "reference_days": _ONE_OR_MORE,
            "calibration_fraction": _Range(0, 0.5), "training_windows": _ONE_OR_MORE,
        }) or _tiling_problem(self)  # fmt: skip


@dataclass(frozen=True)
class EvaluationSpec:
    """``unique-cube evaluate``: the downscalers and the daily product scored on
    ``downscale.test`` (every clear HLS date, every day or a systematic sample, by stratum)."""

    output: str
    """Folder of ``evaluation.json``, its figures and the product days made for the
    evaluation (``product/``: never the published product)."""
    min_clear_fraction: float = 0.05
    """An HLS date is scored against GPP_L when this much of the region is clear (0-1)."""
    members: int = 8
    """Ensemble members of S1 and S2 on the clear dates (at least 2: a spread needs two, and
    a spread-skill figure eight or more)."""
    daily_every: int = 1
    """The daily product is made and scored on 1 day in this many of the test period (a
    fixed systematic sample from its first day; 1: every day; ``evaluate --full`` makes it
    1). Take it odd: with 2, 4 or 8 the sample meets the 8-day HLS revisit on none or on
    half of its days, so the days since the last clear pixel are not sampled evenly."""
    history_days: int = 96
    """HLS dates this far before the test period are read for the days since each pixel's
    last clear 30 m observation (older is counted as the oldest bin)."""
    holdout: bool = True
    """Also train the product's scheme on the western half of the region and score it on the
    eastern half (bilinear and the full-region model scored there beside it)."""
    threads: int = 2
    """torch threads of the evaluation's sampling and hold-out training (set, not inherited;
    nothing else computes beside them)."""
    tower_window: int = 7
    """Side in 30 m pixels of the window centred on a held-out tower (``flux.hold_out_region``)
    whose mean product GPP is scored against the tower's (odd; 7: 210 m, most of a flux
    footprint)."""

    def _check(self) -> tuple[str, str] | None:
        problem = _out_of_range(self, {
            "min_clear_fraction": _FRACTION, "members": _Range(2, why="a spread needs two"),
            "daily_every": _ONE_OR_MORE, "history_days": _Range(0, 366),
            "threads": _ONE_OR_MORE,
            "tower_window": _Range(1, 63, "a flux footprint spans a few hundred metres"),
        })  # fmt: skip
        if problem is None and self.tower_window % 2 == 0:
            return "tower_window", (f"must be odd (a window centred on the tower's pixel), got "
                                    f"{self.tower_window}")  # fmt: skip
        return problem


@dataclass(frozen=True)
class ProductSpec:
    """The daily product (``unique-cube run``): where it goes and how each day is made."""

    output: str
    """Product folder: Zarr datacube, COGs, STAC catalog, run logs."""
    scheme: str = "fusion"
    """``fusion`` (the last clear GPP_L per pixel and the GPP_M change since, a LightGBM mean
    and a calibrated diffusion residual; falls back to S2, S1, bilinear where it has no
    reference), the paper's ``s2`` (GPP_M, DEM, land cover) or ``s1`` (GPP_M), or
    ``bilinear``."""
    samples: int = 4
    """Ensemble members per day: the mean is the product, their spread its uncertainty."""
    ddim_steps: int = 10
    tile: int = 256
    """Side of the square inference tiles in pixels (at least 16: one 480 m block)."""
    overlap: int = 32
    """Pixels shared by neighbouring tiles, blended: 0 to ``tile / 2``."""
    seed: int = 0
    """Sampling seed (0 to 9 999 999); each day's seed is derived from it and the date
    (re-runs are identical)."""
    coarse_consistency: bool = False
    """Shift each 480 m block of the 30 m map so that its mean equals GPP_M (the mismatch
    before and after is recorded either way)."""
    max_gap_days: int = 45
    """When clear MODIS days are further apart than the GPP model's ``gap_fill_days`` (a
    monsoon), indices are still interpolated across gaps up to this long (flagged; 0-366)."""
    max_missing_fraction: float = 0.5
    """Skip a day when GPP_M is missing (no MODIS within the gap-fill window) on more of the
    grid inside the MODIS footprints than this; below it, missing coarse pixels take their
    nearest neighbour's GPP_M. A run refuses a grid with more than this outside every MODIS
    footprint; the pixels outside (below it) are left empty, never filled."""
    max_lost_fraction: float = 0.05
    """A day fails (and is redone by the next run) when input reads that stayed unreadable after
    their retries (a 404, a corrupt or truncated file) cover more of its grid than this; below
    it, their pixels are produced through the fallback chain and flagged ``input_lost``."""
    read_retries: int = 3
    """Retries of a failed asset read (each with a freshly signed URL) before it is lost."""
    block_days: int = 31
    """GPP_M is computed for this many consecutive days at once in a backfill (at least 1)."""
    max_backfill_days: int = 366
    """A run whose days span more than this is refused before anything is done (the
    ``product.period`` of ``unique-cube demo`` too). 366: a whole year, leap or not, in one
    run, the unit the datacube grows by; a longer span is more often a mistyped ``--start``
    (1923 for 2023: thousands of skipped days) than a plan. Run a longer backfill year by
    year: each run keeps the days already done."""
    window: int = 2048
    """A day is made in square windows of this many 30 m pixels, so memory follows the window,
    not the grid; the maps do not depend on it. A multiple of the datacube's 128 px chunks; a
    multiple of its 512 px shards writes each shard once per day."""
    zarr_layout: str = "sharded"
    """The datacube's layout: ``sharded`` (Zarr v3, chunks of 1 day × 128 × 128 in shard files
    of 8 days × 512 × 512: few files, for object stores) or ``unsharded`` (Zarr v2, plain
    chunks of 1 day × 512 × 512 that GDAL ≥ 3.4 and QGIS read; GDAL 3.10 reads no Zarr v3
    array that zarr-python writes). A product folder keeps the layout it was made with."""
    time_zone: str = "Asia/Seoul"
    """Where "yesterday" is computed."""
    final_after_days: int = 16
    """A day is made *final* (MODIS gaps filled from both sides; the 30 m reference as
    ``final_reference`` says) once this many days have passed; before that it is
    *near-real-time* (inputs up to the day only). 16: HLS items arrive 2-5 days after the
    overpass and MODIS is reprocessed within about two weeks (1 to 366)."""
    final_reference: str = "before"
    """A final day's fusion reference: ``before`` (the last clear GPP_L before the day, as a
    near-real-time day's; its MODIS gaps are still filled from both sides) or ``nearest``
    (each pixel's nearest clear GPP_L on either side). ``before`` by default: the fusion mean
    is trained with references before the date only, and with ``nearest`` the compact
    world's final days scored RMSE 1.546 against 1.396 (``benchmarks/nrt_vs_final.py``)."""
    period: Period | None = None
    """Days ``unique-cube demo`` produces (a run names its own days)."""
    lock_timeout_s: float = 600.0
    """How long a run waits for a day (or the shared store) held by another run (at least 0
    seconds)."""
    cpu_threads: int = 2
    """Threads of each Dask CPU worker of a local cluster (array work)."""
    torch_threads: int = 2
    """torch threads of a downscaler actor sampling on the CPU (ignored on a GPU)."""

    def _check(self) -> str | tuple[str, str] | None:
        if self.scheme not in ("fusion", "s1", "s2", "bilinear"):
            return "scheme", f"must be fusion, s2, s1 or bilinear, got {self.scheme!r}"
        if self.final_reference not in ("nearest", "before"):
            return "final_reference", f"must be nearest or before, got {self.final_reference!r}"
        problem = _out_of_range(self, {
            "samples": _ONE_OR_MORE, "ddim_steps": _ONE_OR_MORE, "seed": _SEED,
            "max_gap_days": _GAP_DAYS, "max_missing_fraction": _FRACTION,
            "max_lost_fraction": _FRACTION, "read_retries": _NONE_OR_MORE,
            "block_days": _ONE_OR_MORE, "max_backfill_days": _ONE_OR_MORE,
            "lock_timeout_s": _NONE_OR_MORE, "cpu_threads": _ONE_OR_MORE,
            "torch_threads": _ONE_OR_MORE,
            "final_after_days": _Range(1, 366, "a day is made final within a year"),
        }) or _tiling_problem(self)  # fmt: skip
        if problem:
            return problem
        if self.zarr_layout not in ("sharded", "unsharded"):
            return "zarr_layout", f"must be sharded or unsharded, got {self.zarr_layout!r}"
        if self.window < 128 or self.window % 128:
            return "window", (f"window must be a multiple of 128 (the datacube's chunks), got "
                              f"{self.window}")  # fmt: skip
        if self.period is not None:
            span = (self.period.end - self.period.start).days + 1
            if span > self.max_backfill_days:
                return "period", (f"spans {span} days, more than max_backfill_days "
                                  f"({self.max_backfill_days})")  # fmt: skip
        try:
            import zoneinfo

            zoneinfo.ZoneInfo(self.time_zone)
        except Exception:
            return (
                "time_zone",
                f"unknown time zone {self.time_zone!r} (an IANA name like Asia/Seoul)",
            )
        return None


@dataclass(frozen=True)
class Pipeline:
    """A run of unique_cube."""

    name: str
    catalog: str
    """Catalog name (``catalogs/<name>.yaml``) or path."""
    flux: FluxSpec
    gpp: GppSpec
    grid: GridSpec | None = None
    downscale: DownscaleSpec | None = None
    product: ProductSpec | None = None
    evaluation: EvaluationSpec | None = None
    serve_world: str | None = None
    """A demo world folder to serve on 127.0.0.1 for the run (its URL replaces the catalog's)."""
    stac_url: str | None = None
    """Override the catalog's STAC API URL."""
    path: str = field(default="", compare=False)

    def _check(self) -> tuple[str, str] | None:
        if self.flux.hold_out_region and self.grid is None:
            return "flux", ("hold_out_region is true but there is no grid section: the towers "
                            "held out are those inside the grid")  # fmt: skip
        return None

    def require(self, *sections: str, command: str) -> None:
        """Raise :class:`~unique_cube.errors.ConfigError` unless every section ``command``
        needs is present (and, for a product made by a downscaler, the downscale section)."""
        missing = [name for name in sections if getattr(self, name) is None]
        product = self.product if "product" in sections else None
        if product is not None and product.scheme != "bilinear" and self.downscale is None:
            missing.append(f"downscale (product.scheme is {product.scheme})")
        if missing:
            raise ConfigError(
                f"{self.path or self.name}: `{command}` needs the {' and '.join(sections)} "
                f"sections; {' and '.join(missing)} missing"
            )


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and validate a pipeline YAML file."""
    data = read_yaml(path, located=True)
    return dataclasses.replace(build(Pipeline, data, file=path), path=str(path))


def validate_pipeline(path: str | Path) -> list[str]:
    """Check a pipeline without running it: keys, types and ranges, the catalog and every
    source the stages name, the grid's CRS and its 480 m blocks, the time zone, the product
    folder and ``product.period`` against ``product.max_backfill_days``. Returns a summary;
    raises :class:`~unique_cube.errors.ConfigError` at the first problem. What needs the STAC
    API (whether the inputs cover the grid and the days) is checked by ``run`` before it
    makes a day."""
    from pyproj import CRS

    pipeline = load_pipeline(path)
    catalog = load_catalog(pipeline.catalog)
    gpp = pipeline.gpp
    names = {"gpp.modis.source": gpp.modis.source, "gpp.landsat.source": gpp.landsat.source,
             "gpp.weather": gpp.weather}  # fmt: skip
    if pipeline.downscale is not None:
        names.update({"(S2) dem": "dem", "(S2) worldcover": "worldcover"})
    for key, source in names.items():
        try:
            catalog.source(source)
        except KeyError as err:
            raise ConfigError(f"{path}: {key}: {err}") from None
    lines = [f"pipeline {pipeline.name}: catalog {catalog.name} with "
             f"{', '.join(sorted(set(names.values())))}"]  # fmt: skip
    if pipeline.grid is not None:
        crs = CRS.from_user_input(pipeline.grid.crs)  # checked when loaded
        ny, nx = pipeline.grid.geobox.shape
        lines.append(f"grid: {crs.to_string()}, {nx} x {ny} pixels of {PIXEL_M:g} m "
                     f"({nx * ny / 1e6:.1f} Mpx; GPP_M on {nx // COARSE_FACTOR} x "
                     f"{ny // COARSE_FACTOR} pixels of {COARSE_M:g} m)")  # fmt: skip
    spec = pipeline.downscale
    if spec is not None and pipeline.grid is not None:
        shape = pipeline.grid.geobox.shape
        where = ("the whole grid" if taken_whole(shape, spec.training_window,
                                                 spec.training_windows) else
                 f"{spec.training_windows} windows of {spec.training_window} px where HLS and "
                 "MODIS cover the grid (evaluation: as many others)")  # fmt: skip
        lines.append(f"downscale: {spec.output} (trains on {where})")
    product = pipeline.product
    if product is not None:
        pipeline.require("grid", "product", command="unique-cube run")
        out = Path(product.output)
        parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise ConfigError(f"{path}: product.output {out}: {parent} is not a writable folder")
        rows, cols = (-(-n // product.window) for n in pipeline.grid.geobox.shape)
        lines.append(f"product: {out} ({product.scheme}, {product.samples} members, "
                     f"time zone {product.time_zone}; a day in {rows} x {cols} windows of "
                     f"{product.window} px; backfills of at most {product.max_backfill_days} "
                     "days)")  # fmt: skip
    evaluation = pipeline.evaluation
    if evaluation is not None:
        pipeline.require("grid", "downscale", "product", "evaluation",
                         command="unique-cube evaluate")  # fmt: skip
        test = pipeline.downscale.test
        towers = (f"; towers inside the grid held out of training, the product's "
                  f"{evaluation.tower_window} x {evaluation.tower_window} px window scored "
                  "at them" if pipeline.flux.hold_out_region else "")  # fmt: skip
        lines.append(f"evaluation: {evaluation.output} (every HLS date >= "
                     f"{evaluation.min_clear_fraction:.0%} clear, {evaluation.members} members; "
                     f"the product on 1 day in {evaluation.daily_every} of "
                     f"{test.start}..{test.end}{towers})")  # fmt: skip
    models = Path(gpp.output)
    trained = [p.name for p in [models / "gpp_modis.model", models / "gpp_landsat.model"]
               if p.exists()]  # fmt: skip
    if pipeline.downscale is not None:
        trained += [p.name for p in Path(pipeline.downscale.output).glob("downscaler_*.pt")]
    lines.append(f"models present: {', '.join(trained) if trained else 'none yet (train first)'}")
    return lines

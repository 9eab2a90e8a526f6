"""Pipeline specs (``pipelines/*.yaml``): what a run reads, trains and writes.

Loaded into frozen dataclasses by :mod:`unique_cube.config.yamlconf`, so a bad file fails with the
file, the key and what was expected. Relative paths are relative to the working directory
(the repository root when run through ``make``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from unique_cube.config.catalog import load_catalog
from unique_cube.config.yamlconf import build, read_yaml
from unique_cube.errors import ConfigError

__all__ = [
    "LEARNERS",
    "DownscaleSpec",
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
    """Days with NEE_VUT_REF_QC below this are dropped."""


@dataclass(frozen=True)
class ModelSpec:
    """One GPP model: its satellite source and how tower windows are accepted."""

    source: str
    """Source name in the pipeline's catalog."""
    min_clear: int = 1
    """Clear pixels (of the 3×3 window) a day needs."""
    gap_fill_days: int = 0
    """Fill index gaps in time up to this many days (0: clear days only)."""


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
    folds: int = 20
    learners: tuple[str, ...] = LEARNERS
    threads: int = 2
    """Threads of LightGBM training and of the local Dask computations of GPP maps (tower
    tables, the downscaler's pairs)."""

    def _check(self) -> str | None:
        unknown = [name for name in self.learners if name not in LEARNERS]
        if unknown:
            return f"unknown learner(s) {unknown}; expected some of {list(LEARNERS)}"
        if self.folds < 2:
            return f"folds must be at least 2, got {self.folds}"
        return None


@dataclass(frozen=True)
class GridSpec:
    """The output grid: a CRS, bounds (left, bottom, right, top) and a pixel size."""

    crs: str
    """A projected CRS in metres (``EPSG:32652``, ``EPSG:5179``, WKT): the grid is in metres."""
    bounds: tuple[float, ...]
    resolution: float = 30.0
    """Pixel size in metres."""

    def _check(self) -> str | tuple[str, str] | None:
        problem = _metric_crs_problem(self.crs)
        if problem:
            return "crs", problem
        if not self.resolution > 0:
            return "resolution", f"must be a positive number of metres, got {self.resolution}"
        if len(self.bounds) != 4:
            return f"bounds must be [left, bottom, right, top], got {list(self.bounds)}"
        left, bottom, right, top = self.bounds
        if right <= left or top <= bottom:
            return f"bounds {list(self.bounds)} are empty (right <= left or top <= bottom)"
        for size in (right - left, top - bottom):
            if abs(size / self.resolution - round(size / self.resolution)) > 1e-6:
                return f"bounds are not a whole number of {self.resolution} m pixels"
        return None

    @property
    def geobox(self):
        from affine import Affine
        from odc.geo.geobox import GeoBox

        left, bottom, right, top = self.bounds
        shape = (round((top - bottom) / self.resolution), round((right - left) / self.resolution))
        transform = Affine(self.resolution, 0, left, 0, -self.resolution, top)
        return GeoBox(shape, transform, self.crs)


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
    """HLS dates used as pairs need this much of the region clear."""
    steps: int = 1500
    batch: int = 8
    patch: int = 64
    base: int = 24
    samples: int = 4
    ddim_steps: int = 25
    tile: int = 128
    overlap: int = 32
    seed: int = 0
    max_eval_dates: int = 6
    """Evaluate on at most this many test dates (the clearest)."""
    threads: int = 1
    """torch threads for training and evaluation. Set, not inherited: beside busy Dask
    workers on a 2-core machine, torch's default (all cores) made a training step 4.6–5.8
    times slower than one thread."""


@dataclass(frozen=True)
class ProductSpec:
    """The daily product (``unique-cube run``): where it goes and how each day is made."""

    output: str
    """Product folder: Zarr datacube, COGs, STAC catalog, run logs."""
    scheme: str = "s2"
    """Downscaler: ``s2``, ``s1`` (checkpoints in ``downscale.output``) or ``bilinear``."""
    samples: int = 4
    """Ensemble members per day: the mean is the product, their spread its uncertainty."""
    ddim_steps: int = 10
    tile: int = 256
    overlap: int = 32
    seed: int = 0
    """Sampling seed; each day's seed is derived from it and the date (re-runs are identical)."""
    coarse_consistency: bool = False
    """Shift each 480 m block of the 30 m map so that its mean equals GPP_M (the mismatch
    before and after is recorded either way)."""
    max_gap_days: int = 45
    """When clear MODIS days are further apart than the GPP model's ``gap_fill_days`` (a
    monsoon), indices are still interpolated across gaps up to this long (flagged)."""
    max_missing_fraction: float = 0.5
    """Skip a day when GPP_M is missing (no MODIS within the gap-fill window) on more of the
    grid than this; below it, missing coarse pixels take their nearest neighbour's GPP_M."""
    max_lost_fraction: float = 0.05
    """A day fails (and is redone by the next run) when input reads that stayed unreadable after
    their retries (a 404, a corrupt or truncated file) cover more of its grid than this; below
    it, their pixels are produced through the fallback chain and flagged ``input_lost``."""
    read_retries: int = 3
    """Retries of a failed asset read (each with a freshly signed URL) before it is lost."""
    block_days: int = 31
    """GPP_M is computed for this many consecutive days at once in a backfill."""
    window: int = 2048
    """A day is made in square windows of this many 30 m pixels, so memory follows the window,
    not the grid; the maps do not depend on it. A multiple of the datacube's 128 px chunks; a
    multiple of its 512 px shards writes each shard once per day."""
    time_zone: str = "Asia/Seoul"
    """Where "yesterday" is computed."""
    period: Period | None = None
    """Days ``unique-cube demo`` produces (a run names its own days)."""
    lock_timeout_s: float = 600.0
    cpu_threads: int = 2
    """Threads of each Dask CPU worker of a local cluster (array work)."""
    torch_threads: int = 2
    """torch threads of a downscaler actor sampling on the CPU (ignored on a GPU)."""

    def _check(self) -> str | None:
        if self.scheme not in ("s1", "s2", "bilinear"):
            return f"scheme must be s1, s2 or bilinear, got {self.scheme!r}"
        if self.samples < 1 or self.ddim_steps < 1:
            return "samples and ddim_steps must be at least 1"
        if not 0 <= self.max_missing_fraction <= 1:
            return f"max_missing_fraction must be within [0, 1], got {self.max_missing_fraction}"
        if not 0 <= self.max_lost_fraction <= 1:
            return f"max_lost_fraction must be within [0, 1], got {self.max_lost_fraction}"
        if self.read_retries < 0:
            return f"read_retries must be at least 0, got {self.read_retries}"
        if self.window < 128 or self.window % 128:
            return f"window must be a multiple of 128 (the datacube's chunks), got {self.window}"
        try:
            import zoneinfo

            zoneinfo.ZoneInfo(self.time_zone)
        except Exception:
            return f"unknown time zone {self.time_zone!r} (an IANA name like Asia/Seoul)"
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
    serve_world: str | None = None
    """A demo world folder to serve on 127.0.0.1 for the run (its URL replaces the catalog's)."""
    stac_url: str | None = None
    """Override the catalog's STAC API URL."""
    path: str = field(default="", compare=False)

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
    """Check a pipeline without running it: keys and types, the catalog and every source the
    stages name, the grid's CRS, the time zone, the product folder. Returns a summary; raises
    :class:`~unique_cube.errors.ConfigError` at the first problem."""
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
        lines.append(f"grid: {crs.to_string()}, {nx} x {ny} pixels of {pipeline.grid.resolution} m "
                     f"({nx * ny / 1e6:.1f} Mpx)")  # fmt: skip
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
                     f"{product.window} px)")  # fmt: skip
    models = Path(gpp.output)
    trained = [p.name for p in [models / "gpp_modis.model", models / "gpp_landsat.model"]
               if p.exists()]  # fmt: skip
    if pipeline.downscale is not None:
        trained += [p.name for p in Path(pipeline.downscale.output).glob("downscaler_s?.pt")]
    lines.append(f"models present: {', '.join(trained) if trained else 'none yet (train first)'}")
    return lines

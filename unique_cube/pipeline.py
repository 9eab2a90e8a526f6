"""Pipeline specs (``pipelines/*.yaml``): what a run reads, trains and writes.

Loaded into frozen dataclasses by :mod:`unique_cube.yamlconf`, so a bad file fails with the
file, the key and what was expected. Relative paths are relative to the working directory
(the repository root when run through ``make``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from .yamlconf import build, read_yaml

__all__ = [
    "DownscaleSpec",
    "FluxSpec",
    "GppSpec",
    "GridSpec",
    "ModelSpec",
    "Period",
    "Pipeline",
    "load_pipeline",
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
    weather: str = "era5"
    """Source name of the reanalysis."""
    utc_offset_hours: float = 9.0
    folds: int = 20
    learners: tuple[str, ...] = LEARNERS
    output: str = "demo-output/models"
    threads: int = 2

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
    bounds: tuple[float, ...]
    resolution: float = 30.0

    def _check(self) -> str | None:
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


@dataclass(frozen=True)
class DownscaleSpec:
    """Step 2: the diffusion downscaler (a small configuration trains on 2 CPU cores)."""

    test: Period
    output: str = "demo-output/downscaler"
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
    serve_world: str | None = None
    """A demo world folder to serve on 127.0.0.1 for the run (its URL replaces the catalog's)."""
    stac_url: str | None = None
    """Override the catalog's STAC API URL."""
    path: str = field(default="", compare=False)


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and validate a pipeline YAML file."""
    data = dict(read_yaml(path))
    data["path"] = str(path)
    return build(Pipeline, data, file=path)

"""unique_cube: daily 30 m gross primary productivity maps from STAC datacubes.

One subpackage per stage, in the order data flows through them:

``config``
    catalog and pipeline YAML files → frozen dataclasses (errors name file, key and line)
``inputs``
    STAC search → lazy xarray cubes (odc-stac), indices, weather, flux files, static layers
``grid``
    the 30 m grid, its 480 m coarse grid and the windows a day is made in
``gpp``
    step 1: features, tower tables, LightGBM training with spatial CV, lazy prediction
``downscale``
    step 2: the conditional diffusion downscaler, its training pairs, evaluation, actors
``product``
    the daily product: days and backfills, per-day science in windows, Zarr/COG/STAC store

``report``, ``cli`` and ``errors`` sit at the top; ``demo`` generates and serves the
embedded demo world, and nothing in the stages above imports it.
"""

from __future__ import annotations

from unique_cube.config import Band, Catalog, QAFlag, QARules, Source, load_catalog
from unique_cube.errors import (
    CatalogError,
    ConfigError,
    EmptySearchError,
    LoadError,
    SearchFailedError,
    UniqueCubeError,
    UnknownCollectionError,
    UnknownSourceError,
)
from unique_cube.inputs import RetryPolicy, add_indices, load, search
from unique_cube.inputs.flux import read_flux, read_flux_dir
from unique_cube.version import __version__

__all__ = [
    "Band",
    "Catalog",
    "CatalogError",
    "ConfigError",
    "EmptySearchError",
    "LoadError",
    "QAFlag",
    "QARules",
    "RetryPolicy",
    "SearchFailedError",
    "Source",
    "UniqueCubeError",
    "UnknownCollectionError",
    "UnknownSourceError",
    "__version__",
    "add_indices",
    "load",
    "load_catalog",
    "read_flux",
    "read_flux_dir",
    "search",
]

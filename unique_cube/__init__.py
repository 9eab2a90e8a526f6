"""unique_cube: daily 30 m gross primary productivity maps from STAC datacubes.

The stages, each a module: ``catalog`` (STAC search), ``cube`` (lazy datacube loading),
``indices`` (vegetation indices); configuration in ``config`` (catalog files).
"""

from __future__ import annotations

__version__ = "0.1.0"

from .catalog import RetryPolicy, search
from .config import Band, Catalog, QAFlag, QARules, Source, load_catalog
from .cube import load
from .errors import (
    CatalogError,
    ConfigError,
    EmptySearchError,
    LoadError,
    SearchFailedError,
    UniqueCubeError,
    UnknownCollectionError,
    UnknownSourceError,
)
from .indices import add_indices

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
    "search",
]

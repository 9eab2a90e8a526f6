"""Exceptions raised by unique_cube, each with the exit code the CLI returns for it.

Every message says what was wrong and where (file and key, source and collection,
item id and asset), so that an operator can fix the input without reading code.
"""

from __future__ import annotations

__all__ = [
    "CatalogError",
    "ConfigError",
    "EmptySearchError",
    "LoadError",
    "SearchFailedError",
    "UniqueCubeError",
    "UnknownCollectionError",
    "UnknownSourceError",
]


class UniqueCubeError(Exception):
    """Base class of every error unique_cube raises on purpose."""

    exit_code = 1


class ConfigError(UniqueCubeError, ValueError):
    """A catalog or pipeline YAML file, or an argument, is malformed."""

    exit_code = 3


class UnknownSourceError(ConfigError, KeyError):
    """A source name that the catalog does not define."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CatalogError(UniqueCubeError):
    """A STAC search could not produce a complete answer."""

    exit_code = 4


class UnknownCollectionError(CatalogError):
    """The STAC API does not serve the collection a source names."""


class EmptySearchError(CatalogError):
    """A search matched no item (after cloud-cover filtering)."""


class SearchFailedError(CatalogError):
    """The STAC API kept failing after the retry budget was spent."""


class LoadError(UniqueCubeError):
    """Items cannot be turned into a cube (missing asset, no overlap, bad metadata)."""

    exit_code = 5

"""Exceptions raised by unique_cube, each with the exit code the CLI returns for it.

Every message says what was wrong and where (file and key, source and collection,
item id and asset), so that an operator can fix the input without reading code.

Exit codes by kind of failure (``unique_cube.cli``): 3 configuration or argument, 4 STAC
search, 5 load or store, 6 a product day or the cluster failed, 7 an unsafe model file refused.
"""

from __future__ import annotations

__all__ = [
    "ActorPoolError",
    "CatalogError",
    "ClusterError",
    "ConfigError",
    "DownscaleError",
    "EmptySearchError",
    "FluxError",
    "InputsLostError",
    "LoadError",
    "LockBusyError",
    "MissingModelError",
    "ModelError",
    "PurePixelError",
    "SearchFailedError",
    "StoreError",
    "UniqueCubeError",
    "UnknownCollectionError",
    "UnknownSourceError",
    "UnsafeCheckpointError",
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


class UnsafeCheckpointError(UniqueCubeError):
    """A model file that would run code when unpickled (it imports functions or classes that a
    file of weights never needs); it was refused before anything in it ran.

    Not a :class:`ConfigError`: a checkpoint that carries code points at tampering or at a file
    from an untrusted source, which an operator must look into, not merely retrain.
    """

    exit_code = 7


class ModelError(UniqueCubeError):
    """A model file, card or feature set is unusable."""

    exit_code = 3


class DownscaleError(UniqueCubeError):
    """A checkpoint or input the downscaler cannot use."""

    exit_code = 3


class PurePixelError(UniqueCubeError, ValueError):
    """An input or saved model the pure-pixel baseline cannot use."""

    exit_code = 3


class FluxError(UniqueCubeError):
    """A flux file or site table is unusable (names the file, site or column)."""

    exit_code = 3


class StoreError(UniqueCubeError):
    """The product folder cannot be written or does not hold this product."""

    exit_code = 5


class LockBusyError(StoreError):
    """Another run holds the lock (of a day) for longer than we wait."""


class ClusterError(UniqueCubeError):
    """The Dask cluster cannot do the work (scheduler unreachable, workers gone)."""

    exit_code = 6


class ActorPoolError(ClusterError):
    """The pool cannot keep a downscaler actor alive (no GPU worker, tiles lost too often)."""


class InputsLostError(LoadError):
    """Input reads that failed after their retries cover too much of a day's grid."""


class MissingModelError(ConfigError):
    """The pipeline names a model that has not been trained."""

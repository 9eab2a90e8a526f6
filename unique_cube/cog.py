"""Cloud-optimised GeoTIFFs: one writer for the demo world's inputs and the product's outputs.

GDAL's COG driver does the layout (internal tiles, overviews, nodata, ZSTD); the file is
written beside its final name and renamed into place, so a reader never sees half a COG.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

__all__ = ["write_cog"]


def write_cog(
    path: str | Path,
    array: np.ndarray,
    crs: str,
    transform: Iterable[float],
    nodata: float | None,
    resampling: str = "nearest",
    *,
    tags: dict[str, str] | None = None,
    blocksize: int = 512,
) -> None:
    """Write one single-band COG (ZSTD, ``blocksize`` tiles, overviews when larger than a tile)."""
    import rasterio
    from affine import Affine

    path = Path(path)
    profile = {
        "driver": "COG",
        "width": array.shape[1],
        "height": array.shape[0],
        "count": 1,
        "dtype": array.dtype.name,
        "crs": crs,
        "transform": Affine(*list(transform)[:6]),
        "nodata": nodata,
        "blocksize": blocksize,
        "compress": "zstd",
        "overview_resampling": resampling,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with rasterio.open(partial, "w", **profile) as dst:
            dst.write(array, 1)
            if tags:
                dst.update_tags(**tags)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)

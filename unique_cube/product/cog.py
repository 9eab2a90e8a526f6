"""Cloud-optimised GeoTIFFs: one writer for the demo world's inputs and the product's outputs.

GDAL's COG driver does the layout (internal tiles, overviews, nodata, ZSTD); the file is
written beside its final name and renamed into place, so a reader never sees half a COG.
A :class:`Band` names the band and its unit in the file itself (GDAL keeps them in the
GeoTIFF's own metadata tag, which the COG copy carries over), so QGIS, titiler and gdalinfo
show ``gpp [g m-2 day-1]``, not ``Band 1``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unique_cube.files import partial_path, write_atomic

__all__ = ["COPY_CACHE_MB", "Band", "StagedCog", "write_cog"]


#: GDAL's block cache (MB) while a staged raster is copied into a COG.
COPY_CACHE_MB = 64


@dataclass(frozen=True)
class Band:
    """What a COG says of its one band besides the pixels and nodata."""

    description: str
    """The band's name in GDAL (``gdalinfo``'s ``Description``; QGIS and titiler show it)."""
    units: str = ""
    """Its unit (UDUNITS, as the CF ``units``); empty for flags and counts."""
    scale: float = 1.0
    """Physical value = ``scale`` × pixel + ``offset``."""
    offset: float = 0.0
    """See :attr:`scale`."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """The band's metadata (``gdalinfo``'s band ``Metadata``), e.g. CF ``flag_masks`` and
    ``flag_meanings`` of a QA band."""

    def apply(self, dataset) -> None:
        """Set on band 1 of ``dataset`` (a rasterio dataset open for writing)."""
        dataset.set_band_description(1, self.description)
        if self.units:
            dataset.set_band_unit(1, self.units)
        dataset.scales, dataset.offsets = (self.scale,), (self.offset,)
        if self.tags:
            dataset.update_tags(1, **self.tags)


def write_cog(
    path: str | Path,
    array: np.ndarray,
    crs: str,
    transform: Iterable[float],
    nodata: float | None,
    resampling: str = "nearest",
    *,
    tags: dict[str, str] | None = None,
    band: Band | None = None,
    blocksize: int = 512,
) -> None:
    """Write one single-band COG (ZSTD, ``blocksize`` tiles, overviews when larger than a
    tile); ``tags`` are the file's metadata, ``band`` names its band."""
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
    with write_atomic(path) as partial, rasterio.open(partial, "w", **profile) as dst:
        dst.write(array, 1)
        if tags:
            dst.update_tags(**tags)
        if band is not None:
            band.apply(dst)


class StagedCog:
    """A COG too large to hold in memory, written window by window, put in place at commit.

    The windows go into a tiled GeoTIFF beside the final name (``.NAME.PID.stage.partial``);
    :meth:`finish` has GDAL's COG driver copy it into a COG beside the name
    (``.NAME.PID.ready.partial``; overviews made from the staged file, block by block);
    :meth:`place` renames that into place. Until then no reader sees the name (an older COG
    stays); a process killed meanwhile leaves only ``.partial`` files, which the next run of
    the day removes. The staged file can be read back (:meth:`read`) until it is placed."""

    def __init__(
        self,
        path: str | Path,
        shape: tuple[int, int],
        dtype: str,
        crs: str,
        transform: Iterable[float],
        nodata: float | None,
        resampling: str = "nearest",
        *,
        tags: dict[str, str] | None = None,
        band: Band | None = None,
        blocksize: int = 512,
    ) -> None:
        import rasterio
        from affine import Affine

        self.path = Path(path)
        self.resampling, self.blocksize = resampling, blocksize
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stage = partial_path(self.path, ".stage")
        self.ready = partial_path(self.path, ".ready")
        self._dataset = rasterio.open(
            self.stage, "w", driver="GTiff", width=shape[1], height=shape[0], count=1,
            dtype=dtype, crs=crs, transform=Affine(*list(transform)[:6]), nodata=nodata,
            tiled=True, blockxsize=blocksize, blockysize=blocksize, compress="zstd",
            zstd_level=1, bigtiff="if_safer",
        )  # fmt: skip
        if tags:
            self._dataset.update_tags(**tags)
        if band is not None:
            band.apply(self._dataset)

    def write(self, array: np.ndarray, rows: slice, cols: slice) -> None:
        """Pixels ``rows × cols`` of the raster."""
        self._dataset.write(array, 1, window=_window(rows, cols))

    def finish(self) -> Path:
        """The COG beside its name (:attr:`ready`), made from the staged file, which is kept
        for :meth:`read`; returns where the COG is."""
        import rasterio.shutil

        self._dataset.close()
        # GDAL's block cache is 5 % of the machine's memory by default; the copy reads the
        # staged file once in block order, so a small cache bounds memory and costs nothing.
        with write_atomic(self.ready) as partial, rasterio.Env(GDAL_CACHEMAX=COPY_CACHE_MB):
            rasterio.shutil.copy(self.stage, partial, driver="COG", blocksize=self.blocksize,
                                 compress="zstd", overview_resampling=self.resampling,
                                 bigtiff="if_safer")  # fmt: skip
        return self.ready

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        """Pixels ``rows × cols`` of the staged raster (after :meth:`finish`)."""
        import rasterio

        with rasterio.open(self.stage) as src:
            return src.read(1, window=_window(rows, cols))

    def place(self) -> None:
        """The finished COG under its name (replacing an older one); the staged file removed."""
        self.ready.replace(self.path)
        self.stage.unlink(missing_ok=True)

    def abort(self) -> None:
        """Nothing of this COG is left (an older COG under its name is kept)."""
        self._dataset.close()
        self.stage.unlink(missing_ok=True)
        self.ready.unlink(missing_ok=True)


def _window(rows: slice, cols: slice):
    from rasterio.windows import Window

    return Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)

"""The daily product's outputs: a Zarr v3 datacube, one COG per day and variable, STAC items.

Layout of a product folder::

    gpp.zarr/                      Zarr v3 datacube (time, y, x) at 30 m, GPP_M on (time, y_m, x_m)
    cogs/YYYY/MM/DD/<var>.tif      one COG per day and variable
    stac/catalog.json              the STAC catalog → collection → one item per day
    stac/unique-cube-gpp/collection.json
    stac/unique-cube-gpp/items/<YYYY-MM-DD>.json
    state/<YYYY-MM-DD>.json        completion marker of a day, written last
    state/locks/                   advisory locks (a day; the shared store and catalog)
    runs/<timestamp>.json          what each run did, day by day
    cache/static/                  the DEM and land-cover layers of each window (reused)

The datacube has whole calendar years on its time axis (extended by whole years when a later
day comes); a day's region, written window by window, replaces exactly that day. Inner chunks
are one day of 128 × 128 pixels, gathered in shards of 8 days × 512 × 512: a map read touches
one day's chunks, a time-series read a few shards per year. A day's COGs are staged window by
window beside their names and assembled when its last window is in. Writers of the shared
parts (the Zarr shards, the collection) hold one lock; zarr's local store replaces each shard
file atomically, so a killed writer leaves every other day intact, and a day is done only once
its marker exists.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unique_cube.errors import LockBusyError, StoreError
from unique_cube.files import write_json
from unique_cube.product.cog import StagedCog, write_cog
from unique_cube.product.stac import product_collection, root_catalog, with_items
from unique_cube.product.variables import (
    COARSE_VARIABLES,
    COLLECTION_ID,
    FINE_COGS,
    GPP_STANDARD_NAME,
    GPP_UNITS,
    QA_FLAGS,
    QA_PATH_MASK,
    VARIABLES,
)
from unique_cube.version import __version__

__all__ = [
    "CHUNK",
    "COARSE_VARIABLES",
    "FINE_COGS",
    "GPP_STANDARD_NAME",
    "GPP_UNITS",
    "QA_FLAGS",
    "QA_PATH_MASK",
    "SHARD",
    "VARIABLES",
    "DayArrays",
    "DayWriter",
    "ProductStore",
    "locked",
    "marker_path",
]


CHUNK = (1, 128, 128)


SHARD = (8, 512, 512)


@contextlib.contextmanager
def locked(path: Path, timeout: float) -> Iterator[None]:
    """An advisory ``flock`` on ``path``: released by the kernel when its holder dies, so a
    crashed run never leaves a stale lock behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockBusyError(f"{path}: held by another run") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def marker_path(root: str | Path, day: dt.date) -> Path:
    """A day's completion marker in a product folder: the day is done once it exists."""
    return Path(root) / "state" / f"{day.isoformat()}.json"


@dataclass
class DayArrays:
    """One product day in memory."""

    day: dt.date
    gpp: np.ndarray
    gpp_sd: np.ndarray
    qa: np.ndarray
    gpp_m: np.ndarray


class ProductStore:
    """A product folder on the pipeline's 30 m grid (and its coarse grid for GPP_M)."""

    def __init__(self, root: str | Path, geobox, coarse, *, lock_timeout: float = 600.0):
        self.root = Path(root)
        self.geobox, self.coarse = geobox, coarse
        self.lock_timeout = lock_timeout
        self.zarr = self.root / "gpp.zarr"
        self.stac = self.root / "stac"
        self.state = self.root / "state"
        self._check_writable()

    # -- where things are --------------------------------------------------------------------

    def marker(self, day: dt.date) -> Path:
        return marker_path(self.root, day)

    def cog(self, day: dt.date, variable: str) -> Path:
        return self.root / "cogs" / f"{day:%Y/%m/%d}" / f"{variable}.tif"

    def item_path(self, day: dt.date) -> Path:
        return self.stac / COLLECTION_ID / "items" / f"{day.isoformat()}.json"

    def is_done(self, day: dt.date) -> bool:
        return self.marker(day).exists()

    @contextlib.contextmanager
    def day_lock(self, day: dt.date, timeout: float | None = None) -> Iterator[None]:
        """Held while a day is produced: a second run of the same day waits, then finds it done."""
        with locked(self.state / "locks" / f"{day.isoformat()}.lock",
                     self.lock_timeout if timeout is None else timeout):  # fmt: skip
            yield

    def _shared_lock(self):
        return locked(self.state / "locks" / "store.lock", self.lock_timeout)

    def _check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise StoreError(f"{self.root}: the product folder is not writable ({err})") from err
        if self.zarr.exists():
            attrs = self._zarr_attrs()
            grid = self._grid_attrs()
            if attrs.get("unique_cube_grid") != grid:
                raise StoreError(
                    f"{self.zarr} holds a product on another grid ({attrs.get('unique_cube_grid')}"
                    f"), not {grid}; give this pipeline its own product folder"
                )

    def _grid_attrs(self) -> dict:
        return {"crs": str(self.geobox.crs), "shape": list(self.geobox.shape),
                "transform": list(self.geobox.transform)[:6]}  # fmt: skip

    def _zarr_attrs(self) -> dict:
        import zarr

        return dict(zarr.open_group(self.zarr, mode="r").attrs)

    # -- the datacube ------------------------------------------------------------------------

    def _template(self, years: list[int]):
        import dask.array as da
        import pandas as pd
        import xarray as xr
        from odc.geo.xr import xr_coords

        days = pd.date_range(f"{years[0]}-01-01", f"{years[-1]}-12-31", freq="D")
        ny, nx = self.geobox.shape
        my, mx = self.coarse.shape
        fine = xr_coords(self.geobox, crs_coord_name="spatial_ref")
        coarse = xr_coords(self.coarse, crs_coord_name="spatial_ref")
        coords = {"time": days.values, **fine,
                  "y_m": coarse["y"].values, "x_m": coarse["x"].values}  # fmt: skip
        data = {}
        for name, (dtype, fill, attrs) in VARIABLES.items():
            array = da.full((len(days), ny, nx), 0 if fill is None else fill, dtype=dtype,
                            chunks=SHARD)  # fmt: skip
            data[name] = (("time", "y", "x"), array, {**attrs, "grid_mapping": "spatial_ref"})
        for name, (dtype, fill, attrs) in COARSE_VARIABLES.items():
            array = da.full((len(days), my, mx), fill, dtype=dtype, chunks=(SHARD[0], my, mx))
            data[name] = (("time", "y_m", "x_m"), array, {**attrs, "grid_mapping": "spatial_ref"})
        ds = xr.Dataset(data, coords=coords)
        ds["y_m"].attrs.update(units="m", long_name="y of the coarse (GPP_M) grid")
        ds["x_m"].attrs.update(units="m", long_name="x of the coarse (GPP_M) grid")
        return ds

    def _encoding(self) -> dict:
        from zarr.codecs import ZstdCodec

        my, mx = self.coarse.shape
        encoding = {"time": {"chunks": (366 * 16,), "units": "days since 1970-01-01"}}
        for name, (_, fill, _) in VARIABLES.items():
            encoding[name] = {"chunks": CHUNK, "shards": SHARD, "_FillValue": fill,
                              "compressors": [ZstdCodec(level=3)]}  # fmt: skip
        for name, (_, fill, _) in COARSE_VARIABLES.items():
            encoding[name] = {"chunks": (1, my, mx), "shards": (SHARD[0], my, mx),
                              "_FillValue": fill, "compressors": [ZstdCodec(level=3)]}  # fmt: skip
        return encoding

    def _ensure_years(self, day: dt.date) -> None:
        """Create the datacube, or extend its time axis by whole years up to ``day``'s."""
        import xarray as xr

        if not self.zarr.exists():
            template = self._template([day.year])
            template.attrs.update(
                title="unique_cube daily gross primary productivity (30 m)",
                Conventions="CF-1.8",
                unique_cube_grid=self._grid_attrs(),
            )
            template.to_zarr(self.zarr, mode="w-", compute=False, zarr_format=3,
                             consolidated=False, encoding=self._encoding())  # fmt: skip
            return
        with xr.open_zarr(self.zarr, consolidated=False) as existing:
            first = existing["time"].values[0].astype("datetime64[D]").item()
            last = existing["time"].values[-1].astype("datetime64[D]").item()
        if day < first:
            raise StoreError(
                f"{self.zarr} starts on {first}; {day} cannot be added in front of it "
                "(write earlier days to another product folder)"
            )
        if day > last:
            template = self._template(list(range(last.year + 1, day.year + 1)))
            template = template.drop_vars(["x", "y", "x_m", "y_m", "spatial_ref"])
            # Only the time coordinate and the arrays' new shape are written (compute=False):
            # no chunk is touched, so the shard shared with the last days is safe.
            template.to_zarr(self.zarr, append_dim="time", compute=False, consolidated=False,
                             safe_chunks=False)  # fmt: skip

    def _time_index(self, day: dt.date) -> int:
        import xarray as xr

        with xr.open_zarr(self.zarr, consolidated=False) as existing:
            return int(np.searchsorted(existing["time"].values, np.datetime64(day, "ns")))

    def _write_region(self, index: int, window, layers: dict[str, np.ndarray]) -> None:
        """The day's pixels of ``window`` (all of the coarse grid for ``gpp_m``)."""
        import xarray as xr

        region = {"time": slice(index, index + 1)}
        if window is not None:
            region.update(y=slice(window.y0, window.y1), x=slice(window.x0, window.x1))
        data = {}
        for name, values in layers.items():
            dtype, dims = ({**VARIABLES, **COARSE_VARIABLES}[name][0],
                           ("time", "y_m", "x_m") if name in COARSE_VARIABLES
                           else ("time", "y", "x"))  # fmt: skip
            data[name] = (dims, values[None].astype(dtype))
        with self._shared_lock():
            xr.Dataset(data).to_zarr(self.zarr, region=region, consolidated=False)

    # -- one day -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def open_day(self, day: dt.date, tags: dict[str, str]) -> Iterator[DayWriter]:
        """A day's outputs written window by window (see :class:`DayWriter`); the staged COGs
        are removed if the block raises. Hold the day's lock around it."""
        with self._shared_lock():
            self._ensure_years(day)
        writer = DayWriter(self, day, self._time_index(day), tags)
        try:
            yield writer
        except BaseException:
            writer.abort()
            raise

    def write_day(self, arrays: DayArrays, tags: dict[str, str]) -> dict[str, Path]:
        """A whole day's arrays at once (a grid that fits in memory); its COGs' paths."""
        with self.open_day(arrays.day, tags) as writer:
            writer.write(None, arrays.gpp, arrays.gpp_sd, arrays.qa)
            return writer.finish(arrays.gpp_m)

    def commit(self, day: dt.date, item: dict, marker: dict) -> None:
        """After :meth:`open_day`: the STAC item and collection, then the marker (the day is
        done)."""
        with self._shared_lock():
            write_json(self.item_path(day), item)
            self._update_catalog(done=day)
        write_json(self.marker(day), marker)

    def forget(self, day: dt.date) -> None:
        """Before a day is produced again (under its lock): it is not done until its new marker
        is written; what a run killed while writing it left half-written goes."""
        self.marker(day).unlink(missing_ok=True)
        for folder, name in ((self.cog(day, "gpp").parent, "*"),
                             (self.item_path(day).parent, self.item_path(day).name),
                             (self.marker(day).parent, self.marker(day).name)):  # fmt: skip
            for partial in folder.glob(f".{name}.*.partial"):
                partial.unlink(missing_ok=True)

    def record_skip(self, day: dt.date, reason: str) -> None:
        """A day that could not be produced: its reason goes into the collection."""
        with self._shared_lock():
            self._update_catalog(skipped=(day, reason))

    # -- the STAC catalog --------------------------------------------------------------------

    def _update_catalog(self, done: dt.date | None = None, skipped=None) -> None:

        collection_path = self.stac / COLLECTION_ID / "collection.json"
        if collection_path.exists():
            collection = json.loads(collection_path.read_text())
        else:
            collection = product_collection(self.geobox, __version__)
        skips = collection.setdefault("unique_cube:skipped_days", {})
        if done is not None:
            skips.pop(done.isoformat(), None)
        if skipped is not None:
            day, reason = skipped
            if not self.is_done(day):
                skips[day.isoformat()] = reason
        items = sorted((self.stac / COLLECTION_ID / "items").glob("????-??-??.json"))
        write_json(collection_path, with_items(collection, [p.stem for p in items]))
        write_json(self.stac / "catalog.json", root_catalog())


class DayWriter:
    """One product day being written (from :meth:`ProductStore.open_day`): each window goes
    into the datacube at once, as a region write, and into the day's staged COGs, which
    :meth:`finish` turns into COGs. The day is not done until :meth:`ProductStore.commit`."""

    def __init__(self, store: ProductStore, day: dt.date, index: int, tags: dict[str, str]):

        self.store, self.day, self.index = store, day, index
        fine = (str(store.geobox.crs), list(store.geobox.transform)[:6])
        self._cogs: dict[str, StagedCog] = {}
        try:
            for name, (dtype, nodata, resampling) in FINE_COGS.items():
                self._cogs[name] = StagedCog(store.cog(day, name), store.geobox.shape, dtype,
                                             *fine, nodata, resampling,
                                             tags={**tags, "variable": name})  # fmt: skip
        except BaseException:
            self.abort()
            raise
        self._tags = tags

    def write(self, window, gpp: np.ndarray, gpp_sd: np.ndarray, qa: np.ndarray) -> None:
        """The pixels of ``window`` (a :class:`~unique_cube.grid.Window`; ``None``: the
        whole grid)."""
        layers = {"gpp": gpp, "gpp_sd": gpp_sd, "qa": qa}
        self.store._write_region(self.index, window, layers)
        height, width = self.store.geobox.shape
        rows, cols = window.slices if window is not None else (slice(0, height), slice(0, width))
        for name, values in layers.items():
            self._cogs[name].write(values.astype(FINE_COGS[name][0]), rows, cols)

    def finish(self, gpp_m: np.ndarray) -> dict[str, Path]:
        """GPP_M (coarse grid) written, every COG in place; their paths."""

        self.store._write_region(self.index, None, {"gpp_m": gpp_m})
        paths = {}
        for name, staged in self._cogs.items():
            staged.finish()
            paths[name] = staged.path
        coarse = self.store.coarse
        path = self.store.cog(self.day, "gpp_m")
        write_cog(path, gpp_m.astype("float32"), str(coarse.crs), list(coarse.transform)[:6],
                  float("nan"), "average", tags={**self._tags, "variable": "gpp_m"})  # fmt: skip
        paths["gpp_m"] = path
        self._cogs = {}
        return paths

    def abort(self) -> None:
        for staged in self._cogs.values():
            staged.abort()
        self._cogs = {}

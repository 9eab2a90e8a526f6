"""The product's reference state: GPP_L of every HLS date it has seen, kept in the store.

The fusion downscaler needs, per 30 m pixel, the last clear GPP_L before the day being made
(:class:`~unique_cube.downscale.reference.Reference`). The product keeps what that is made
of: one small Zarr store per HLS date under ``<product.output>/reference/`` holding the
date's clear GPP_L (30 m, NaN where not clear) and its GPP_M (coarse grid), with the HLS items
it came from. :func:`ensure_references` adds the dates a run needs, in date order and window
by window (memory bounded by a window); :meth:`ReferenceStore.state` folds them for one
window as of a day. The state of a day is a function of the dates before it only, so a
backfill can make days in any order and a re-run of a day reads the state as of that day.
A date is written beside the others and renamed into place when complete.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from unique_cube.config.pipeline import Period, Pipeline
from unique_cube.downscale.pairs import items_around, pair_inputs
from unique_cube.downscale.reference import Reference
from unique_cube.errors import StoreError
from unique_cube.gpp.model import ModelCard
from unique_cube.gpp.predict import gpp_modis
from unique_cube.grid import (
    COARSE_FACTOR,
    Window,
    bilinear_window,
    day_windows,
    fill_nearest,
    lonlat_bbox,
)
from unique_cube.inputs.items import solar_day
from unique_cube.inputs.search import search

__all__ = ["ReferenceStore", "ensure_references"]

log = logging.getLogger(__name__)


class ReferenceStore:
    """The HLS dates' GPP_L and GPP_M under ``<root>/reference`` for one grid."""

    def __init__(self, root: str | Path, geobox) -> None:
        self.folder = Path(root) / "reference"
        self.shape = tuple(geobox.shape)
        self.grid = {"crs": str(geobox.crs), "shape": list(geobox.shape),
                     "transform": list(geobox.transform)[:6]}  # fmt: skip
        self._attrs: dict[dt.date, dict] = {}

    def path(self, day: dt.date) -> Path:
        return self.folder / f"{day.isoformat()}.zarr"

    def dates(self) -> list[dt.date]:
        """The HLS dates held, in order (partial ones are not)."""
        if not self.folder.exists():
            return []
        return sorted(dt.date.fromisoformat(p.name[:10]) for p in self.folder.glob("*.zarr"))

    def attrs(self, day: dt.date) -> dict:
        """A date's attributes (grid, items, clear fraction, model), checked against this
        store's grid."""
        if day not in self._attrs:
            import zarr

            try:
                attrs = dict(zarr.open_group(self.path(day), mode="r").attrs)
            except (OSError, ValueError, KeyError) as err:
                raise StoreError(f"{self.path(day)}: not a reference date ({err}); remove it "
                                 "and the next run remakes it") from err  # fmt: skip
            if attrs.get("grid") != self.grid:
                raise StoreError(f"{self.path(day)} holds GPP_L of another grid "
                                 f"({attrs.get('grid')}), not {self.grid}")  # fmt: skip
            self._attrs[day] = attrs
        return self._attrs[day]

    def write(self, day: dt.date, items: list[str], gpp_m: np.ndarray,
              windows: list[Window], gpp_l: Callable[[Window], np.ndarray],
              model: str = "") -> None:  # fmt: skip
        """Write ``day``: its coarse GPP_M, and ``gpp_l(window)`` for each window (NaN where
        not clear), beside the others; renamed into place once complete. ``model``: the hash
        of the Landsat GPP model that made it (a date of another model is remade)."""
        import zarr

        partial = self.folder / f".{day.isoformat()}.{os.getpid()}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        group = zarr.open_group(partial, mode="w", zarr_format=3)
        group.attrs.update({"day": day.isoformat(), "items": sorted(items), "grid": self.grid,
                            "units": "g m-2 day-1"})  # fmt: skip
        chunk = (min(512, self.shape[0]), min(512, self.shape[1]))
        fine = group.create_array("gpp_l", shape=self.shape, chunks=chunk, dtype="float32",
                                  fill_value=np.nan)  # fmt: skip
        coarse = group.create_array("gpp_m", shape=gpp_m.shape, chunks=gpp_m.shape,
                                    dtype="float32", fill_value=np.nan)  # fmt: skip
        coarse[:] = gpp_m.astype("float32")
        clear = 0
        for window in windows:
            values = gpp_l(window).astype("float32")
            fine[window.slices] = values
            clear += int(np.isfinite(values).sum())
        group.attrs.update({"clear_fraction": clear / (self.shape[0] * self.shape[1]),
                            "gpp_landsat_sha256": model})  # fmt: skip
        shutil.rmtree(self.path(day), ignore_errors=True)
        self._attrs.pop(day, None)
        os.replace(partial, self.path(day))

    def clean_leftovers(self) -> list[str]:
        """Partial dates of dead runs (a live writer's own is left alone)."""
        removed = []
        for partial in self.folder.glob(".*.partial") if self.folder.exists() else []:
            pid = int(partial.name.split(".")[-2])
            if pid != os.getpid() and not _alive(pid):
                shutil.rmtree(partial, ignore_errors=True)
                removed.append(str(partial))
        return removed

    def before(self, day: dt.date, max_days: int, two_sided: bool = False) -> list[dt.date]:
        """The dates with clear pixels a day's reference folds: within ``max_days`` before
        it (``two_sided``: or after it), never the day itself."""
        return [d for d in self.dates()
                if 0 < ((day - d).days if not two_sided else abs((day - d).days)) <= max_days
                and self.attrs(d).get("clear_fraction", 1.0) > 0]  # fmt: skip

    def state(self, day: dt.date, window: Window, max_days: int,
              used: set[dt.date] | None = None, two_sided: bool = False) -> Reference:  # fmt: skip
        """The reference state of ``window`` as of ``day``: the last clear GPP_L of each pixel
        in the ``max_days`` before it (``two_sided``, a final day: the nearest clear GPP_L on
        either side) and the mean offset over all of them. The dates folded in (those with a
        clear pixel in the window) are added to ``used``: the day's provenance. A date that
        cannot be read is a :class:`StoreError` naming it."""
        import zarr

        state = Reference.empty(window.shape, two_sided)
        for date in self.before(day, max_days, two_sided):
            try:
                group = zarr.open_group(self.path(date), mode="r")
                gpp_l = np.asarray(group["gpp_l"][window.slices])
                coarse = np.asarray(group["gpp_m"][:])
            except (OSError, ValueError, KeyError) as err:
                raise StoreError(
                    f"{self.path(date)}: the reference date cannot be read ({err}); remove "
                    "it and the next run remakes it"
                ) from err
            if not np.isfinite(gpp_l).any() or not np.isfinite(coarse).any():
                continue
            # Gap-free before upsampling, as in training: the same GPP_M whatever the window.
            gpp_m = bilinear_window(fill_nearest(coarse), COARSE_FACTOR, window)
            state.update(gpp_l, gpp_m, date, towards=day if two_sided else None)
            if used is not None:
                used.add(date)
        return state

    def clear(self, day: dt.date, window: Window) -> np.ndarray | None:
        """The day's own clear GPP_L in ``window`` (``None`` without an HLS date that day)."""
        import zarr

        if not self.path(day).exists():
            return None
        self.attrs(day)
        try:
            return np.asarray(zarr.open_group(self.path(day), mode="r")["gpp_l"][window.slices])
        except (OSError, ValueError, KeyError) as err:
            raise StoreError(f"{self.path(day)}: the day's own GPP_L cannot be read ({err}); "
                             "remove it and the next run remakes it") from err  # fmt: skip

    def items(self, dates) -> list[str]:
        return sorted({i for d in dates for i in self.attrs(d)["items"]})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ensure_references(pipeline: Pipeline, catalog, store: ReferenceStore, days: list[dt.date],
                      say: Callable[[str], None] = log.info, model: str = "",
                      ahead: bool = False) -> list[dt.date]:  # fmt: skip
    """Add to ``store`` every HLS date from ``downscale.reference_days`` before the first of
    ``days`` to the last (``ahead``: to as many days after the last, for final days) that it
    does not hold, in date order, each window by window (GPP_L of the Landsat model, NaN where
    not clear; GPP_M of the MODIS model on the coarse grid). A date made by another Landsat
    model than ``model`` (its hash), or from other HLS items than the catalog now has for it
    (a late or reprocessed item), is made again. Returns the dates added."""
    if not days:
        return []
    max_days = pipeline.downscale.reference_days
    first = min(days) - dt.timedelta(days=max_days)
    last = max(days) + dt.timedelta(days=max_days if ahead else 0)
    inputs = pair_inputs(pipeline, catalog, Period(first, last))
    landsat = inputs.landsat
    if landsat.sizes.get("time", 0) == 0:
        return []
    items = _items_by_day(catalog, pipeline, first, last)
    held = {d for d in store.dates() if store.attrs(d).get("gpp_landsat_sha256", "") == model
            and store.attrs(d).get("items") == sorted(items.get(d, []))}  # fmt: skip
    hls_days = [dt.date.fromisoformat(str(t)[:10]) for t in landsat["time"].dt.floor("D").values]
    todo = [i for i, d in enumerate(hls_days) if d not in held]
    if not todo:
        return []
    say(f"reference state: GPP_L of {len(todo)} HLS date(s) {hls_days[todo[0]]}.."
        f"{hls_days[todo[-1]]} ({len(held)} held)")  # fmt: skip
    wanted = [landsat["time"].values[i] for i in todo]
    # MODIS only around the dates to add (the gap-filling span each side): a daily run adds
    # one date and reads a month of MODIS, not the whole reference window.
    span = ModelCard.read(inputs.modis.card_path).gap_fill_days
    modis = gpp_modis(inputs.modis, inputs.period.stac_datetime, every_day=True,
                      items=items_around(inputs.modis_items, wanted, span))  # fmt: skip
    days_wanted = [np.datetime64(hls_days[i], "ns") for i in todo]
    coarse = modis["gpp"].reindex(time=days_wanted)  # a date without MODIS: NaN, not an error
    coarse = coarse.compute().values.astype("float32")
    windows = day_windows(store.shape, pipeline.product.window)
    for k, (i, when) in enumerate(zip(todo, wanted, strict=True)):
        gpp = landsat["gpp"].sel(time=when)

        def part(window: Window, gpp=gpp) -> np.ndarray:
            rows, cols = window.slices
            return gpp.isel(y=rows, x=cols).values

        store.write(hls_days[i], items.get(hls_days[i], []), coarse[k], windows, part, model)
    return [hls_days[i] for i in todo]


def _items_by_day(catalog, pipeline: Pipeline, first: dt.date, last: dt.date) -> dict:
    """The HLS item ids by solar day (the day the Landsat cube groups them into)."""
    found = search(pipeline.gpp.landsat.source, lonlat_bbox(pipeline.grid.geobox),
                   f"{first}/{last + dt.timedelta(days=1)}", catalog=catalog)  # fmt: skip
    out: dict[dt.date, list[str]] = {}
    for item in found:
        out.setdefault(solar_day(item), []).append(item.id)
    return out

"""The demo world's true daily 30 m GPP (``downscale.truth``), checked against the grid."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from unique_cube.config.pipeline import Pipeline
from unique_cube.errors import ConfigError
from unique_cube.grid import Window

__all__ = ["open_truth"]


def open_truth(pipeline: Pipeline, window: Window | None = None
               ) -> Callable[[Sequence], np.ndarray] | None:  # fmt: skip
    """A reader of the truth on given days ((N, H, W) float32; only ``window`` of the grid
    when given), or None when the pipeline names no truth store. A store that is missing,
    holds no ``gpp``, is on another grid than ``grid`` or lacks a day asked for is a
    :class:`ConfigError` naming it."""
    path = pipeline.downscale.truth
    if not path:
        return None
    where = f"{pipeline.path or pipeline.name}: downscale.truth: {path}"
    if not Path(path).exists():
        raise ConfigError(f"{where} does not exist (a demo world's truth/gpp.zarr)")
    try:
        store = xr.open_zarr(path, consolidated=False)
    except Exception as err:  # any unreadable store is the same user error
        raise ConfigError(f"{where} is not a readable Zarr store: {err}") from None
    if "gpp" not in store:
        raise ConfigError(f"{where} holds no 'gpp' variable (has {sorted(store.data_vars)})")
    geobox = pipeline.grid.geobox
    xs, ys = geobox.coords["x"].values, geobox.coords["y"].values
    gx, gy = store["x"].values, store["y"].values
    if (
        gx.shape != xs.shape
        or gy.shape != ys.shape
        or not (np.allclose(gx, xs, atol=1e-3) and np.allclose(gy, ys, atol=1e-3))
    ):
        raise ConfigError(
            f"{where} is on another grid than grid.bounds: {gx.size} x {gy.size} px from "
            f"({gx.min() if gx.size else '?'}, {gy.max() if gy.size else '?'}) vs "
            f"{xs.size} x {ys.size} px from ({xs.min()}, {ys.max()}) (pixel centres)"
        )
    times = store["time"].values.astype("datetime64[D]")

    def read(days: Sequence) -> np.ndarray:
        wanted = np.array([np.datetime64(_day(d), "D") for d in days])
        missing = wanted[~np.isin(wanted, times)]
        if missing.size:
            raise ConfigError(f"{where} has no truth for {', '.join(map(str, missing[:5]))}"
                              f"{' …' if missing.size > 5 else ''} (it holds {times[0]}.."
                              f"{times[-1]})")  # fmt: skip
        index = [int(np.flatnonzero(times == w)[0]) for w in wanted]
        gpp = store["gpp"].isel(time=index)
        if window is not None:
            gpp = gpp.isel(y=window.slices[0], x=window.slices[1])
        return gpp.values.astype("float32")

    return read


def _day(value) -> dt.date:
    if hasattr(value, "date") and callable(value.date):
        return value.date()
    return value

"""The product store on its own: the time axis grows by years, concurrent writers of
different days keep each other's data, a held day lock makes a second writer wait."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox

from unique_cube.errors import LockBusyError, StoreError
from unique_cube.product.store import DayArrays, ProductStore

GRID = GeoBox((64, 48), Affine(30, 0, 340000, 0, -30, 4180000), "EPSG:32652")


def _store(root: Path, **kwargs) -> ProductStore:
    return ProductStore(root, GRID, GRID.zoom_out(16), **kwargs)


def _day(day: dt.date, value: float) -> DayArrays:
    shape = GRID.shape
    return DayArrays(day, np.full(shape, value, "float32"), np.full(shape, 0.1, "float32"),
                     np.ones(shape, "uint8"), np.full((4, 3), value, "float32"))  # fmt: skip


def _commit(store: ProductStore, arrays: DayArrays) -> None:
    store.write_day(arrays, {"date": str(arrays.day)})
    store.commit(arrays.day, {"id": str(arrays.day)}, {"day": str(arrays.day)})


def test_time_axis_grows_by_whole_years_and_keeps_written_days(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _commit(store, _day(dt.date(2023, 12, 31), 3.0))
    _commit(store, _day(dt.date(2025, 1, 2), 5.0))  # 2024 and 2025 appended
    with xr.open_zarr(tmp_path / "gpp.zarr", consolidated=False) as cube:
        assert cube.sizes["time"] == 365 + 366 + 365
        assert float(cube["gpp"].sel(time="2023-12-31").mean()) == 3.0
        assert float(cube["gpp"].sel(time="2025-01-02").mean()) == 5.0
        assert float(cube["gpp_m"].sel(time="2025-01-02").mean()) == 5.0
        assert np.isnan(cube["gpp"].sel(time="2024-06-01")).all()
        assert int(cube["qa"].sel(time="2024-06-01").max()) == 0  # no value: QA 0
    with pytest.raises(StoreError, match="starts on 2023-01-01"):
        _commit(store, _day(dt.date(2022, 12, 31), 1.0))
    assert store.is_done(dt.date(2025, 1, 2)) and not store.is_done(dt.date(2022, 12, 31))


def test_concurrent_writers_of_days_in_one_shard_keep_each_others_data(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _commit(store, _day(dt.date(2023, 6, 1), 1.0))  # the datacube exists
    days = [dt.date(2023, 6, d) for d in range(2, 8)]  # one 8-day shard
    threads = [threading.Thread(target=_commit, args=(_store(tmp_path), _day(d, d.day)))
               for d in days]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with xr.open_zarr(tmp_path / "gpp.zarr", consolidated=False) as cube:
        means = cube["gpp"].sel(time=slice("2023-06-01", "2023-06-07")).mean(("y", "x")).values
    np.testing.assert_array_equal(means, [1, 2, 3, 4, 5, 6, 7])


def test_a_held_day_lock_keeps_a_second_run_out(tmp_path: Path) -> None:
    first, second = _store(tmp_path), _store(tmp_path)
    day = dt.date(2023, 6, 1)
    with first.day_lock(day):
        with (
            pytest.raises(LockBusyError, match="held by another run"),
            second.day_lock(day, timeout=0.3),
        ):
            pass
        with second.day_lock(dt.date(2023, 6, 2), timeout=0.3):  # another day is free
            pass
    with second.day_lock(day, timeout=0.3):  # released with the first holder
        pass


def test_a_store_on_another_grid_is_refused(tmp_path: Path) -> None:
    _commit(_store(tmp_path), _day(dt.date(2023, 6, 1), 1.0))
    other = GeoBox((64, 48), Affine(30, 0, 350000, 0, -30, 4180000), "EPSG:32652")
    with pytest.raises(StoreError, match="on another grid"):
        ProductStore(tmp_path, other, other.zoom_out(16))

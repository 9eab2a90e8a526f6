"""The product store on its own: the time axis grows by years, concurrent writers of
different days keep each other's data, a held day lock makes a second writer wait."""

from __future__ import annotations

import datetime as dt
import errno
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox

from unique_cube.errors import LockBusyError, StoreError
from unique_cube.product import store as store_module
from unique_cube.product.store import DayArrays, ProductStore

GRID = GeoBox((64, 48), Affine(30, 0, 340000, 0, -30, 4180000), "EPSG:32652")


def _store(root: Path, **kwargs) -> ProductStore:
    return ProductStore(root, GRID, GRID.zoom_out(16), **kwargs)


def _day(day: dt.date, value: float) -> DayArrays:
    shape = GRID.shape
    return DayArrays(day, np.full(shape, value, "float32"), np.full(shape, 0.1, "float32"),
                     np.ones(shape, "uint8"), np.full((4, 3), value, "float32"))  # fmt: skip


def _commit(store: ProductStore, arrays: DayArrays) -> None:
    store.write_day(arrays, {"date": str(arrays.day)}, {"id": str(arrays.day)},
                    {"day": str(arrays.day)})  # fmt: skip


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


def _values(root: Path, day: dt.date) -> tuple[float, float, dict]:
    """A day's mean GPP in the datacube and in its COG, and its item."""
    import rasterio

    with xr.open_zarr(root / "gpp.zarr", consolidated=False) as cube:
        zarr_mean = float(cube["gpp"].sel(time=str(day)).mean())
    with rasterio.open(root / f"cogs/{day:%Y/%m/%d}/gpp.tif") as cog:
        cog_mean = float(cog.read(1).mean())
    item = json.loads((root / f"stac/unique-cube-gpp/items/{day}.json").read_text())
    return zarr_mean, cog_mean, item


def test_a_remake_that_fails_leaves_the_day_made_before_published_and_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, day = _store(tmp_path), dt.date(2023, 6, 1)
    _commit(store, _day(day, 1.0))
    before = _values(tmp_path, day)
    assert before[:2] == (1.0, 1.0)
    # A bad input after the first window (a --force that cannot remake the day) ...
    new = _day(day, 2.0)
    with pytest.raises(RuntimeError, match="corrupt"), store.open_day(day, {}) as writer:
        writer.write(None, new.gpp, new.gpp_sd, new.qa)
        raise RuntimeError("corrupt input")
    # ... and a read-only stac/ at commit (staging the item is the first write of the swap).
    real = store_module.staged_json

    def read_only(path, data):
        if "stac" in path.parts:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, data)

    monkeypatch.setattr(store_module, "staged_json", read_only)
    with pytest.raises(StoreError, match=r"EROFS: .*Read-only file system"):
        _commit(store, new)
    assert _values(tmp_path, day) == before
    assert store.is_done(day)
    assert not list(tmp_path.rglob("*.partial"))  # nothing staged is left
    monkeypatch.undo()
    _commit(store, new)  # the same remake with a writable store swaps the day in
    assert _values(tmp_path, day)[:2] == (2.0, 2.0)


def test_a_full_disk_is_a_store_error_and_keeps_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from unique_cube.product import cog

    store, day = _store(tmp_path), dt.date(2023, 6, 2)

    def full(self, *args):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.stage))

    monkeypatch.setattr(cog.StagedCog, "write", full)
    with pytest.raises(StoreError, match=f"{day}: staging its COGs .*ENOSPC"):
        _commit(store, _day(day, 1.0))
    assert not store.is_done(day)
    assert not list(tmp_path.rglob("*.partial")) and not list(tmp_path.glob("state/open/*"))


def test_what_killed_writers_left_is_cleaned_unless_a_live_run_holds_the_day(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    _commit(store, _day(dt.date(2023, 6, 1), 1.0))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    killed, busy = dt.date(2023, 6, 2), dt.date(2023, 6, 3)  # one shard: 2023-05-29..06-05
    left = [tmp_path / f"gpp.zarr/qa/c/{store._time_index(killed) // 8}/0/0.0f3a.partial",
            tmp_path / "gpp.zarr/gpp/zarr.1b2c.partial",
            tmp_path / f"stac/unique-cube-gpp/.collection.json.{dead}.partial",
            tmp_path / f"runs/.20231201T000000-{dead}.json.{dead}.partial"]  # fmt: skip
    for day in (killed, busy):
        left.append(store.cog(day, "gpp").with_name(f".gpp.tif.{dead}.stage.partial"))
        store._open_note(day).parent.mkdir(parents=True, exist_ok=True)
        store._open_note(day).write_text("{}")
    for path in left:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    with store.day_lock(busy):  # another run is making this day right now
        removed = _store(tmp_path).clean_leftovers()
    kept = store.cog(busy, "gpp").with_name(f".gpp.tif.{dead}.stage.partial")
    assert sorted(removed) == sorted(str(p.relative_to(tmp_path)) for p in left if p != kept)
    assert kept.exists() and store._open_note(busy).exists()
    assert not store._open_note(killed).exists()
    assert _values(tmp_path, dt.date(2023, 6, 1))[:2] == (1.0, 1.0)

"""The product datacube as the ecosystem's tools read it: a NetCDF export of a week passes the
IOOS compliance checker (CF) and cf_xarray finds its axes; consolidated metadata stays in step
with the arrays as years are appended; the unsharded layout opens in GDAL (rasterio)."""

from __future__ import annotations

import datetime as dt
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox

from unique_cube.config import load_pipeline
from unique_cube.errors import ConfigError, StoreError
from unique_cube.product.store import DayArrays, ProductStore, open_datacube

GRID = GeoBox((64, 48), Affine(30, 0, 340000, 0, -30, 4180000), "EPSG:32652")
WEEK = [dt.date(2023, 6, d) for d in range(1, 8)]


def _store(root: Path, layout: str = "sharded") -> ProductStore:
    return ProductStore(root, GRID, GRID.zoom_out(16), zarr_layout=layout)


def _commit(store: ProductStore, day: dt.date, value: float) -> None:
    shape = GRID.shape
    qa = np.full(shape, 5 | 8, "uint16")  # clear GPP_L, GPP_M gap-filled
    arrays = DayArrays(day, np.full(shape, value, "float32"), np.full(shape, 0.1, "float32"),
                       qa, np.full(GRID.zoom_out(16).shape, value, "float32"))  # fmt: skip
    store.write_day(arrays, {"date": str(day)}, {"id": str(day)}, {"day": str(day)})


def _check_cf(path: Path, checker: str) -> tuple[list[str], list[str]]:
    """The compliance checker's failures on a NetCDF file: high priority, all."""
    from compliance_checker.runner import CheckSuite

    suite = CheckSuite()
    suite.load_all_available_checkers()
    groups = suite.run_all(suite.load_dataset(str(path)), [checker], skip_checks=[])
    (results, errors), = groups.values()  # fmt: skip
    assert not errors, errors  # a check that crashed
    failed = [r for r in results if r.value not in (True, None)
              and not (isinstance(r.value, tuple) and r.value[0] == r.value[1])]  # fmt: skip
    high = [f"{r.name}: {r.msgs}" for r in failed if r.weight == 3]
    return high, [f"{r.name}: {r.msgs}" for r in failed]


@pytest.mark.filterwarnings("ignore:The ioos_sos checker:DeprecationWarning")
@pytest.mark.parametrize("layout", ["sharded", "unsharded"])
def test_a_weeks_netcdf_export_is_cf_compliant(tmp_path: Path, layout: str) -> None:
    pytest.importorskip("compliance_checker")
    cf_xarray = pytest.importorskip("cf_xarray")
    store = _store(tmp_path / "product", layout)
    for day in WEEK:
        _commit(store, day, day.day)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no consolidated metadata" warning, nor another
        cube = open_datacube(tmp_path / "product")
    week = cube.sel(time=slice(str(WEEK[0]), str(WEEK[-1])))
    week.to_netcdf(tmp_path / "week.nc")  # no dict-valued attribute left to refuse
    high, _ = _check_cf(tmp_path / "week.nc", "cf:1.10")  # the Conventions the store says
    assert high == []
    high, _ = _check_cf(tmp_path / "week.nc", "cf:1.8")
    # CF-1.8 knows no unsigned integers (CF-1.9 added them): the only one is QA's uint16.
    assert [h.split(":")[0] for h in high] == ["§2.2 Data Types"] and "qa" in high[0]

    with xr.open_dataset(tmp_path / "week.nc") as exported:
        assert cf_xarray.__name__ and exported.cf.axes == {"X": ["x"], "Y": ["y"], "T": ["time"]}
        assert exported["qa"].attrs["flag_masks"].dtype == np.uint16
        assert exported.attrs["Conventions"] == "CF-1.10" and exported.attrs["history"]
        assert exported["spatial_ref"].attrs["grid_mapping_name"] == "transverse_mercator"
        assert json.loads(exported.attrs["unique_cube_grid"])["crs"] == "EPSG:32652"
        np.testing.assert_array_equal(exported["gpp"].mean(("y", "x")).values,
                                      [d.day for d in WEEK])  # fmt: skip
    store = _store(tmp_path / "product", layout)  # the grid (JSON) is read back and matches
    assert store.zarr_layout == layout


def test_consolidated_metadata_follows_the_appended_years(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _commit(store, dt.date(2023, 12, 31), 3.0)
    _commit(store, dt.date(2025, 1, 2), 5.0)  # 2024 and 2025 appended
    _commit(store, dt.date(2023, 12, 31), 4.0)  # a day rewritten
    with (
        xr.open_zarr(tmp_path / "gpp.zarr", consolidated=True) as fast,
        xr.open_zarr(tmp_path / "gpp.zarr", consolidated=False) as slow,
    ):
        assert fast.sizes == slow.sizes and fast.sizes["time"] == 365 + 366 + 365
        assert float(fast["gpp"].sel(time="2023-12-31").mean()) == 4.0
        assert float(fast["gpp"].sel(time="2025-01-02").mean()) == 5.0
        assert fast["gpp"].encoding["shards"] == (8, 512, 512)


def test_a_layout_other_than_the_stores_is_refused(tmp_path: Path) -> None:
    _commit(_store(tmp_path), WEEK[0], 1.0)
    with pytest.raises(StoreError, match=r"has the sharded layout.*zarr_layout: unsharded"):
        _store(tmp_path, "unsharded")


def test_zarr_layout_is_checked_when_the_pipeline_is_loaded(tmp_path: Path) -> None:
    text = (Path(__file__).parents[1] / "pipelines" / "demo.yaml").read_text()
    assert "zarr_layout: sharded" in text
    path = tmp_path / "demo.yaml"
    path.write_text(text.replace("zarr_layout: sharded", "zarr_layout: tiled"))
    with pytest.raises(ConfigError, match=r"zarr_layout.*sharded or unsharded"):
        load_pipeline(path)


def test_gdal_reads_the_unsharded_store(tmp_path: Path) -> None:
    """GDAL ≥ 3.4 reads Zarr v2 (the unsharded layout). GDAL 3.10 reads no Zarr v3 array that
    zarr-python writes ("Unsupported codec: bytes": it knows the draft's "endian", and no zstd
    in v3; sharding from 3.11), which is why that layout is Zarr v2."""
    import rasterio

    store = _store(tmp_path, "unsharded")
    for day in WEEK[:2]:
        _commit(store, day, day.day)
    index = store._time_index(WEEK[1])
    with rasterio.open(f'ZARR:"{tmp_path / "gpp.zarr"}":/gpp') as gpp:
        assert gpp.count == 365 and gpp.shape == GRID.shape  # a band a day
        assert gpp.transform == GRID.affine
        assert gpp.crs is not None and gpp.crs.to_epsg() == 32652
        assert float(gpp.read(index + 1).mean()) == 2.0
        assert np.isnan(gpp.read(index + 3)).all()  # a day not made yet
    with rasterio.open(f'ZARR:"{tmp_path / "gpp.zarr"}":/qa') as qa:
        assert qa.dtypes[0] == "uint16" and int(qa.read(index + 1).max()) == 13

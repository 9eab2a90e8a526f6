"""QA decoding with the shipped rules, on QA words as the products' user guides define them."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from unique_cube.config.catalog import load_catalog
from unique_cube.inputs.cube import decode_qa

PC = load_catalog("planetary-computer")


def bits(*set_bits: int, fields: dict[int, int] | None = None) -> int:
    word = sum(1 << b for b in set_bits)
    for offset, value in (fields or {}).items():
        word |= value << offset
    return word


def clear_of(source: str, words: list[float]) -> list[bool]:
    qa = xr.DataArray(np.asarray(words, dtype="float32"), dims="x")
    return decode_qa([qa], PC.source(source).qa).values.tolist()


def test_landsat_qa_pixel() -> None:
    clear_land = bits(6, fields={8: 1, 10: 1, 12: 1, 14: 1})  # 21824: clear, low confidences
    assert clear_land == 21824
    water = clear_land | bits(7)  # 21952
    cloud = bits(3, fields={8: 3, 10: 1, 12: 1, 14: 1})  # high confidence cloud
    shadow = bits(4, 6, fields={8: 1, 10: 3})
    snow = bits(5, fields={12: 3})
    dilated = bits(1, 6)
    fill = bits(0)
    result = clear_of(
        "landsat-c2-l2", [clear_land, water, cloud, shadow, snow, dilated, fill, np.nan]
    )
    assert result == [True, True, False, False, False, False, False, False]


def test_hls_fmask() -> None:
    aerosol_moderate = bits(fields={6: 2})
    words = [0, bits(5), aerosol_moderate, bits(1), bits(2), bits(3), bits(4), bits(0), np.nan]
    # clear, water, moderate aerosol | cloud, adjacent, shadow, snow | cirrus bit (reserved) | none
    assert clear_of("hls-l30", words) == [True, True, True, False, False, False, False, True, False]


def test_mod09ga_state() -> None:
    land = bits(fields={3: 1})  # land, clear
    deep_ocean = bits(fields={3: 7})
    cloudy = land | bits(fields={0: 1})
    mixed = land | bits(fields={0: 2})
    not_set = land | bits(fields={0: 3})  # "not set, assumed clear"
    cirrus_high = land | bits(fields={8: 3})
    cirrus_small = land | bits(fields={8: 1})
    adjacent = land | bits(13)
    words = [land, deep_ocean, cloudy, mixed, not_set, cirrus_high, cirrus_small, adjacent]
    assert clear_of("modis-sr", words) == [True, True, False, False, True, False, True, False]


def test_mcd43a4_quality_values() -> None:
    # 0 full inversion, 1 magnitude inversion: both retrievals; 255: fill (no data)
    assert clear_of("modis-nbar", [0, 1, 255, np.nan]) == [True, True, False, False]


def test_multiple_qa_assets_must_all_be_clear() -> None:
    rules = PC.source("modis-nbar").qa
    good = xr.DataArray(np.array([0, 0, 1], "float32"), dims="x")
    one_band_filled = xr.DataArray(np.array([0, 255, 1], "float32"), dims="x")
    assert decode_qa([good, one_band_filled], rules).values.tolist() == [True, False, True]


@pytest.mark.parametrize("source", ["hls-l30", "landsat-c2-l2", "modis-sr", "modis-nbar"])
def test_clear_mask_attrs(source: str) -> None:
    qa = xr.DataArray(np.zeros(2, "float32"), dims="x")
    clear = decode_qa([qa], PC.source(source).qa)
    assert clear.dtype == bool and clear.name == "clear"
    assert "clear-sky" in clear.attrs["long_name"]

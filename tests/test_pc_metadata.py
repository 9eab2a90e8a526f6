"""The catalog and loader read real Planetary Computer metadata (tests/data, see its README)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import odc.stac
import pystac
import pytest

from unique_cube.config.catalog import load_catalog
from unique_cube.inputs.cube import band_decoding
from unique_cube.inputs.items import deduplicate, filter_cloud_cover

DATA = Path(__file__).parent / "data"
PC = load_catalog("planetary-computer")


def pc_items(name: str) -> list[pystac.Item]:
    return [pystac.Item.from_dict(d) for d in json.loads((DATA / "pc" / name).read_text())]


def modis_item(name: str) -> pystac.Item:
    item = pystac.Item.from_dict(json.loads((DATA / "stactools-modis" / name).read_text()))
    # The example's asset hrefs are relative; anchor them so they resolve to paths.
    item.set_self_href(str(DATA / "stactools-modis" / name))
    return item


def item_geobox(item: pystac.Item):
    return next(iter(odc.stac.parse_item(item).geoboxes()))


def test_landsat_c2_l2_scale_offset_nodata() -> None:
    items = pc_items("landsat-c2-l2-pc.json")
    source = PC.source("landsat-c2-l2")
    for role in ("blue", "green", "red", "nir", "swir16", "swir22"):
        dec = band_decoding(items, source, role)
        assert dec.asset == source.bands[role].asset
        assert (dec.scale, dec.offset, dec.nodata) == (2.75e-05, -0.2, 0.0)
        assert dec.data_type == "uint16"


def test_landsat_qa_pixel_bits_match_the_items_bitfields() -> None:
    item = pc_items("landsat-c2-l2-pc.json")[0]
    bitfields = {
        b["name"]: b for b in item.assets["qa_pixel"].extra_fields["classification:bitfields"]
    }
    qa = PC.source("landsat-c2-l2").qa
    ours_to_theirs = {
        "fill": "fill",
        "dilated_cloud": "dilated_cloud",
        "cirrus": "cirrus",
        "cloud": "cloud",
        "cloud_shadow": "cloud_shadow",
        "snow_ice": "snow",
        "water": "water",
    }
    for ours, theirs in ours_to_theirs.items():
        flag, field = qa.flags[ours], bitfields[theirs]
        assert (flag.offset, flag.length) == (field["offset"], field["length"]), ours
        set_value = next(c["value"] for c in field["classes"] if c["value"] != 0)
        assert flag.values == (set_value,)
    assert qa.assets == ("qa_pixel",)
    assert item.assets["qa_pixel"].extra_fields["raster:bands"][0]["nodata"] == qa.nodata == 1


def test_landsat_grid_and_cloud_filter_and_dedup() -> None:
    items = pc_items("landsat-c2-l2-pc.json")
    source = PC.source("landsat-c2-l2")
    geobox = item_geobox(items[0])
    assert geobox.crs.epsg == 32655
    assert geobox.resolution.x == 30
    covers = [it.properties["eo:cloud_cover"] for it in items]
    kept = filter_cloud_cover(items, source, 90)
    assert len(kept) == sum(c <= 90 for c in covers) < len(items)
    # The four scenes are distinct path/row/day: nothing to merge.
    assert len(deduplicate(items, source)) == len(items)
    # A re-processed copy of a scene (later `created`) replaces it.
    newer = items[0].clone()
    newer.id = items[0].id + "-reprocessed"
    newer.properties["created"] = "2030-01-01T00:00:00Z"
    unique = deduplicate([items[0], newer, *items[1:]], source)
    assert newer in unique and items[0] not in unique and len(unique) == len(items)


def test_modis_061_item_is_on_the_sinusoidal_grid() -> None:
    item = modis_item("MCD43A4.A2022032.h14v10.061.json")
    source = PC.source("modis-nbar")
    for band in source.bands.values():
        assert band.asset in item.assets
    for asset in source.qa.assets:
        assert asset in item.assets
    geobox = item_geobox(item)
    assert "Sinusoidal" in geobox.crs.to_wkt()
    assert geobox.shape == (2400, 2400)
    assert geobox.resolution.x == pytest.approx(463.3127165279167)
    red = band_decoding([item], source, "red")
    # scale from the item's raster:bands, nodata from the catalog (the item lacks it)
    assert (red.scale, red.nodata) == (0.0001, 32767.0)


def test_modis_tile_dedup_uses_tile_numbers() -> None:
    item = modis_item("MCD43A4.A2022032.h14v10.061.json")
    source = PC.source("modis-nbar")
    older = item.clone()
    older.properties["updated"] = "2000-01-01T00:00:00Z"
    assert deduplicate([older, item], source) == [item]
    other_tile = item.clone()
    other_tile.properties["modis:horizontal-tile"] = 15
    assert len(deduplicate([item, other_tile], source)) == 2


def test_cop_dem_is_epsg4326() -> None:
    items = pc_items("cop-dem-glo-30-pc.json")
    source = PC.source("dem")
    geobox = item_geobox(items[0])
    assert geobox.crs.epsg == 4326
    dec = band_decoding(items, source, "elevation")
    assert (dec.asset, dec.scale, dec.offset, dec.nodata) == ("data", 1.0, 0.0, -32767.0)


@pytest.mark.parametrize(
    ("template", "source"),
    [
        ("hls2__hls2-l30.template.json", "hls-l30"),
        ("hls2__hls2-s30.template.json", "hls-s30"),
        ("modis-43A4-061.template.json", "modis-nbar"),
    ],
)
def test_asset_keys_match_collection_templates(template: str, source: str) -> None:
    # Wavelengths (µm) each role must cover; checked on the templates' eo:bands, since
    # common names are missing for some (HLS S30 B8A) or odd for others (MODIS band 5).
    # (The PC's L30 template gives B01 0.48 and B02 0.44 µm, the two swapped; hence the
    # overlapping coastal/blue windows.)
    windows = {
        "coastal": (0.43, 0.49),
        "blue": (0.44, 0.50),
        "green": (0.53, 0.57),
        "red": (0.62, 0.68),
        "nir": (0.84, 0.88),
        "swir12": (1.22, 1.26),
        "swir16": (1.55, 1.66),
        "swir22": (2.10, 2.30),
    }
    item_assets = json.loads((DATA / "pc" / template).read_text())["item_assets"]
    src = PC.source(source)
    for role, band in src.bands.items():
        assert band.asset in item_assets, (role, band.asset)
        (eo_band,) = item_assets[band.asset]["eo:bands"]
        low, high = windows[role]
        assert low <= eo_band["center_wavelength"] <= high, (role, band.asset, eo_band)
    for asset in src.qa.assets:
        assert asset in item_assets


def test_worldcover_classes_match_the_collection() -> None:
    template = json.loads((DATA / "pc" / "esa-worldcover.template.json").read_text())
    values = {c["value"] for c in template["item_assets"]["map"]["classification:classes"]}
    source = PC.source("worldcover")
    assert set(source.classes) == values
    assert source.bands["landcover"].asset == "map"
    assert math.isclose(source.resolution * 111320, 10, rel_tol=0.1)
